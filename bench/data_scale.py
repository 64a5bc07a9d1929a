"""Training input at growing dataset sizes: peak memory and samples/s of one shuffled epoch, for a split held in
RAM, a split memory-mapped from the image cache, and torchvision's ImageFolder + DataLoader(num_workers=2) reading
the same PNG files.

    python bench/data_scale.py [--sizes 25000 100000 400000] [--side 64] [--batch 256] [--data DIR]
                               [--pipelines memory mmap torchvision] [--repeats 1]

For each size the script writes that many PNGs (side x side, ten class folders), builds the image cache entry once
(not timed), then runs each pipeline in a fresh process. The transmodal pipelines go through the vision plugin's
``image-folder`` dataset as a user's config would (listing the folders, keying and opening the cache entry, the
split; ``storage: memory`` or ``mmap``), then every pipeline reads every sample of one shuffled epoch as float
batches in [0, 1] and reports samples/s and its peak resident size (``ru_maxrss``; for torchvision plus that of
its largest DataLoader worker). The resident size counts the pages of every file the process maps: torch's
libraries, and for the memory-mapped split every page of the cache file it has read, which belong to the page cache
and are dropped by the kernel when memory is short. What the process itself needs is its anonymous memory, so for
the transmodal pipelines the script also reports the peak of that over the whole run, dataset preparation included
(``RssAnon``, sampled every few milliseconds), and the anonymous memory right after the imports (torch's own, the
same at every size). The last line of output is one JSON object: per size, each
pipeline's samples/s and peak MiB, and the ratios to torchvision's samples/s.

Generating 400k files takes minutes: with ``--data DIR`` the files (and the image cache) are kept in DIR and
reused by later runs; without it they go to a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

CLASSES = 10
VARIANTS = 600  # distinct generated images, each written to many files
PIPELINES = ("memory", "mmap", "torchvision")


def generate(root: Path, count: int, side: int) -> None:
    """``count`` noisy PNGs, ``side`` pixels square, spread over ten class folders (ImageFolder's layout): copies of
    ``VARIANTS`` images encoded once (noise of 60 strengths), so that 400k files take a minute, not an hour. A folder
    completed before (its marker file written last) is kept as it is."""
    done = root / ".complete"
    if done.exists():
        return
    variants = []
    for index in range(VARIANTS):
        encoded = io.BytesIO()
        Image.effect_noise((side, side), 30 + index % 60).convert("RGB").save(encoded, format="PNG")
        variants.append(encoded.getvalue())
    for name in range(CLASSES):
        (root / f"class{name}").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (root / f"class{index % CLASSES}" / f"{index:07d}.png").write_bytes(variants[index % VARIANTS])
    done.touch()


def anonymous_mib() -> float:
    """This process's anonymous resident memory: what it allocated, without the file pages a memory map brings
    in (those count in the resident size but the kernel drops them under pressure)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def anonymous_peak(every_s: float = 0.005) -> Iterator[list[float]]:
    """The peak of :func:`anonymous_mib` while the block runs, sampled by a thread: ``peak[0]`` after the block."""
    peak, running = [anonymous_mib()], threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], anonymous_mib())
            time.sleep(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        running.clear()
        sampler.join()
        peak[0] = max(peak[0], anonymous_mib())


def transmodal_epoch(root: Path, cache: Path, side: int, batch: int, mapped: bool) -> tuple[int, float]:
    """One epoch through the image-folder dataset (all images in the training split); (samples, peak anonymous
    MiB of the whole: dataset preparation and epoch)."""
    from transmodal.data import BatchLoader
    from transmodal_vision.image_folder import build_image_folder
    from transmodal_vision.params import ImageFolderParams

    params = ImageFolderParams(root=root, image_size=side, val_fraction=0.0, test_fraction=0.0, cache_dir=cache,
                               num_workers=1, storage="mmap" if mapped else "memory")
    with anonymous_peak() as peak:
        train = build_image_folder(params).train
        loader = BatchLoader({"image": train.data["image"], "label": train.data["label"]}, batch, shuffle=True,
                             seed=0)
        seen = 0
        for step in loader.epoch(0):
            seen += len(step["image"].float().div_(255))
    return seen, peak[0]


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
    result: dict[str, float] = {"imports_anonymous_mib": anonymous_mib()}
    started = time.perf_counter()
    if args.pipeline == "torchvision":
        seen = torchvision_epoch(root, args.batch)
    else:
        seen, result["peak_anonymous_mib"] = transmodal_epoch(root, cache, args.side, args.batch,
                                                              mapped=args.pipeline == "mmap")
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result.update(samples=seen, samples_per_s=round(seen / seconds), peak_mib=round(usage / 1024))
    print(json.dumps({key: round(value) for key, value in result.items()}))


def measure(pipeline: str, root: Path, cache: Path, side: int, batch: int, repeats: int) -> dict[str, float]:
    """Medians over ``repeats`` fresh processes; with more than one, also the range of the peak anonymous memory
    (where glibc puts the loop's own float batches varies from one process to the next, by a batch or two)."""
    command = [sys.executable, __file__, "--pipeline", pipeline, "--root", str(root), "--cache", str(cache),
               "--side", str(side), "--batch", str(batch)]
    runs = [json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(repeats)]
    result = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    if repeats > 1 and "peak_anonymous_mib" in result:
        result["peak_anonymous_mib_range"] = [min(run["peak_anonymous_mib"] for run in runs),
                                              max(run["peak_anonymous_mib"] for run in runs)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000, 400_000])
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per pipeline (medians reported)")
    parser.add_argument("--data", type=Path, help="keep the generated files and the image cache here, for later runs")
    parser.add_argument("--pipeline", choices=PIPELINES, help=argparse.SUPPRESS)  # a child process's one run
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline is not None:
        run_pipeline(args)
        return

    from transmodal_vision.image_folder import build_image_folder
    from transmodal_vision.params import ImageFolderParams

    results = {}
    with contextlib.ExitStack() as stack:
        scratch = args.data or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for size in sorted(args.sizes):
            root, cache = scratch / f"images{size}-{args.side}px", scratch / "cache"
            generate(root, size, args.side)
            # the image cache entry, built here once (not timed); each pipeline below reuses it
            build_image_folder(ImageFolderParams(root=root, image_size=args.side, cache_dir=cache, storage="mmap"))
            numbers = {pipeline: measure(pipeline, root, cache, args.side, args.batch, args.repeats)
                       for pipeline in args.pipelines}
            if "torchvision" in numbers:
                reference = numbers["torchvision"]["samples_per_s"]
                for pipeline in set(numbers) - {"torchvision"}:
                    speed = numbers[pipeline]["samples_per_s"] / reference
                    numbers[pipeline]["speed_vs_torchvision"] = round(speed, 1)
            results[size] = numbers
            print(f"{size} images: {json.dumps(numbers)}", flush=True)
    print(json.dumps({"side": args.side, "batch": args.batch, "results": results}))


if __name__ == "__main__":
    main()
