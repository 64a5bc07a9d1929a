"""Image only vs caption only vs fused vs fused + DANN on synthetic-shapes, over several seeds.

    python examples/shapes_table.py                 # 3 seeds, the configs as written
    python examples/shapes_table.py --seeds 0 --set trainer.epochs=2   # a quick look

Prints a markdown table of accuracy (mean and standard deviation over seeds) on source validation and on target
test. The checkpoint of each run is chosen by source-validation accuracy (no target labels); the "oracle" column
picks the epoch on target-test labels and is an upper bound, not a result.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import transmodal

HERE = Path(__file__).parent
CONFIGS = {
    "image only": "shapes_image_only.yaml",
    "caption only": "shapes_caption_only.yaml",
    "fused (concat)": "shapes_fused.yaml",
    "fused + dann": "shapes_fused_dann.yaml",
}


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * deviation:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="run only these rows")
    args = parser.parse_args()
    configs = {label: CONFIGS[label] for label in (args.only or CONFIGS)}

    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for label, config in configs.items():
            results: dict[str, list[float]] = {"source": [], "target": [], "oracle": []}
            for seed in args.seeds:
                overrides = [*args.overrides, f"trainer.seed={seed}", f"output.dir={runs}"]
                summary, _ = transmodal.train(transmodal.load_experiment(HERE / config, overrides), quiet=True)
                results["source"].append(summary["best"]["source/val"]["accuracy"])
                results["target"].append(summary["best"]["target/test"]["accuracy"])
                results["oracle"].append(summary["oracle"]["target/test"]["accuracy"])
                print(f"{label}, seed {seed}: target {summary['best']['target/test']['accuracy']:.4f}", flush=True)
            rows.append((label, results))

    print(f"\nseeds {args.seeds}; checkpoint chosen by source/val accuracy; accuracy in %\n")
    print("| model | source val | target test | target test (oracle) |")
    print("| --- | --- | --- | --- |")
    for label, results in rows:
        print(f"| {label} | {spread(results['source'])} | {spread(results['target'])} | {spread(results['oracle'])} |")


if __name__ == "__main__":
    main()
