"""Preparing image files for training: cold (decode + resize into the image cache) against cached (the entry is
reused, nothing decoded), and parallel decoding against one process, on a generated folder of small PNGs.

    python bench/data_prep.py [--images 5000] [--size 64] [--workers N] [--repeats 3]

Each measurement builds ``ImageCache.load`` on the same file list: "cold" in an empty cache folder with N worker
processes (default: one per core), "single" in an empty folder with one process, "cached" on the cold run's entry.
The last line of output is one JSON object with the medians in seconds and the ratios cold/cached and single/cold.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from transmodal.image_cache import ImageCache, default_workers


def generate(folder: Path, count: int) -> list[Path]:
    """Small PNGs of varied sizes and content (so decoding and resizing do real work)."""
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        side = 96 + index % 64
        image = Image.effect_noise((side, side - 16), 40 + index % 50).convert("RGB")
        path = folder / f"{index:06d}.png"
        image.save(path)
        paths.append(path)
    return paths


def median_seconds(run: Callable[[], None], before: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        paths = generate(root / "images", args.images)
        cache_dir = root / "cache"

        def empty() -> None:
            shutil.rmtree(cache_dir, ignore_errors=True)

        def load(workers: int) -> Callable[[], None]:
            return lambda: ImageCache(cache_dir, workers).load(paths, args.size)

        cold = median_seconds(load(args.workers), empty, args.repeats)
        single = median_seconds(load(1), empty, args.repeats)
        load(args.workers)()  # the entry that the cached runs reuse
        cached = median_seconds(load(args.workers), lambda: None, args.repeats)
    result = {
        "images": args.images, "size": args.size, "workers": args.workers, "repeats": args.repeats,
        "cold_s": round(cold, 3), "single_process_s": round(single, 3), "cached_s": round(cached, 4),
        "cold_over_cached": round(cold / cached, 1), "single_over_parallel": round(single / cold, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
