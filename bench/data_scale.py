"""Training input at growing dataset sizes: peak memory and samples/s of one shuffled epoch, for a split held in
RAM, a split memory-mapped from the image cache, and torchvision's ImageFolder + DataLoader(num_workers=2) reading
the same PNG files.

    python bench/data_scale.py [--sizes 25000 100000 400000] [--side 64] [--batch 256]

For each size the script writes that many PNGs (side x side, ten class folders), builds the image cache entry once
(not timed), then runs each pipeline in a fresh process: it reads every sample of one shuffled epoch as float
batches in [0, 1] and reports samples/s and its peak resident memory (with its DataLoader workers, for
torchvision); for the transmodal pipelines also the peak of anonymous memory, which leaves out the file pages a
memory map brings in (counted as resident, but dropped by the kernel when memory is short). The last line of output is one JSON object: per size, each pipeline's samples/s and peak MiB, and
the ratios to torchvision's samples/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

CLASSES = 10
PIPELINES = ("memory", "mmap", "torchvision")


def generate(root: Path, count: int, side: int) -> list[Path]:
    """``count`` noisy PNGs, ``side`` pixels square, spread over ten class folders (ImageFolder's layout)."""
    paths = []
    for index in range(count):
        folder = root / f"class{index % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:07d}.png"
        Image.effect_noise((side, side), 30 + index % 60).convert("RGB").save(path)
        paths.append(path)
    return paths


def image_folder_order(root: Path) -> list[Path]:
    """The files in ImageFolder's order (class folders sorted, files sorted), so every pipeline reads the same list."""
    return sorted(root.glob("class*/*.png"))


def anonymous_mib() -> float:
    """This process's anonymous resident memory: what it allocated, without the file pages a memory map brings
    in (those count in the resident size but the kernel drops them under pressure)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def transmodal_epoch(root: Path, cache: Path, side: int, batch: int, mapped: bool) -> tuple[int, float]:
    from transmodal.data import BatchLoader, MappedColumn
    from transmodal.image_cache import ImageCache

    files = image_folder_order(root)
    decoded = ImageCache(cache, 1).load(files, side)
    assert decoded.reused, "the parent builds the cache entry; a pipeline must not decode"
    rows = torch.arange(len(files))
    images = MappedColumn(decoded.images, rows) if mapped else decoded.images.clone()
    labels = torch.tensor([int(path.parent.name.removeprefix("class")) for path in files])
    loader = BatchLoader({"image": images, "label": labels}, batch, shuffle=True, seed=0)
    seen, peak_anonymous = 0, anonymous_mib()
    for step in loader.epoch(0):
        seen += len(step["image"].float().div_(255))
        peak_anonymous = max(peak_anonymous, anonymous_mib())
    return seen, peak_anonymous


def torchvision_epoch(root: Path, batch: int) -> int:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.ImageFolder(str(root), transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=2)
    return sum(len(images) for images, _ in loader)


def run_pipeline(args: argparse.Namespace) -> None:
    """One pipeline, one epoch, in this process: prints samples/s and peak MiB as JSON."""
    torch.set_num_threads(1)
    root, cache = Path(args.root), Path(args.cache)
    started = time.perf_counter()
    result: dict[str, float] = {}
    if args.pipeline == "torchvision":
        seen = torchvision_epoch(root, args.batch)
    else:
        seen, result["peak_anonymous_mib"] = transmodal_epoch(root, cache, args.side, args.batch,
                                                              mapped=args.pipeline == "mmap")
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result.update(samples=seen, samples_per_s=round(seen / seconds), peak_mib=round(usage / 1024))
    print(json.dumps({key: round(value) for key, value in result.items()}))


def measure(pipeline: str, root: Path, cache: Path, side: int, batch: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--pipeline", pipeline, "--root", str(root), "--cache", str(cache),
               "--side", str(side), "--batch", str(batch)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000, 400_000])
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--pipeline", choices=PIPELINES, help=argparse.SUPPRESS)  # a child process's one run
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline is not None:
        run_pipeline(args)
        return

    from transmodal.image_cache import ImageCache

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for size in sorted(args.sizes):
            root, cache = Path(scratch) / f"images{size}", Path(scratch) / "cache"
            generate(root, size, args.side)
            ImageCache(cache).load(image_folder_order(root), args.side)
            numbers = {pipeline: measure(pipeline, root, cache, args.side, args.batch) for pipeline in PIPELINES}
            reference = numbers["torchvision"]["samples_per_s"]
            for pipeline in ("memory", "mmap"):
                numbers[pipeline]["speed_vs_torchvision"] = round(numbers[pipeline]["samples_per_s"] / reference, 1)
            results[size] = numbers
            print(f"{size} images: {json.dumps(numbers)}", flush=True)
    print(json.dumps({"side": args.side, "batch": args.batch, "results": results}))


if __name__ == "__main__":
    main()
