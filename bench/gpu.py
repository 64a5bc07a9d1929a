"""The GPU path, measured in one prepared script: ResNet-18 on CIFAR-shaped random data through transmodal's
trainer against a hand-written loop with the same tricks, fp16 with a gradient scaler end to end, and how much of
the GPU's own bf16 matmul rate each reaches.

    python bench/gpu.py [--batch-size 256] [--steps 20] [--repeats 5]          # on a CUDA machine
    python bench/gpu.py --device cpu --batch-size 16 --steps 2 --repeats 1      # a smoke run of the script itself

Variants (steps alternate in blocks, so a busy moment falls on every variant alike):
- hand_written_bf16: torchvision's ResNet-18 (10-way classifier), bf16 autocast, channels_last, fused AdamW, the
  whole dataset resident on the GPU and batches gathered there: what one would write by hand for speed.
- trainer_bf16: the same network through the trainer (`precision: bf16`, the backbone's `channels_last`, AdamW,
  which the trainer fuses on CUDA); its batches come from the trainer's loader and are copied to the GPU per step.
- trainer_fp16: `precision: fp16`, the trainer's GradScaler (CUDA only; skipped on the CPU).
- trainer_fp32: no autocast.
- trainer_bf16_compiled: trainer_bf16 with `trainer.compile: true` (torch.compile; compiled during the warm-up).
The matmul rate is measured here, on this GPU: bf16 (8192 x 8192) products in a loop; the model's floating-point
operations per step are counted once with torch.utils.flop_counter. The last line is one JSON object with
images/s per variant, the trainer/hand-written ratio and each variant's fraction of the measured matmul rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torchvision
import transmodal
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transmodal.encoder import ImageInput
from transmodal.plugins import Plugins
from transmodal.trainer import Trainer
from transmodal_vision import plugin as vision_plugin
from vision_overhead import NUM_CLASSES, BenchData, batches, steps_per_second

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def matmul_rate(device: torch.device, size: int, repeats: int) -> float:
    """Floating-point operations per second of bf16 matrix products on ``device`` (a measured peak)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(2):  # warm-up: kernel selection
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_for(args: argparse.Namespace, plugins: Plugins, precision: str, compiled: bool = False) -> Trainer:
    raw = {
        "name": "bench-gpu",
        "data": {"dataset": {"name": "bench-random-images", "size": args.batch_size * args.steps, "image_size": 32},
                 "augment": {"crop_padding": 4, "hflip": True}},
        "model": {"encoders": {"image": {"name": "resnet18", "channels_last": True}},
                  "fusion": {"name": "concat"}, "head": {"name": "linear"}},
        "adaptation": [{"name": "finetune"}],
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        "schedule": {"name": "constant"},
        "trainer": {"batch_size": args.batch_size, "device": args.device, "precision": precision,
                    "compile": compiled, "log_every": 1_000_000},
    }
    torch.manual_seed(0)
    return Trainer(transmodal.assemble(transmodal.Experiment.model_validate(raw), plugins), quiet=True)


class HandWritten:
    """The fast loop by hand: the dataset on the GPU, bf16 autocast, channels_last, fused AdamW."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device) -> None:
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
        net.fc = nn.Linear(net.fc.in_features, NUM_CLASSES)
        self.model = net.to(device, memory_format=torch.channels_last).train()
        self.inputs = ImageInput(MEAN, STD, crop_padding=4, hflip=True).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05,
                                           fused=device.type == "cuda")
        self.images, self.labels = images.to(device), labels.to(device)  # resident: no copy per step
        self.batch_size, self.device = batch_size, device

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            for indices in torch.randperm(len(self.labels), device=self.device).split(self.batch_size):
                if len(indices) == self.batch_size:
                    yield {"image": self.images[indices], "label": self.labels[indices]}

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            x = self.inputs(batch["image"]).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(self.model(x), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def flops_per_step(hand: HandWritten, batch: dict[str, torch.Tensor]) -> int:
    """Forward and backward operations of one training step of the network (the optimizer's are negligible)."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss = nn.functional.cross_entropy(hand.model(hand.inputs(batch["image"])), batch["label"])
        loss.backward()
    hand.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--no-compile", action="store_true", help="leave out trainer.compile (slow to compile on CPUs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench/gpu.py: no CUDA device here; run it on a GPU machine, or --device cpu for a smoke run\n")
    plugins = Plugins(entry_points=[], extra_plugins=[("transmodal-vision", vision_plugin), ("bench", BenchData())])

    precisions = ["bf16", "fp32"] + (["fp16"] if device.type == "cuda" else [])
    trainers = {f"trainer_{precision}": trainer_for(args, plugins, precision) for precision in precisions}
    if not args.no_compile:
        trainers["trainer_bf16_compiled"] = trainer_for(args, plugins, "bf16", compiled=True)
    loader = trainers["trainer_bf16"].data.train
    hand = HandWritten(loader.columns["image"], loader.columns["label"], args.batch_size, device)
    variants: dict[str, tuple[Callable, Iterator]] = {"hand_written_bf16": (hand.step, hand.batches())}
    for name, trainer in trainers.items():
        variants[name] = (lambda batch, t=trainer: t.train_step(batch)["loss"], batches(loader, device))

    flops = flops_per_step(hand, next(hand.batches()))
    for step, source in variants.values():  # warm-up: allocator, cuDNN autotuning, autocast caches
        steps_per_second(step, source, 3, device)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (step, source) in variants.items():
            rates[name].append(steps_per_second(step, source, args.steps, device))
    peak = matmul_rate(device, args.matmul_size, repeats=20 if device.type == "cuda" else 2)
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        print(f"{name:20s} {value * args.batch_size:10.1f} images/s  {value * flops / peak:6.1%} of the bf16 "
              f"matmul rate", flush=True)
    print(json.dumps({
        "benchmark": "gpu",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "bf16_matmul_tflops": round(peak / 1e12, 2),
        "model_gflops_per_step": round(flops / 1e9, 2),
        "images_per_s": {name: round(value * args.batch_size, 1) for name, value in median.items()},
        "fraction_of_matmul_rate": {name: round(value * flops / peak, 4) for name, value in median.items()},
        "trainer_over_hand_written_bf16": round(median["trainer_bf16"] / median["hand_written_bf16"], 3),
        **({"compile_speedup_bf16": round(median["trainer_bf16_compiled"] / median["trainer_bf16"], 3)}
           if "trainer_bf16_compiled" in median else {}),
    }))


if __name__ == "__main__":
    main()
