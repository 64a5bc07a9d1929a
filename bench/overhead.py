"""The trainer's own overhead: its epoch against a hand-written PyTorch loop, side by side in one process.

Both train the same model (same initial weights) on the same batches in the same order with the same optimizer;
repeats alternate which goes first. Prints the median samples/s of each, their ratio (trainer / hand-written) and
whether the losses agree to 5 decimals; the last line is one JSON object.

    python bench/overhead.py [--repeats 5] [--train-size 2048] [--batch-size 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import torch
from torch import nn

import transmodal
from transmodal.config import default_experiment_dict, parse_experiment
from transmodal.data import move_batch


def experiment(args: argparse.Namespace, output: str) -> transmodal.Experiment:
    raw = default_experiment_dict()
    raw["data"] = {"dataset": {"name": "synthetic-shapes", "train_size": args.train_size, "val_size": 64,
                               "target_train_size": 0, "target_test_size": 64}}
    raw["adaptation"] = [{"name": "finetune"}]
    raw["schedule"] = {"name": "constant"}
    raw["trainer"] = {"epochs": 1, "batch_size": args.batch_size, "num_threads": args.threads}
    raw["output"] = {"dir": output}
    return parse_experiment(raw)


def hand_written_epoch(model: nn.Module, loader: transmodal.BatchLoader, lr: float, weight_decay: float) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    total = torch.zeros(())
    for batch in loader.epoch(0):
        batch = move_batch(batch, torch.device("cpu"))
        loss = nn.functional.cross_entropy(model(batch).logits, batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return float(total) / len(loader)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as output:
        config = experiment(args, output)
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        assembled = transmodal.assemble(config)
        initial = copy.deepcopy(assembled.model.state_dict())
        samples = len(assembled.data.train) * args.batch_size
        speeds: dict[str, list[float]] = {"trainer": [], "hand": []}
        losses: dict[str, float] = {}

        def run_trainer() -> None:
            assembled.model.load_state_dict(initial)
            trainer = transmodal.Trainer(assembled, quiet=True)
            torch.manual_seed(1)
            started = time.perf_counter()
            losses["trainer"] = trainer.train_epoch(0)[0]["loss"]
            speeds["trainer"].append(samples / (time.perf_counter() - started))

        def run_hand() -> None:
            model = assembled.model
            model.load_state_dict(initial)
            torch.manual_seed(1)
            started = time.perf_counter()
            losses["hand"] = hand_written_epoch(model, assembled.data.train, config.optimizer.lr,
                                                config.optimizer.weight_decay)
            speeds["hand"].append(samples / (time.perf_counter() - started))

        run_hand()  # warm-up (allocator, kernels), not counted
        speeds["hand"].clear()
        for repeat in range(args.repeats):
            for run in ((run_trainer, run_hand) if repeat % 2 == 0 else (run_hand, run_trainer)):
                run()

    trainer_median = statistics.median(speeds["trainer"])
    hand_median = statistics.median(speeds["hand"])
    result = {
        "trainer_samples_per_s": round(trainer_median, 1),
        "hand_written_samples_per_s": round(hand_median, 1),
        "ratio": round(trainer_median / hand_median, 4),
        "losses_match": round(losses["trainer"], 5) == round(losses["hand"], 5),
        "trainer_loss": losses["trainer"],
        "hand_written_loss": losses["hand"],
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    print(f"trainer {trainer_median:.0f} samples/s, hand-written {hand_median:.0f} samples/s, "
          f"ratio {result['ratio']:.3f}, losses match: {result['losses_match']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
