"""``transmodal rank``: candidates scored on synthetic-shapes without training, the ranking printed, mistakes
reported in one message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transmodal
import yaml
from conftest import tiny_experiment_dict
from pydantic import BaseModel, ConfigDict
from transmodal.cli import main
from transmodal.errors import ConfigError, DataError
from transmodal.plugins import Plugins
from transmodal.ranking import parse_candidates, rank

SMALL = ["--set", "data.dataset.train_size=160", "--set", "data.dataset.val_size=40", "--set",
         "data.dataset.target_train_size=0", "--set", "data.dataset.target_test_size=40"]


def write_config(tmp_path: Path, *overrides: str) -> Path:
    raw = tiny_experiment_dict(tmp_path, *overrides)
    raw["model"]["encoders"] = {"image": {"name": "small-cnn", "channels": [8, 16]}}
    raw["adaptation"] = [{"name": "finetune"}]
    path = tmp_path / "image.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_candidates_are_ranked(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = write_config(tmp_path)
    code = main(["rank", str(config), "--backbones", "small-cnn", "--candidate",
                 "narrow={name: small-cnn, channels: [4]}", *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert "split train (source domain): 160 labelled samples, 9 classes, modality image" in lines[0]
    table = "\n".join(lines)
    assert "LogME" in table and "LEEP" in table and "H-score" in table
    rows = [line.split() for line in lines[3:]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert {row[1] for row in rows} == {"small-cnn", "narrow"}
    assert "[1/2] small-cnn" in captured.err and "[2/2] narrow" in captured.err  # progress on stderr

    assert main(["rank", str(config), "--backbones", "small-cnn", "--candidate",
                 "narrow={name: small-cnn, channels: [4]}", *SMALL, "--json", "--sort-by", "hscore"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "train" and report["domain"] == "source" and report["samples"] == 160
    assert report["sort_by"] == "hscore"
    scored = report["candidates"]
    assert [c["ranks"]["hscore"] for c in scored] == [1, 2]
    assert scored[0]["scores"]["hscore"] >= scored[1]["scores"]["hscore"]
    dims = {c["label"]: c["feature_dim"] for c in scored}
    assert dims == {"small-cnn": 64, "narrow": 4}
    assert all(c["leep_source"] == "gmm" and c["scores"]["leep"] <= 0 for c in scored)


def test_the_test_split_is_scored_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = write_config(tmp_path)
    assert main(["rank", str(config), "--backbones", "small-cnn", *SMALL, "--split", "target/test", "--json",
                 "--scores", "logme"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "target/test" and report["domain"] == "target" and report["samples"] == 40
    assert list(report["candidates"][0]["scores"]) == ["logme"]


def test_the_python_api_takes_one_name_where_a_list_belongs(tmp_path: Path):
    """``rank(config, "small-cnn", metrics="logme")``: one candidate and one score, not one per letter."""
    config = write_config(tmp_path, *[item for item in SMALL if item != "--set"])
    ranking = rank(config, "small-cnn", modality="image", metrics="logme", sort_by="logme")
    assert [c.label for c in ranking.candidates] == ["small-cnn"]
    assert list(ranking.candidates[0].scores) == ["logme"]


def test_a_trained_run_is_a_candidate_with_its_own_head(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = write_config(tmp_path, "output.name=source", "trainer.epochs=1")
    assert main(["train", str(config), "--quiet", *SMALL]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "runs" / "source"
    assert main(["rank", str(config), "--candidate", f"trained={run_dir}", "--backbones", "small-cnn", *SMALL,
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    trained = next(c for c in report["candidates"] if c["label"] == "trained")
    assert trained["leep_source"] == "head" and trained["feature_dim"] == 32  # the fusion's hidden width

    # A TorchScript bundle gives logits only: rank says so and what to give instead
    transmodal.load(run_dir).export(tmp_path / "scripted", "torchscript")
    assert main(["rank", str(config), "--candidate", f"scripted={tmp_path / 'scripted'}", *SMALL]) == 2
    assert "does not give (only its logits); give the run directory, or a bundle exported with --format safetensors" \
        in capsys.readouterr().err


def test_unknown_backbones_suggest_the_registry_names(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = write_config(tmp_path)
    assert main(["rank", str(config), "--backbones", "small-cnn,smal-cnn", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "candidate 'smal-cnn': Unknown encoder 'smal-cnn'. Did you mean: small-cnn?" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("arguments", "message"), [
    ([], "no candidates to rank"),
    (["--backbones", "small-cnn", "--candidate", "small-cnn"], "two candidates are labelled 'small-cnn'"),
    (["--backbones", "small-cnn,"], "has an empty name"),
    (["--candidate", "x={name: small-cnn, channels: [0]}"], "candidate 'x' (encoder 'small-cnn')"),
    (["--candidate", "x={channels: [8]}"], "a mapping with a name"),
    (["--candidate", "./no/such/run"], "there is no run directory no/such/run"),
    (["--backbones", "small-cnn", "--split", "unlabelled"], "no labels to score against"),
    (["--backbones", "small-cnn", "--split", "target/val"], "the labelled splits are: train, source/val, target/test"),
    (["--backbones", "small-cnn", "--modality", "audio"], "has no such modality"),
    (["--backbones", "small-cnn", "--scores", "logme,auc"], "choose among logme, leep, hscore"),
    (["--backbones", "small-cnn", "--scores", "leep", "--sort-by", "logme"], "choose one of the scores computed"),
    (["--backbones", "small-cnn", "--max-samples", "1"], "at least 2 samples"),
])
def test_bad_input_is_one_message_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, arguments: list[str],
                                             message: str):
    config = write_config(tmp_path)
    assert main(["rank", str(config), *arguments, *SMALL]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_multimodal_config_asks_which_modality(tmp_path: Path, capsys: pytest.CaptureFixture):
    raw = tiny_experiment_dict(tmp_path)  # image + caption
    path = tmp_path / "fused.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["rank", str(path), "--backbones", "small-cnn", *SMALL]) == 2
    assert "uses the modalities image, text; say which one the candidates encode with --modality" in (
        capsys.readouterr().err)
    assert main(["rank", str(path), "--backbones", "bow", "--modality", "text", *SMALL, "--scores", "logme"]) == 0
    assert "modality text" in capsys.readouterr().out


class _OneClassVectors:
    """A vector dataset whose training split holds one class and whose test split carries no labels."""

    @transmodal.hookimpl
    def register_datasets(self, register):
        class _NoParams(BaseModel):
            model_config = ConfigDict(extra="forbid")

        def build(params, seed):
            vectors = torch.randn(20, 4, generator=torch.Generator().manual_seed(seed))
            return transmodal.DatasetBundle(
                modalities={"x": "vector"}, classes=["a", "b"],
                train=transmodal.Split({"x": vectors, "label": torch.zeros(20, dtype=torch.int64)}),
                evaluation={"target/test": transmodal.Split({"x": vectors})})

        register("one-class-vectors", build, _NoParams, "One class only.")


@pytest.mark.parametrize(("split", "error", "message"), [
    ("train", DataError, "split train has samples of a single class (0)"),
    ("target/test", ConfigError, "split 'target/test' carries no labels"),
])
def test_data_without_two_labelled_classes_cannot_rank(tmp_path: Path, split: str, error: type, message: str):
    experiment = {"data": {"dataset": {"name": "one-class-vectors"}},  # rank takes a dict as transmodal.train does
                  "model": {"encoders": {"x": {"name": "mlp", "hidden": [8]}}}, "output": {"dir": str(tmp_path)}}
    plugins = Plugins(entry_points=[], extra_plugins=[("one-class", _OneClassVectors())])
    with pytest.raises(error, match=re.escape(message)):
        rank(experiment, ["mlp"], split=split, plugins=plugins)


def test_candidate_labels_and_specs():
    parsed = parse_candidates(["a,b"], ["wide={name: small-cnn, channels: [32]}", "{name: bow, out_dim: 8}",
                                        "mlp"])
    assert [(c.label, c.spec) for c in parsed] == [
        ("a", {"name": "a"}), ("b", {"name": "b"}), ("wide", {"name": "small-cnn", "channels": [32]}),
        ("bow", {"name": "bow", "out_dim": 8}), ("mlp", {"name": "mlp"})]
    with pytest.raises(ConfigError, match="nothing after the label"):
        parse_candidates([], ["wide="])
