"""Images per second of the batched image pipeline against the tutorial's per-sample one, on the same
in-memory CIFAR-sized images.

Tutorial (section 4.1): torchvision's CIFAR10 dataset hands each image to PIL, then ToTensor + Normalize,
and a DataLoader collates the samples. transmodal: the core's BatchLoader indexes a uint8 tensor and the
model's ImageInput converts, augments (random crop with padding, horizontal flip) and normalises whole
batches on the training device. The transmodal side does more work (augmentation); both deliver batches of
normalised float images on the device. A second pair resizes to 224x224 (ImageNet resolution) on both sides.

    python bench/vision_pipeline.py [--images 5000] [--batch-size 128] [--repeats 5] [--device cpu]

The last line of output is one JSON object; "ratio" is batched / per-sample images per second at 32x32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from transmodal.data import BatchLoader, move_batch
from transmodal.encoder import ImageInput

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PerSampleImages(Dataset):
    """What torchvision's CIFAR10 does per item: an HWC uint8 array to a PIL image, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def per_sample_epoch(loader: DataLoader, device: torch.device) -> int:
    count = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        count += images.shape[0]
    _sync(device)
    return count


def batched_epoch(loader: BatchLoader, pipeline: ImageInput, device: torch.device, epoch: int) -> int:
    count = 0
    with torch.no_grad():
        for batch in loader.epoch(epoch):
            batch = move_batch(batch, device)
            images = pipeline(batch["image"])
            count += images.shape[0]
    _sync(device)
    return count


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_rates(runs: dict[str, Callable[[int], int]], repeats: int) -> dict[str, float]:
    """Median images per second of each run; the runs alternate, so a busy moment of a shared machine
    falls on all of them alike."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            count = run(repeat)
            rates[name].append(count / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--skip-resize", action="store_true", help="leave out the 224x224 pair (slow on CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    chw = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (args.images,), generator=generator)
    hwc = chw.permute(0, 2, 3, 1).contiguous().numpy()  # torchvision's CIFAR10 keeps (N, H, W, C)

    def per_sample(transform: Callable, batch_size: int) -> Callable[[int], int]:
        loader = DataLoader(PerSampleImages(hwc, labels.numpy(), transform), batch_size=batch_size, shuffle=True,
                            num_workers=0, pin_memory=device.type == "cuda")
        return lambda repeat: per_sample_epoch(loader, device)

    def batched(size: int | None) -> Callable[[int], int]:
        loader = BatchLoader({"image": chw, "label": labels}, args.batch_size, shuffle=True)
        pipeline = ImageInput(IMAGENET_MEAN, IMAGENET_STD, crop_padding=4, hflip=True, size=size).to(device).train()
        return lambda repeat: batched_epoch(loader, pipeline, device, repeat)

    tutorial = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    pairs = {"32": (per_sample(tutorial, args.batch_size), batched(None))}
    if not args.skip_resize:
        resized = transforms.Compose([transforms.Resize(224), transforms.ToTensor(),
                                      transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        pairs["224"] = (per_sample(resized, args.batch_size), batched(224))

    results: dict[str, float] = {}
    for size, (slow, fast) in pairs.items():
        slow(0), fast(0)  # warm-up
        rates = interleaved_rates({"per_sample": slow, "batched": fast}, args.repeats)
        results[f"per_sample_images_per_s_{size}"] = round(rates["per_sample"], 1)
        results[f"batched_images_per_s_{size}"] = round(rates["batched"], 1)
        results[f"ratio_{size}"] = round(rates["batched"] / rates["per_sample"], 2)
        print(f"{size}x{size}: per-sample {rates['per_sample']:,.0f} images/s, batched {rates['batched']:,.0f} "
              f"images/s, ratio {rates['batched'] / rates['per_sample']:.1f}", flush=True)
    print(json.dumps({
        "benchmark": "vision_pipeline",
        "device": str(device),
        "threads": args.threads,
        "images": args.images,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "ratio": results["ratio_32"],
        **results,
    }))


if __name__ == "__main__":
    main()
