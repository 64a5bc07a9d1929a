"""A model too large for memory is refused before allocation, saying how large it is and which part to shrink."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import tiny_experiment_dict
from transmodal import model_size
from transmodal.cli import main
from transmodal.errors import ConfigError


@pytest.fixture
def eight_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every machine the tests run on has 8 GiB free: the verdicts do not depend on the host."""
    monkeypatch.setattr(model_size, "available_memory", lambda device: 8 * model_size.GIB)


@pytest.mark.parametrize("override, part", [
    ("model.fusion.hidden=100000000", "Most of it is model.fusion (3,300,000,000 parameters)"),
    ("model.encoders.image.channels=[100000]", "Most of it is model.encoders.image (90,003,500,002 parameters)"),
])
def test_a_model_that_cannot_fit_is_refused_before_allocation(tmp_path: Path, capsys, eight_gib, override, part):
    config = tmp_path / "huge.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment_dict(tmp_path, override)))
    assert main(["train", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model: the model has ") and part in err
    assert "to train with adamw" in err and "of memory free on cpu" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing of the refused run is left


def test_a_model_that_fits_trains(tmp_path: Path, eight_gib):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment_dict(tmp_path, "trainer.epochs=1", "model.fusion.hidden=64")))
    assert main(["train", str(config), "--quiet"]) == 0


def test_the_optimizer_state_counts(monkeypatch: pytest.MonkeyPatch):
    # 1e10 parameters: 149 GiB to train with AdamW (two moment buffers), 112 GiB with SGD (one); 128 GiB free.
    monkeypatch.setattr(model_size, "available_memory", lambda device: 128 * model_size.GIB)

    def build() -> nn.Module:
        return nn.Linear(100_000, 100_000, bias=False, device="meta")  # never allocated, even when it "fits"

    with pytest.raises(ConfigError, match="149.0 GiB to train with adamw"):
        model_size.build_if_it_fits(build, lambda model: {"model.head": model}, torch.device("cpu"), "adamw")
    assert model_size.build_if_it_fits(build, lambda model: {"model.head": model}, torch.device("cpu"), "sgd")
