"""The library entry point: ``transmodal.train`` takes an experiment in whichever form the user has it."""

from __future__ import annotations

import pytest
import yaml

import transmodal
from conftest import tiny_experiment_dict


def test_train_accepts_a_dict_or_a_path(tmp_path):
    raw = tiny_experiment_dict(tmp_path, "trainer.epochs=1", "adaptation=[{name: finetune}]")
    raw["model"]["fusion"] = {"hidden": 16}  # no name: the default fusion, as in a YAML file
    summary, _ = transmodal.train(raw, quiet=True)
    assert summary["epochs"] == 1 and raw["model"]["fusion"] == {"hidden": 16}  # the caller's dict is untouched
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    _, run_dir = transmodal.train(str(path), quiet=True)
    fusion = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["fusion"]
    assert (fusion["name"], fusion["hidden"]) == ("concat", 16)


def test_train_refuses_other_things_saying_what_it_takes(tmp_path):
    with pytest.raises(TypeError, match="an Experiment, a dict or the path of a YAML file"):
        transmodal.train(42)
    with pytest.raises(transmodal.ConfigError, match="Config file not found"):
        transmodal.train(tmp_path / "missing.yaml")
    with pytest.raises(transmodal.ConfigError, match="trainer.epochs"):
        transmodal.train({"trainer": {"epochs": 0}})
