"""Shared fixtures: plugin state isolated per test, and tiny experiments that train in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from transmodal.config import Experiment, apply_overrides, default_experiment_dict, parse_experiment
from transmodal.plugins import reset_plugins


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' models are tiny: a second torch thread only adds synchronisation (and, on a busy machine,
    waits for a core), so the suite runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    """Each test loads plugins anew, with no plugin switch inherited from the environment."""
    for variable in ("TRANSMODAL_LOAD_PLUGINS", "TRANSMODAL_DISABLE_PLUGINS", "TRANSMODAL_STRICT_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    reset_plugins()
    yield
    reset_plugins()


TINY_DATA = {
    "name": "synthetic-shapes",
    "train_size": 256,
    "val_size": 128,
    "target_train_size": 256,
    "target_test_size": 128,
}


def tiny_experiment_dict(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    raw = default_experiment_dict()
    raw["data"] = {"dataset": dict(TINY_DATA)}
    raw["model"]["encoders"]["image"] = {"name": "small-cnn", "channels": [8, 16]}
    raw["model"]["encoders"]["text"] = {"name": "bow", "embedding_dim": 16}
    raw["model"]["fusion"] = {"name": "concat", "hidden": 32}
    raw["trainer"] = {"epochs": 2, "batch_size": 32, "eval_batch_size": 128, "num_threads": 1}
    raw["output"] = {"dir": str(tmp_path / "runs")}
    return apply_overrides(raw, list(overrides))


def exported_shapes_experiment(root: Path, adaptation: list[dict[str, Any]]) -> tuple[dict[str, Any], Path]:
    """synthetic-shapes written as PNG files + manifest.csv under ``root/data`` (a small split), and a 1-epoch
    image + caption experiment reading it through the ``manifest`` dataset; returns (experiment dict, data folder).
    Needs Pillow."""
    from transmodal.builtin.datasets import SyntheticShapesParams
    from transmodal.datasets.export import export_synthetic_shapes

    data = root / "data"
    export_synthetic_shapes(data, SyntheticShapesParams(train_size=96, val_size=40, target_train_size=32,
                                                        target_test_size=40))
    experiment = {
        "name": "manifest",
        "data": {"dataset": {"name": "manifest", "path": str(data / "manifest.csv"),
                             "modalities": {"image": {"kind": "image", "column": "path"},
                                            "text": {"kind": "text", "column": "caption"}},
                             "domain": {"column": "domain", "source": ["source"], "target": ["target"]},
                             "split": "split", "image_size": 32, "num_workers": 1}},
        "model": {"encoders": {"image": {"name": "small-cnn", "channels": [8, 16]},
                               "text": {"name": "bow", "embedding_dim": 16}},
                  "fusion": {"name": "concat", "hidden": 32}},
        "adaptation": adaptation,
        "trainer": {"epochs": 1, "batch_size": 32, "num_threads": 1, "device": "cpu"},
        "output": {"dir": str(root / "runs")},
    }
    return experiment, data


@pytest.fixture
def tiny(tmp_path: Path):
    """``tiny(*overrides)``: a small default-like experiment (image + caption, concat, DANN) in tmp_path."""

    def make(*overrides: str) -> Experiment:
        return parse_experiment(tiny_experiment_dict(tmp_path, *overrides))

    return make


def interrupt_training_at(monkeypatch: pytest.MonkeyPatch, stop_at_step: int) -> Any:
    """Make the trainer raise KeyboardInterrupt (Ctrl-C) when it reaches ``stop_at_step``; returns the original
    ``train_step`` so that a test can put it back."""
    import transmodal

    original_step = transmodal.Trainer.train_step

    def interrupted_step(self, source, target=None):
        if self.step == stop_at_step:
            raise KeyboardInterrupt
        return original_step(self, source, target)

    monkeypatch.setattr(transmodal.Trainer, "train_step", interrupted_step)
    return original_step


@pytest.fixture(autouse=True)
def _image_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Decoded images go to the test's own folder, never the user's cache."""
    monkeypatch.setenv("TRANSMODAL_CACHE_DIR", str(tmp_path / "image-cache"))
