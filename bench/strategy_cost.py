"""Training-step time of each adaptation strategy on the default model, as a ratio to finetune.

The default experiment's model (small CNN + bag of words, concatenation fusion, batch 128) is built afresh for each
strategy from the same data; every strategy trains on the same source batches (and, when it needs them, target
batches: the trainer then forwards source and target together, which alone roughly doubles a step). Each
measurement is paired with one of finetune right beside it; the ratio is the median over repeats of strategy /
finetune. adabn costs nothing in a step (it works before each evaluation); lp-ft and gradual-unfreeze are measured
in their first epoch, with most layers still frozen. "ema" is finetune with trainer.ema_decay (the weights averaged
after every step). The last line is one JSON object.

    python bench/strategy_cost.py [--steps 8] [--repeats 3] [--threads 2] [--only cdan mmd]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import torch

import transmodal
from transmodal.config import ComponentSpec, default_experiment_dict, parse_experiment, validate_components
from transmodal.data import move_batch
from transmodal.experiment import Assembled, build_model, build_strategies, prepare_data
from transmodal.plugins import get_plugins

STRATEGIES: dict[str, list[dict[str, Any]]] = {
    "finetune": [{"name": "finetune"}],
    "linear-probe": [{"name": "linear-probe"}],
    "lp-ft": [{"name": "lp-ft"}],
    "freeze": [{"name": "freeze", "first": 1}],
    "gradual-unfreeze": [{"name": "gradual-unfreeze"}],
    "layerwise-lr": [{"name": "layerwise-lr"}],
    "l2-sp": [{"name": "l2-sp"}],
    "l2": [{"name": "l2"}],
    "adabn": [{"name": "adabn"}],
    "dann": [{"name": "dann"}],
    "cdan": [{"name": "cdan"}],
    "cdan+e": [{"name": "cdan", "entropy": True}],
    "mmd": [{"name": "mmd"}],
    "mmd-linear": [{"name": "mmd", "kernel": "linear"}],
    "coral": [{"name": "coral"}],
    "entropy-min": [{"name": "entropy-min"}],
    "pseudo-label": [{"name": "pseudo-label"}],
    "pseudo-label-ema": [{"name": "pseudo-label", "ema": 0.99}],
    "vat": [{"name": "vat"}],
    "vada": [{"name": "vat"}, {"name": "entropy-min", "diversity": 0.0, "weight": 0.01},
             {"name": "dann", "max_coefficient": 0.01}],
    "lora": [{"name": "lora"}],
    "dora": [{"name": "dora"}],
    "ia3": [{"name": "ia3"}],
    "ema": [{"name": "finetune"}],  # with the trainer's weight averaging (TRAINER_OPTIONS)
}
# Rows that change a trainer option rather than the strategy list.
TRAINER_OPTIONS: dict[str, dict[str, Any]] = {"ema": {"ema_decay": 0.998}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (after 2 untimed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--only", nargs="+", help="strategies to measure besides finetune")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    plugins = get_plugins()
    names = [n for n in STRATEGIES if n == "finetune" or args.only is None or n in args.only]
    skipped = [n for n in names if any(s["name"] not in plugins.registry("strategy") for s in STRATEGIES[n])]
    names = [n for n in names if n not in skipped]

    raw = default_experiment_dict()
    size = args.batch_size * (args.steps + 2)
    raw["data"] = {"dataset": {"name": "synthetic-shapes", "train_size": size, "val_size": 64,
                               "target_train_size": size, "target_test_size": 64}}
    raw["trainer"] = {"epochs": 2, "batch_size": args.batch_size, "num_threads": args.threads}  # lp-ft needs 2
    with tempfile.TemporaryDirectory() as output:
        raw["output"] = {"dir": output}
        base = parse_experiment(raw)
        components = validate_components(base, plugins)
        data = prepare_data(base, components, {})
        assert data.unlabelled is not None
        sources = [move_batch(b, torch.device("cpu")) for b in data.train.epoch(0)]
        targets = [move_batch(b, torch.device("cpu")) for b in data.unlabelled.epoch(0)]

        def seconds_per_step(name: str) -> float:
            trainer_config = base.trainer.model_copy(update=TRAINER_OPTIONS.get(name, {}))
            experiment = base.model_copy(update={"adaptation": [ComponentSpec(**s) for s in STRATEGIES[name]],
                                                 "trainer": trainer_config})
            resolved = validate_components(experiment, plugins)
            torch.manual_seed(0)
            model = build_model(experiment, resolved, data.modalities, len(data.bundle.classes))
            strategies = build_strategies(experiment, resolved, data, model)
            validator = resolved["validator"].component.load_factory()(resolved["validator"].params)
            trainer = transmodal.Trainer(Assembled(experiment, resolved, data, model, strategies, validator), quiet=True)
            trainer.model.train()
            for strategy in trainer.strategies:
                strategy.on_epoch_start(0)
            started = 0.0
            for index, source in enumerate(sources):
                if index == 2:
                    started = time.perf_counter()
                trainer.train_step(source, targets[index] if trainer.needs_target else None)
            return (time.perf_counter() - started) / (len(sources) - 2)

        # Each measurement of a strategy is paired with one of finetune right beside it (the order alternating),
        # so that load from other processes, which drifts over minutes, cancels in the ratio.
        times: dict[str, list[float]] = {name: [] for name in names}
        ratios_seen: dict[str, list[float]] = {name: [] for name in names}
        others = [name for name in names if name != "finetune"]
        for repeat in range(args.repeats):
            for name in others[repeat % len(others):] + others[: repeat % len(others)]:
                pair = ["finetune", name] if repeat % 2 == 0 else [name, "finetune"]
                measured = {n: seconds_per_step(n) for n in pair}
                times["finetune"].append(measured["finetune"])
                times[name].append(measured[name])
                ratios_seen[name].append(measured[name] / measured["finetune"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    base_time = medians["finetune"]
    ratios = {"finetune": 1.0, **{name: round(statistics.median(ratios_seen[name]), 3) for name in others}}
    for name in names:
        print(f"{name:18s} {1000 * medians[name]:8.1f} ms/step  x{ratios[name]:.2f}")
    if skipped:
        print(f"not installed: {', '.join(skipped)}")
    print(json.dumps({"finetune_ms_per_step": round(1000 * base_time, 2), "ratio_to_finetune": ratios,
                      "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps,
                      "repeats": args.repeats, "skipped": skipped}))


if __name__ == "__main__":
    main()
