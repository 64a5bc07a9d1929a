"""Adaptation strategies in training: alignment helps on a clear domain shift, and schedules survive a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import transmodal
from conftest import interrupt_training_at
from transmodal.config import parse_experiment
from transmodal.data import DatasetBundle, Split
from transmodal.errors import ConfigError
from transmodal.plugins import Plugins, reset_plugins
from transmodal.run import resume


class ShiftedBlobsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _blobs(size: int, seed: int, target: bool) -> Split:
    """Four classes; features 0-1: Gaussian blobs around the class's direction (the real signal); features 2-3:
    in the source a cleaner copy of that direction (a shortcut), in the target noise around the origin."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(size) % 4
    angles = labels.float() * math.pi / 2
    directions = torch.stack([angles.cos(), angles.sin()], dim=1)
    signal = 2.0 * directions + 0.8 * torch.randn(size, 2, generator=generator)
    noise = 0.3 * torch.randn(size, 2, generator=generator)
    shortcut = noise if target else directions + noise
    return Split({"x": torch.cat([signal, shortcut], dim=1), "label": labels})


def build_shifted_blobs(params: ShiftedBlobsParams, seed: int) -> DatasetBundle:
    return DatasetBundle(
        modalities={"x": "vector"},
        classes=["east", "north", "west", "south"],
        train=_blobs(512, 1, target=False),
        evaluation={"source/val": _blobs(256, 2, target=False), "target/test": _blobs(512, 4, target=True)},
        unlabelled=_blobs(512, 3, target=True),
    )


class ShiftedBlobsPlugin:
    @transmodal.hookimpl
    def register_datasets(self, register):
        register("shifted-blobs", build_shifted_blobs, ShiftedBlobsParams, "Two-domain Gaussian blobs.")


@pytest.fixture
def blobs(tmp_path: Path):
    """``blobs(adaptation, **trainer)``: an experiment on the shifted blobs with the core's mlp encoder."""
    plugins = Plugins(entry_points=[], extra_plugins=[("shifted-blobs-test", ShiftedBlobsPlugin())])
    reset_plugins(plugins)
    count = iter(range(1000))

    def make(adaptation: list[dict[str, Any]], **trainer: Any) -> transmodal.Experiment:
        return parse_experiment({
            "name": "blobs",
            "data": {"dataset": {"name": "shifted-blobs"}},
            "model": {"encoders": {"x": {"name": "mlp", "hidden": [32, 32]}}, "fusion": {"name": "concat", "hidden": 32}},
            "adaptation": adaptation,
            "optimizer": {"lr": 0.01},
            "trainer": {"epochs": 10, "batch_size": 64, "eval_batch_size": 512, "num_threads": 1, **trainer},
            "output": {"dir": str(tmp_path / "runs"), "name": f"run{next(count)}"},
        })

    return make


def target_accuracy(summary: dict[str, Any]) -> float:
    return summary["final"]["target/test"]["accuracy"]


def test_each_alignment_strategy_beats_source_only_on_shifted_blobs(blobs):
    source_only = target_accuracy(transmodal.train(blobs([{"name": "finetune"}]), quiet=True)[0])
    assert source_only < 0.85  # the shortcut misleads the source-only model on the target
    results = {}
    # CORAL divides by 4 d^2 (d = 32 here) and linear MMD only matches means: both need a larger weight.
    for adaptation in ({"name": "cdan"}, {"name": "cdan", "entropy": True}, {"name": "mmd"},
                       {"name": "mmd", "kernel": "linear", "weight": 3.0}, {"name": "coral", "weight": 30.0},
                       {"name": "entropy-min"}, {"name": "pseudo-label"}):
        summary, _ = transmodal.train(blobs([adaptation]), quiet=True)
        results[json.dumps(adaptation)] = target_accuracy(summary)
    assert all(accuracy >= source_only + 0.02 for accuracy in results.values()), (source_only, results)


def test_alignment_needs_target_data(blobs, tmp_path: Path):
    class NoTarget:
        @transmodal.hookimpl
        def register_datasets(self, register):
            def build(params, seed):
                bundle = build_shifted_blobs(params, seed)
                bundle.unlabelled = None
                return bundle
            register("source-only-blobs", build, ShiftedBlobsParams, "Blobs without target data.")

    reset_plugins(Plugins(entry_points=[], extra_plugins=[("no-target", NoTarget())]))
    experiment = blobs([{"name": "mmd"}]).model_copy(update={"data": parse_experiment(
        {"data": {"dataset": {"name": "source-only-blobs"}}}).data})
    with pytest.raises(ConfigError, match="strategy 'mmd' trains on unlabelled target data"):
        transmodal.train(experiment, quiet=True)


class _FeatureNormPenalty(transmodal.Strategy):
    """A plugin's strategy that, as a third party's might, sets no ``name``."""

    def loss_terms(self, step):
        norm = step.source_output.features.pow(2).mean()
        step.metrics["norm"] = norm.detach()
        return {"norm": 0.01 * norm}


