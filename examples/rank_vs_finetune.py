"""Does the transferability ranking predict fine-tuning? Kendall's tau between each score and the accuracy after
fine-tuning, over a handful of image encoders that exist offline (nothing downloads weights).

    python examples/rank_vs_finetune.py                                  # synthetic-shapes and glyphs
    python examples/rank_vs_finetune.py --benchmarks glyphs --epochs 3 --set trainer.num_threads=1

For each benchmark: ``transmodal rank`` scores every candidate on the labelled source training split (no
training), then each candidate is fine-tuned with the benchmark's config (its image encoder replaced) and its
accuracy read on ``source/val`` (the task the scores are computed for, held out) and ``target/test`` (the shifted
domain, never used for scoring), at the checkpoint chosen on source validation. Prints one table per benchmark and
Kendall's tau-b of each score against each accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import transmodal
from transmodal.config import apply_overrides, as_experiment, load_yaml
from transmodal.ranking import METRIC_NAMES, METRICS, Candidate, rank
from transmodal.transferability import kendall_tau

EXAMPLES = Path(__file__).parent
# image encoders that build offline: the core's small CNN at several widths and depths, and a ResNet-18 from
# scratch (transmodal-vision, weights: null).
CANDIDATES = {
    "small-cnn [8,16]": {"name": "small-cnn", "channels": [8, 16]},
    "small-cnn [16,32]": {"name": "small-cnn", "channels": [16, 32]},
    "small-cnn [16,32,64]": {"name": "small-cnn", "channels": [16, 32, 64]},
    "small-cnn [32,64,128]": {"name": "small-cnn", "channels": [32, 64, 128]},
    "small-cnn [16,32,64,128]": {"name": "small-cnn", "channels": [16, 32, 64, 128]},
    "resnet18 (scratch)": {"name": "resnet18", "weights": None},
}
# The benchmarks, kept small enough that the fine-tuned accuracies do not all saturate: the ranking is only
# testable where the candidates end up apart.
BENCHMARKS: dict[str, tuple[Path, list[str]]] = {
    "synthetic-shapes": (EXAMPLES / "shapes_image_only.yaml", [
        "data.dataset.train_size=1000", "data.dataset.val_size=500", "data.dataset.target_train_size=0",
        "data.dataset.target_test_size=500", "trainer.batch_size=32"]),
    "glyphs": (EXAMPLES / "glyphs.yaml", [
        "data.dataset.source=handwritten", "data.dataset.train_size=1000",
        "data.dataset.val_size=500", "data.dataset.target_train_size=0", "data.dataset.target_test_size=500",
        "trainer.batch_size=32"]),
}


def experiment_for(config: Path, overrides: list[str], encoder: dict[str, Any] | None, runs: str) -> Any:
    raw = load_yaml(config)
    apply_overrides(raw, overrides)
    if encoder is not None:
        raw.setdefault("model", {}).setdefault("encoders", {})["image"] = copy.deepcopy(encoder)
    raw["output"] = {"dir": runs}
    raw.setdefault("trainer", {})["score_validators"] = False
    return as_experiment(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs per candidate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="applied to every benchmark's config, after its own reductions")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as runs:
        for benchmark in args.benchmarks:
            config, reductions = BENCHMARKS[benchmark]
            overrides = [*reductions, f"trainer.epochs={args.epochs}", *args.overrides]
            candidates = [Candidate(label, CANDIDATES[label]) for label in args.candidates]
            start = time.perf_counter()
            ranking = rank(experiment_for(config, overrides, None, runs), candidates)
            rank_seconds = time.perf_counter() - start
            rows = {score.label: {**score.scores} for score in ranking.candidates}
            start = time.perf_counter()
            for label in args.candidates:
                summary, _ = transmodal.train(experiment_for(config, overrides, CANDIDATES[label], runs), quiet=True)
                rows[label]["source/val"] = summary["best"]["source/val"]["accuracy"]
                rows[label]["target/test"] = summary["best"]["target/test"]["accuracy"]
                print(f"{benchmark}: {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[label].items()),
                      flush=True)
            finetune_seconds = time.perf_counter() - start
            taus = {metric: {split: kendall_tau([rows[c][metric] for c in args.candidates],
                                                [rows[c][split] for c in args.candidates])
                             for split in ("source/val", "target/test")} for metric in METRICS}
            report[benchmark] = {"rows": rows, "kendall_tau": taus, "rank_seconds": rank_seconds,
                                 "finetune_seconds": finetune_seconds}
            print(f"\n{benchmark} ({config.name}, {', '.join(overrides)}): scores on the source training split "
                  f"({ranking.samples} samples, {rank_seconds:.0f} s for all candidates), accuracy in % after "
                  f"{args.epochs} epochs of fine-tuning ({finetune_seconds:.0f} s for all)\n")
            print("| candidate | LogME | LEEP (N-LEEP) | H-score | source/val acc. | target/test acc. |")
            print("| --- | --- | --- | --- | --- | --- |")
            for label in sorted(args.candidates, key=lambda c: -rows[c]["logme"]):
                row = rows[label]
                print(f"| {label} | {row['logme']:.4f} | {row['leep']:.4f} | {row['hscore']:.3f} | "
                      f"{100 * row['source/val']:.1f} | {100 * row['target/test']:.1f} |")
            print("\n| Kendall's tau | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " |")
            print("| --- |" + " --- |" * len(METRICS))
            for split in ("source/val", "target/test"):
                print(f"| vs {split} accuracy | " + " | ".join(f"{taus[m][split]:+.2f}" for m in METRICS) + " |")
            print(flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
