"""Compare the fusion operators on synthetic-shapes: accuracy over seeds (source validation and target test),
parameter count, and target-test accuracy with the caption missing.

Each operator (every registered fusion, with its default parameters) replaces the fusion of the base experiment
(by default examples/shapes_fused.yaml: image + caption, fine-tuning, so that the operators are compared
without an adaptation method in the way) and trains once per seed; the two single-modality models give the bar
that fusion must clear. The accuracy is that of the checkpoint the run's validator selected (source
validation by default, never the target labels); "no caption" evaluates that checkpoint with the text absent
from every sample (``transmodal evaluate RUN_DIR --drop-modality text``).

    python examples/fusion_table.py --set trainer.num_threads=1       # the README's table
    python examples/fusion_table.py --set trainer.epochs=3 --set data.dataset.train_size=2000 --seeds 0
    python examples/fusion_table.py --operators concat film --set model.modality_dropout=0.3
    python examples/fusion_table.py --config examples/shapes_fused_dann.yaml   # with DANN (the default experiment)
    python examples/fusion_table.py --jobs 6 --set trainer.num_threads=2    # six runs at a time (one GPU)

Prints a Markdown table, then one JSON object with every run's numbers on the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import transmodal
from transmodal.checkpoint import load_checkpoint
from transmodal.config import apply_overrides, load_yaml, parse_experiment
from transmodal.plugins import get_plugins
from transmodal.run import evaluate_run

SINGLE = {"image only": "image", "text only": "text"}


def base_experiment(config: Path, overrides: list[str]) -> dict[str, Any]:
    raw = load_yaml(config)
    raw.setdefault("data", {}).setdefault("dataset", {"name": "synthetic-shapes"})
    return apply_overrides(raw, list(overrides))


def row_experiment(base: dict[str, Any], row: str, seed: int, runs: Path) -> transmodal.Experiment:
    raw = copy.deepcopy(base)
    if row in SINGLE:
        modality = SINGLE[row]
        raw["model"]["encoders"] = {modality: raw["model"]["encoders"][modality]}
        raw["model"]["fusion"] = {"name": "concat"}
    else:
        raw["model"]["fusion"] = {"name": row}
    raw.setdefault("trainer", {})["seed"] = seed
    raw["name"] = f"{row.replace(' ', '-')}-seed{seed}"
    raw["output"] = {"dir": str(runs), "name": raw["name"]}
    return parse_experiment(raw, f"fusion table row '{row}'")


def train_row(base: dict[str, Any], row: str, seed: int, runs: Path) -> dict[str, Any]:
    started = time.perf_counter()
    summary, run_dir = transmodal.train(row_experiment(base, row, seed, runs), quiet=True)
    weights = load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"]
    result = {
        "row": row,
        "seed": seed,
        "source_val": summary["best"]["source/val"]["accuracy"],
        "target_test": summary["best"]["target/test"]["accuracy"],
        "fusion_params": sum(v.numel() for k, v in weights.items() if k.startswith("fusion.")),
        "model_params": sum(v.numel() for v in weights.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if row == "image only":  # never sees the caption: the bar a fused model without its caption should reach
        result["target_test_no_caption"] = result["target_test"]
    elif row != "text only":
        without_text, _ = evaluate_run(run_dir, drop_modalities=("text",))
        result["target_test_no_caption"] = without_text["target/test"]["accuracy"]
    return result


def run_all(jobs: list[tuple[Any, ...]], workers: int) -> Iterator[dict[str, Any]]:
    """Results in the order of ``jobs``; with several workers, each in its own (spawned, CUDA-safe) process."""
    if workers == 1:
        yield from map(train_row, *zip(*jobs))
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(train_row, *zip(*jobs))


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def table(results: list[dict[str, Any]], rows: list[str]) -> str:
    lines = [
        ("| fusion | source-val accuracy (%) | target-test accuracy (%) | target-test, no caption (%) "
         "| fusion parameters | provider |"),
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    registry = get_plugins().registry("fusion")
    for row in rows:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        source = spread([r["source_val"] for r in runs])
        accuracy = spread([r["target_test"] for r in runs])
        captionless = [r["target_test_no_caption"] for r in runs if "target_test_no_caption" in r]
        no_caption = spread(captionless) if captionless else "—"
        provider = "—" if row in SINGLE else registry.get(row).distribution
        lines.append(f"| {row} | {source} | {accuracy} | {no_caption} | {runs[0]['fusion_params']:,} | {provider} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--operators", nargs="+", help="fusion names (default: every registered fusion)")
    parser.add_argument("--no-single", action="store_true", help="skip the image-only and text-only rows")
    parser.add_argument("--config", type=Path, default=Path(__file__).parent / "shapes_fused.yaml",
                        help="base experiment YAML (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override the base experiment, as in transmodal train (repeatable)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="train this many runs at once, in separate processes (e.g. sharing one GPU)")
    parser.add_argument("--runs", type=Path, help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()

    operators = args.operators or get_plugins().registry("fusion").names()
    rows = ([] if args.no_single else list(SINGLE)) + operators
    base = base_experiment(args.config, args.overrides)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        runs = args.runs or Path(scratch)
        jobs = [(base, row, seed, runs) for row in rows for seed in args.seeds]
        for result in run_all(jobs, args.jobs):
            results.append(result)
            print(f"{result['row']} seed {result['seed']}: {100 * result['target_test']:.1f}% "
                  f"in {result['seconds']} s", file=sys.stderr, flush=True)
    print(table(results, rows))
    print(json.dumps({
        "config": str(args.config), "overrides": args.overrides, "seeds": args.seeds, "runs": results,
    }))


if __name__ == "__main__":
    main()
