"""An LSTM text classifier trained through the trainer against a hand-written PyTorch loop, side by side in one
process; and the LSTM's speed at sequence length 256 with and without flushing denormal floats (and with bf16
autocast).

The model is the tutorial's TextClassifier as configured in examples/imdb_lstm.yaml (embedding 100, a 2-layer
LSTM of 256 units on packed sequences, dropout 0.5), on generated IMDB-like reviews tokenized by `hf-word`. The
trainer and the hand-written loop train the same initial weights on the same batches in the same order with the
same optimizer; repeats alternate which goes first.

Denormals: backpropagating through a long sequence makes the gradients of early time steps shrink through the
denormal range (below 1.2e-38) on their way to zero; on CPUs that handle denormals in microcode every operation
on them costs ~100x. The trainer flushes them to zero on CPU (trainer.flush_denormal, on by default); here the
hand-written loop runs with the flag off and on.

    python bench/text_overhead.py [--train-size 512] [--length 128] [--batch-size 32] [--repeats 5] [--threads 1]

The last line of output is one JSON object; "ratio" is trainer / hand-written samples per second.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import transmodal
from torch import nn
from transmodal.config import parse_experiment
from transmodal.data import DatasetBundle, Split, move_batch
from transmodal.plugins import Plugins
from transmodal.registry import NoParams

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_tokenize import imdb_like_documents


class GeneratedReviews:
    """An in-process plugin: IMDB-like reviews, labelled by whether "great" outnumbers "bad"."""

    def __init__(self, size: int) -> None:
        texts = imdb_like_documents(size + 64, 230, seed=1)
        labels = torch.tensor([int(t.lower().count("great") > t.lower().count("bad")) for t in texts])
        self.bundle = DatasetBundle(
            modalities={"text": "text"}, classes=["neg", "pos"],
            train=Split({"text": texts[:size], "label": labels[:size]}),
            evaluation={"source/val": Split({"text": texts[size:], "label": labels[size:]})},
        )

    @transmodal.hookimpl
    def register_datasets(self, register) -> None:
        register("generated-reviews", lambda params, seed: copy.deepcopy(self.bundle), NoParams)


def experiment(args: argparse.Namespace, length: int, output: str, precision: str = "fp32") -> transmodal.Experiment:
    return parse_experiment({
        "name": "text-overhead",
        "data": {"dataset": {"name": "generated-reviews"}, "tokenizer": {"name": "hf-word", "max_length": length}},
        "model": {
            "encoders": {"text": {"name": "lstm", "embedding_dim": 100, "hidden_dim": 256, "num_layers": 2,
                                  "dropout": 0.5, "pooling": "last"}},
            "fusion": {"name": "concat"},
            "head": {"name": "linear", "dropout": 0.5},
        },
        "adaptation": [{"name": "finetune"}],
        "schedule": {"name": "constant"},
        "trainer": {"epochs": 1, "batch_size": args.batch_size, "num_threads": args.threads, "device": args.device,
                    "precision": precision},
        "output": {"dir": output},
    })


def hand_written_epoch(model: nn.Module, loader: transmodal.BatchLoader, device: torch.device, lr: float,
                       weight_decay: float, bf16: bool = False) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    total = torch.zeros((), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for batch in loader.epoch(0):
        batch = move_batch(batch, device)
        with autocast:
            loss = nn.functional.cross_entropy(model(batch).logits.float(), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return float(total) / len(loader)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating(runs: dict[str, Callable[[], None]], repeats: int) -> None:
    for repeat in range(repeats):
        for run in (list(runs.values()) if repeat % 2 == 0 else list(reversed(runs.values()))):
            run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--length", type=int, default=128, help="sequence length of the trainer/hand-written pair")
    parser.add_argument("--denormal-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--denormal-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plugins = Plugins(extra_plugins=[("bench-generated-reviews", GeneratedReviews(args.train_size))])

    with tempfile.TemporaryDirectory() as output:
        torch.manual_seed(0)
        config = experiment(args, args.length, output)
        assembled = transmodal.assemble(config, plugins)
        initial = copy.deepcopy(assembled.model.state_dict())
        samples = len(assembled.data.train) * args.batch_size
        tokens = int((assembled.data.train.columns["text"] != 0).sum(dim=1).float().mean())
        speeds: dict[str, list[float]] = {"trainer": [], "hand": []}
        losses: dict[str, float] = {}

        def run_trainer() -> None:
            assembled.model.load_state_dict(initial)
            trainer = transmodal.Trainer(assembled, quiet=True)
            torch.manual_seed(1)
            started = time.perf_counter()
            losses["trainer"] = trainer.train_epoch(0)[0]["loss"]
            _sync(device)
            speeds["trainer"].append(samples / (time.perf_counter() - started))

        def run_hand() -> None:
            model = assembled.model.to(device)
            model.load_state_dict(initial)
            torch.manual_seed(1)
            started = time.perf_counter()
            losses["hand"] = hand_written_epoch(model, assembled.data.train, device, config.optimizer.lr,
                                                config.optimizer.weight_decay)
            _sync(device)
            speeds["hand"].append(samples / (time.perf_counter() - started))

        torch.set_flush_denormal(True)  # what the trainer sets on CPU; the hand-written loop gets it too
        run_hand()  # warm-up, not counted
        speeds["hand"].clear()
        alternating({"trainer": run_trainer, "hand": run_hand}, args.repeats)
        trainer_rate, hand_rate = statistics.median(speeds["trainer"]), statistics.median(speeds["hand"])
        print(f"length {tokens}: trainer {trainer_rate:.1f} samples/s, hand-written {hand_rate:.1f} samples/s, "
              f"ratio {trainer_rate / hand_rate:.3f}", flush=True)

        # Long sequences: flush-denormal off / on, and bf16 autocast, all in the hand-written loop.
        long_config = experiment(args, args.denormal_length, output)
        long = transmodal.assemble(long_config, plugins)
        long_initial = copy.deepcopy(long.model.state_dict())
        long_model = long.model.to(device)
        long_samples = len(long.data.train) * args.batch_size
        long_tokens = int((long.data.train.columns["text"] != 0).sum(dim=1).float().mean())
        rates: dict[str, list[float]] = {"no_flush": [], "flush": [], "bf16": []}

        def long_run(name: str, flush: bool, bf16: bool) -> Callable[[], None]:
            def run() -> None:
                torch.set_flush_denormal(flush)
                long_model.load_state_dict(long_initial)
                torch.manual_seed(1)
                started = time.perf_counter()
                hand_written_epoch(long_model, long.data.train, device, long_config.optimizer.lr,
                                   long_config.optimizer.weight_decay, bf16=bf16)
                _sync(device)
                rates[name].append(long_samples / (time.perf_counter() - started))
            return run

        long_runs = {"no_flush": long_run("no_flush", False, False), "flush": long_run("flush", True, False)}
        if device.type == "cpu" or torch.cuda.is_bf16_supported():
            long_runs["bf16"] = long_run("bf16", True, True)
        alternating(long_runs, args.denormal_repeats)
        torch.set_flush_denormal(False)
        long_rate = {name: statistics.median(values) for name, values in rates.items() if values}
        print(f"length {long_tokens}: " + ", ".join(f"{name} {rate:.1f} samples/s" for name, rate in long_rate.items()),
              flush=True)

    print(json.dumps({
        "benchmark": "text_overhead",
        "device": str(device),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "ratio": round(trainer_rate / hand_rate, 4),
        "trainer_samples_per_s": round(trainer_rate, 1),
        "hand_written_samples_per_s": round(hand_rate, 1),
        "losses_match": round(losses["trainer"], 5) == round(losses["hand"], 5),
        "tokens_per_sample": tokens,
        "long_tokens_per_sample": long_tokens,
        "samples_per_s_no_flush_denormal": round(long_rate["no_flush"], 1),
        "samples_per_s_flush_denormal": round(long_rate["flush"], 1),
        "flush_speedup": round(long_rate["flush"] / long_rate["no_flush"], 3),
        "samples_per_s_bf16_autocast": round(long_rate["bf16"], 1) if "bf16" in long_rate else None,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
