"""ResNet-18 training steps through transmodal's trainer against a hand-written PyTorch loop on the same
batches, and what bf16 autocast and channels_last give through the trainer.

Both sides train the same network (torchvision's ResNet-18 without its classifier, a linear head over 10
classes) with SGD and momentum, on the same uint8 batches from the same BatchLoader, with the same batched
augmentation (the model's ImageInput: crop with padding, flip, normalisation). The hand-written loop is
what one would write without the toolkit: forward, cross-entropy, zero_grad, backward, step. The trainer's
step adds its loss bookkeeping, strategy hooks and learning-rate schedule. Steps alternate in blocks, so
a busy moment of a shared machine falls on every variant alike.

    python bench/vision_overhead.py [--batch-size 64] [--steps 10] [--repeats 9] [--image-size 32] [--device cpu]

The last line is one JSON object: "ratio" is trainer / hand-written steps per second (fp32); "bf16_speedup"
and "channels_last_speedup" compare trainer variants with the fp32 trainer.
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
from pydantic import BaseModel, ConfigDict
from torch import nn
from transmodal.data import BatchLoader, DatasetBundle, Split, move_batch
from transmodal.encoder import ImageInput
from transmodal.plugins import Plugins
from transmodal.trainer import Trainer
from transmodal_vision import plugin as vision_plugin

NUM_CLASSES = 10


class RandomImagesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = 2048
    image_size: int = 32


def build_random_images(params: RandomImagesParams, seed: int) -> DatasetBundle:
    generator = torch.Generator().manual_seed(seed)

    def split(count: int) -> Split:
        images = torch.randint(0, 256, (count, 3, params.image_size, params.image_size), dtype=torch.uint8,
                               generator=generator)
        return Split({"image": images, "label": torch.randint(0, NUM_CLASSES, (count,), generator=generator)})

    return DatasetBundle({"image": "image"}, [str(c) for c in range(NUM_CLASSES)], split(params.size),
                         {"source/val": split(8)})


class BenchData:
    """A dataset of random CIFAR-sized images, registered like any plugin's dataset."""

    @transmodal.hookimpl
    def register_datasets(self, register: Callable) -> None:
        register("bench-random-images", build_random_images, RandomImagesParams, "Random uint8 images.")


def trainer_for(args: argparse.Namespace, plugins: Plugins, precision: str, channels_last: bool) -> Trainer:
    raw = {
        "name": "bench",
        "data": {"dataset": {"name": "bench-random-images", "size": args.batch_size * args.steps,
                             "image_size": args.image_size},
                 "augment": {"crop_padding": 4, "hflip": True}},
        "model": {"encoders": {"image": {"name": "resnet18", "channels_last": channels_last}},
                  "fusion": {"name": "concat"}, "head": {"name": "linear"}},
        "adaptation": [{"name": "finetune"}],
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "trainer": {"batch_size": args.batch_size, "device": args.device, "precision": precision,
                    "log_every": 10_000},
    }
    experiment = transmodal.Experiment.model_validate(raw)
    torch.manual_seed(0)
    return Trainer(transmodal.assemble(experiment, plugins), quiet=True)


class HandWritten:
    """The loop without the toolkit: torchvision's ResNet-18 with a 10-way linear layer as its classifier."""

    def __init__(self, device: torch.device) -> None:
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
        net.fc = nn.Linear(net.fc.in_features, NUM_CLASSES)
        self.inputs = ImageInput((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop_padding=4, hflip=True).to(device)
        self.model = net.to(device).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(self.inputs(batch["image"]))
        loss = nn.functional.cross_entropy(logits, batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def batches(loader: BatchLoader, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    epoch = 0
    while True:
        for batch in loader.epoch(epoch):
            yield move_batch(batch, device)
        epoch += 1


def steps_per_second(step: Callable[[dict[str, torch.Tensor]], torch.Tensor], source: Iterator, count: int,
                     device: torch.device) -> float:
    started = time.perf_counter()
    for _ in range(count):
        last = step(next(source))
    float(last)  # one device sync at the end, as a training loop that logs rarely has
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plugins = Plugins(entry_points=[], extra_plugins=[("transmodal-vision", vision_plugin), ("bench", BenchData())])

    trainers = {
        "trainer_fp32": trainer_for(args, plugins, "fp32", False),
        "trainer_bf16": trainer_for(args, plugins, "bf16", False),
        "trainer_fp32_channels_last": trainer_for(args, plugins, "fp32", True),
    }
    loader = trainers["trainer_fp32"].data.train
    hand = HandWritten(device)
    variants: dict[str, tuple[Callable, Iterator]] = {"hand_written_fp32": (hand.step, batches(loader, device))}
    for name, trainer in trainers.items():
        variants[name] = (lambda batch, t=trainer: t.train_step(batch)["loss"], batches(loader, device))

    for step, source in variants.values():  # warm-up: allocator, autocast caches, first-call dispatch
        steps_per_second(step, source, 2, device)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (step, source) in variants.items():
            rates[name].append(steps_per_second(step, source, args.steps, device))
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        print(f"{name:28s} {value:8.2f} steps/s  {value * args.batch_size:10.1f} images/s", flush=True)
    print(json.dumps({
        "benchmark": "vision_overhead",
        "device": str(device),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "ratio": round(median["trainer_fp32"] / median["hand_written_fp32"], 3),
        "bf16_speedup": round(median["trainer_bf16"] / median["trainer_fp32"], 3),
        "channels_last_speedup": round(median["trainer_fp32_channels_last"] / median["trainer_fp32"], 3),
        "steps_per_s": {name: round(value, 3) for name, value in median.items()},
    }))


if __name__ == "__main__":
    main()