def test_each_strategy_keeps_its_own_loss_however_it_is_named(blobs):
    class Unnamed:
        @transmodal.hookimpl
        def register_strategies(self, register):
            register("feature-norm", lambda params: _FeatureNormPenalty(), description="Penalise feature norms.")

    plugins = Plugins(entry_points=[], extra_plugins=[("shifted-blobs-test", ShiftedBlobsPlugin()),
                                                      ("unnamed", Unnamed())])
    reset_plugins(plugins)
    adaptation = [{"name": "feature-norm"}, {"name": "feature-norm"}, {"name": "mmd"},
                  {"name": "mmd", "kernel": "linear"}]
    _, run_dir = transmodal.train(blobs(adaptation, epochs=1), quiet=True)
    train = read_metrics(run_dir)[-1]["train"]
    # Listed twice, mmd's second loss no longer replaces its first: both train and both are logged.
    assert {"loss/feature-norm.norm", "loss/feature-norm-2.norm", "loss/mmd.mmd", "loss/mmd-2.mmd"} <= set(train)
    assert train["loss/mmd.mmd"] != train["loss/mmd-2.mmd"]
    # The values they only report are logged under each one's name too, whether or not it writes the name itself
    assert {"metric/feature-norm.norm", "metric/feature-norm-2.norm", "metric/mmd.constant_units",
            "metric/mmd-2.constant_units"} <= set(train)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k != "seconds"} for record in records]


def stop_and_resume(
    make, monkeypatch: pytest.MonkeyPatch, stop_at_step: int, steps_per_epoch: int
) -> tuple[Path, Path]:
    """Train ``make('full')`` to the end; train ``make('stopped')`` until ``stop_at_step``, then resume it."""
    _, full_dir = transmodal.train(make("full"), quiet=True)
    original_step = interrupt_training_at(monkeypatch, stop_at_step)
    with pytest.raises(KeyboardInterrupt):
        transmodal.train(make("stopped"), quiet=True)
    monkeypatch.setattr(transmodal.Trainer, "train_step", original_step)
    stopped_dir = full_dir.parent / "stopped"
    epochs_done = stop_at_step // steps_per_epoch
    assert [record["epoch"] for record in read_metrics(stopped_dir)] == list(range(1, epochs_done + 1))
    resume(stopped_dir, quiet=True)
    return full_dir, stopped_dir


def test_a_run_stopped_mid_schedule_resumes_exactly(tiny, monkeypatch: pytest.MonkeyPatch):
    # Stopped in the middle of epoch 2 of 3 (8 steps each): the gradual unfreezing has opened 3 of 6 levels, the
    # CDAN weight is on its ramp, pseudo-labels come from a mean teacher, L2-SP pulls toward the first weights,
    # and AdaBN swaps BatchNorm statistics for every evaluation.
    adaptation = (
        "adaptation=[{name: gradual-unfreeze, unit: step, every: 5}, {name: layerwise-lr, decay: 0.7},"
        " {name: cdan, warmup: 0.1, ramp: 0.6, entropy: true}, {name: pseudo-label, threshold: 0.05, ema: 0.8},"
        " {name: l2-sp, alpha: 0.1}, {name: adabn}]"
    )
    full_dir, stopped_dir = stop_and_resume(
        lambda name: tiny("trainer.epochs=3", adaptation, f"output.name={name}"), monkeypatch,
        stop_at_step=8 + 3, steps_per_epoch=8,
    )
    full = read_metrics(full_dir)
    assert read_metrics(stopped_dir) == full
    assert {"loss/cdan.domain", "loss/pseudo-label.pseudo", "loss/l2-sp.sp"} <= set(full[-1]["train"])
    assert full[-1]["train"]["loss/pseudo-label.pseudo"] > 0
    assert 0 < full[-1]["train"]["metric/pseudo-label.used"] <= 1  # the fraction of target samples labelled ...
    terms = sum(value for name, value in full[-1]["train"].items() if name.startswith("loss/"))
    assert full[-1]["train"]["loss"] == pytest.approx(terms, rel=1e-5)  # ... is logged, never added to the loss
    assert json.loads((stopped_dir / "summary.json").read_text())["final"] == \
        json.loads((full_dir / "summary.json").read_text())["final"]


def test_lp_ft_and_alignment_resume_exactly(blobs, monkeypatch: pytest.MonkeyPatch):
    adaptation = [{"name": "lp-ft", "probe_epochs": 2}, {"name": "mmd", "warmup": 0.3, "ramp": 0.5},
                  {"name": "entropy-min", "ramp": 1.0, "ramp_shape": "sigmoid"}]
    full_dir, stopped_dir = stop_and_resume(
        lambda name: blobs(adaptation, epochs=4).model_copy(update={"output": blobs([]).output.model_copy(
            update={"name": name})}),
        monkeypatch, stop_at_step=2 * 8 + 5, steps_per_epoch=8,  # during the first fine-tuning epoch
    )
    assert read_metrics(stopped_dir) == read_metrics(full_dir)
