"""Every adaptation strategy on one experiment, over several seeds, beside source-only and a control.

    python examples/strategy_table.py                          # all strategies, 3 seeds, examples/shapes_fused.yaml
    python examples/strategy_table.py --config examples/glyphs.yaml --only 'source-only*' 'mcc'   # glyphs
    python examples/strategy_table.py --only 'source-only*' 'mmd' 'cdan*' --seeds 0 1 \\
        --set trainer.epochs=3 --set data.dataset.train_size=2000   # a quicker, smaller look

Each strategy runs at its default parameters (unless the row's label names one) on the experiment of ``--config``
(by default ``shapes_fused.yaml``: small CNN + bag of words, concatenation fusion, encoders trained from scratch),
with that config's optimizer and schedule. "source-only" is ``finetune``: trained on labelled source data, no
target data at all. The last row is a control: target batches
pass through the model beside the source batches, as for every strategy that uses target data, but add no loss.
For each strategy the table gives target-test accuracy (mean ± standard deviation over seeds) at the checkpoint
chosen by source-validation accuracy (no target labels: the result), and at the epoch chosen on target-test labels
("oracle": an upper bound, not a result). The last columns compare the source-val result with source-only and,
for strategies that use target batches, with the control; they say plainly when a strategy does not beat them.
A second table gives each label-free validator's regret over all runs: the oracle epoch's target accuracy minus
the accuracy of the epoch that validator would have kept (0 is perfect).
lora/dora/ia3 appear when transmodal-peft is installed. ``--json`` saves the numbers; ``--table-from`` prints the
table again from saved files (e.g. a full run plus a rerun of some rows).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import transmodal
from transmodal.config import apply_overrides, load_yaml, parse_experiment
from transmodal.plugins import get_plugins

HERE = Path(__file__).parent
BASE_CONFIG = HERE / "shapes_fused.yaml"

# label -> the adaptation list (strategies at their defaults unless a parameter is needed to say what to do)
STRATEGIES: dict[str, list[dict[str, Any]]] = {
    "source-only (finetune)": [{"name": "finetune"}],
    "linear-probe": [{"name": "linear-probe"}],
    "lp-ft": [{"name": "lp-ft"}],
    "freeze (first group)": [{"name": "freeze", "first": 1}],
    "gradual-unfreeze": [{"name": "gradual-unfreeze"}],
    "layerwise-lr": [{"name": "layerwise-lr"}],
    "l2-sp": [{"name": "l2-sp"}],
    "l2": [{"name": "l2"}],
    "adabn": [{"name": "adabn"}],
    "dann": [{"name": "dann"}],
    "cdan": [{"name": "cdan"}],
    "cdan+e": [{"name": "cdan", "entropy": True}],
    "mmd (gaussian)": [{"name": "mmd"}],
    "mmd (linear)": [{"name": "mmd", "kernel": "linear"}],
    "coral": [{"name": "coral"}],
    "entropy-min (information maximisation)": [{"name": "entropy-min"}],
    "entropy-min, no diversity term": [{"name": "entropy-min", "diversity": 0.0}],
    "mcc": [{"name": "mcc"}],
    "pseudo-label": [{"name": "pseudo-label"}],
    "vat": [{"name": "vat"}],
    # VADA (Shu et al., 2018): source and target smoothness, conditional entropy on the target and a domain
    # discriminator whose reversed gradient reaches the encoders at 0.01 (their lambda_d; the discriminator itself
    # trains at full rate, as in their alternating updates).
    "vada (vat + entropy + dann)": [{"name": "vat"}, {"name": "entropy-min", "diversity": 0.0, "weight": 0.01},
                                    {"name": "dann", "max_coefficient": 0.01}],
    # The same on per-image standardised input: its pixels deviate by 1, about three times as much as a [-1, 1]
    # image of ordinary contrast, so the paper's radius of 3.5 there is about 10 here.
    "vada, radius 10": [{"name": "vat", "radius": 10.0}, {"name": "entropy-min", "diversity": 0.0, "weight": 0.01},
                        {"name": "dann", "max_coefficient": 0.01}],
    "pseudo-label (mean teacher)": [{"name": "pseudo-label", "ema": 0.99}],
    "pseudo-label (threshold 0.5)": [{"name": "pseudo-label", "threshold": 0.5}],
    "lora": [{"name": "lora"}],
    "dora": [{"name": "dora"}],
    "ia3": [{"name": "ia3"}],
    "dann + adabn": [{"name": "dann"}, {"name": "adabn"}],
    "dann + mcc": [{"name": "dann"}, {"name": "mcc"}],
    "mcc + adabn": [{"name": "mcc"}, {"name": "adabn"}],
    # Control: target batches go through the model with the source batches (so BatchNorm normalises both domains
    # together, as for every strategy above that uses target data) but add no loss.
    "control: target batches, no loss": [{"name": "mmd", "weight": 0.0}],
}
SOURCE_ONLY = "source-only (finetune)"
CONTROL = "control: target batches, no loss"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def verdict(values: list[float], baseline: list[float], name: str) -> str:
    """How a row's source-val-selected target accuracy compares with a baseline row's."""
    (mean, std), (base_mean, base_std) = mean_std(values), mean_std(baseline)
    delta = 100 * (mean - base_mean)
    if min(len(values), len(baseline)) < 2:  # one seed has no spread to judge a difference by
        return f"{delta:+.1f} (one seed: no spread to judge by)"
    if delta <= 0:
        return f"{delta:+.1f}: does not beat {name}"
    if delta <= 100 * max(std, base_std):
        return f"{delta:+.1f}: within the spread, not a clear gain"
    return f"{delta:+.1f}: beats {name}"


def uses_target_batches(adaptation: list[dict[str, Any]]) -> bool:
    plugins = get_plugins()
    return any(plugins.get("strategy", spec["name"]).build(**{k: v for k, v in spec.items() if k != "name"})
               .needs_unlabelled_target for spec in adaptation)


def print_table(saved: dict[str, Any]) -> None:
    results, seeds, overrides = saved["results"], saved["seeds"], saved["overrides"]
    baseline = results.get(SOURCE_ONLY, {}).get("target")  # absent from a partial run; merge with --table-from
    control = results.get(CONTROL, {}).get("target")
    print(f"\n{saved['config']}{' with ' + ', '.join(overrides) if overrides else ''}; seeds {seeds}; "
          f"accuracy in %, mean ± standard deviation over seeds.")
    print("Checkpoint chosen by source/val accuracy (no target labels); 'oracle' picks the epoch on target-test "
          "labels: an upper bound, not a result. Rows that use target batches are also compared with the control "
          "(the same target batches in each step, no loss).\n")
    print("| strategy | source val | target test (source-val selection) | target test (oracle) | vs source-only "
          "| vs control |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, numbers in results.items():
        compared = "(baseline)" if label == SOURCE_ONLY else (
            verdict(numbers["target"], baseline, "source-only") if baseline is not None else "")
        against_control = ""
        if control is not None and label != CONTROL and uses_target_batches(STRATEGIES[label]):
            against_control = verdict(numbers["target"], control, "the control")
        print(f"| {label} | {cell(numbers['source_val'])} | {cell(numbers['target'])} | {cell(numbers['oracle'])} "
              f"| {compared} | {against_control} |")
    regrets: dict[str, list[float]] = {}
    for numbers in results.values():
        for name, values in numbers.get("regret", {}).items():
            regrets.setdefault(name, []).extend(values)
    if regrets:
        runs = len(next(iter(regrets.values())))
        print(f"\nValidator regret over the {runs} runs above: oracle target accuracy minus the target accuracy of "
              f"the epoch each validator would keep (points; 0 is perfect).\n")
        print("| validator | mean regret | median | worst |")
        print("| --- | --- | --- | --- |")
        for name, values in sorted(regrets.items(), key=lambda item: statistics.mean(item[1])):
            print(f"| {name} | {100 * statistics.mean(values):.1f} | {100 * statistics.median(values):.1f} "
                  f"| {100 * max(values):.1f} |")


def run(raw: dict[str, Any], adaptation: list[dict[str, Any]], seed: int, runs: str) -> dict[str, Any]:
    config = copy.deepcopy(raw)
    config["adaptation"] = adaptation
    config["trainer"] = {**config.get("trainer", {}), "seed": seed}
    config["output"] = {"dir": runs}
    summary, _ = transmodal.train(parse_experiment(config), quiet=True)
    return summary


def record(numbers: dict[str, Any], summary: dict[str, Any]) -> None:
    numbers["source_val"].append(summary["best"]["source/val"]["accuracy"])
    numbers["target"].append(summary["best"]["target/test"]["accuracy"])
    numbers["oracle"].append(summary["oracle"]["target/test"]["accuracy"])
    for name, choice in summary.get("validators", {}).get("by_validator", {}).items():
        numbers.setdefault("regret", {}).setdefault(name, []).append(choice["regret"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=BASE_CONFIG, help="the experiment every row starts from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=["*"], metavar="PATTERN",
                        help="labels of the strategies to run (fnmatch), e.g. to share the rows between processes "
                             "and merge them with --table-from")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override the base config, e.g. trainer.epochs=3")
    parser.add_argument("--json", type=Path, help="also write every run's numbers to this file")
    parser.add_argument("--table-from", type=Path, nargs="+", metavar="JSON",
                        help="train nothing: print the table from files written by --json (later files add or "
                             "replace rows; all must share config, seeds and overrides)")
    args = parser.parse_args()
    if args.table_from:
        saved = [json.loads(path.read_text()) for path in args.table_from]
        keys = [(s["config"], s["seeds"], s["overrides"]) for s in saved]
        if any(key != keys[0] for key in keys):
            raise SystemExit("--table-from: the files were made with different configs, seeds or overrides")
        merged = {label: numbers for s in saved for label, numbers in s["results"].items()}
        print_table({**saved[0], "results": {label: merged[label] for label in STRATEGIES if label in merged}})
        return

    raw = load_yaml(args.config)
    raw.setdefault("data", {}).setdefault("dataset", {"name": "synthetic-shapes"})
    apply_overrides(raw, args.overrides)
    strategies = get_plugins().registry("strategy")
    chosen = {label: adaptation for label, adaptation in STRATEGIES.items()
              if any(fnmatch.fnmatchcase(label, p) for p in args.only)}
    unmatched = [p for p in args.only if not any(fnmatch.fnmatchcase(label, p) for label in STRATEGIES)]
    if unmatched:  # a typo would silently drop a row from the table
        parser.error(f"--only {' '.join(unmatched)} matches no row; the rows are: {', '.join(STRATEGIES)}")
    missing = {label for label, adaptation in chosen.items() if any(s["name"] not in strategies for s in adaptation)}
    for label in sorted(missing):
        print(f"skipping {label}: not installed (lora, dora and ia3 come with transmodal-peft)")

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as runs:
        for label, adaptation in chosen.items():
            if label in missing:
                continue
            numbers: dict[str, Any] = {"source_val": [], "target": [], "oracle": []}
            for seed in args.seeds:
                record(numbers, run(raw, adaptation, seed, runs))
                print(f"{label}, seed {seed}: target {numbers['target'][-1]:.4f} (oracle {numbers['oracle'][-1]:.4f})",
                      flush=True)
            results[label] = numbers

    saved = {"config": args.config.as_posix(), "seeds": args.seeds, "overrides": args.overrides, "results": results}
    print_table(saved)
    if args.json is not None:
        args.json.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
