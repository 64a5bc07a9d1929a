"""The training engine: run directories, determinism, exact resume, checkpoints, metrics, precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import transmodal
from conftest import interrupt_training_at
from transmodal.checkpoint import load_checkpoint, save_checkpoint
from transmodal.config import parse_experiment
from transmodal.data import DatasetBundle, Split
from transmodal.errors import CheckpointError, ConfigError, RunDirectoryError
from transmodal.experiment import assemble
from transmodal.metrics import ClassificationMeter
from transmodal.plugins import Plugins
from transmodal.run import evaluate_run, resume


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in records]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_its_directory(tiny):
    summary, run_dir = transmodal.train(tiny(), quiet=True)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "tokenizers" / "text.json").is_file()
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert set(record["train"]) >= {"loss", "loss/task", "loss/dann.domain"}
        for split in ("source/val", "target/test"):
            assert set(record[split]) >= {"loss", "accuracy", "macro_f1"}
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["selected_by"] == "source-val (source/val accuracy)"
    assert on_disk["final"]["target/test"].items() >= records[-1]["target/test"].items()  # and per class
    assert "target test labels" in on_disk["oracle"]["note"]
    assert not list(run_dir.rglob("*.tmp"))


def test_summary_keeps_the_final_evaluation_per_class(tiny):
    _, run_dir = transmodal.train(tiny(), quiet=True)
    classes = json.loads((run_dir / "model.json").read_text())["classes"]
    last = read_metrics(run_dir)[-1]
    for split in ("source/val", "target/test"):
        final = json.loads((run_dir / "summary.json").read_text())["final"][split]
        assert list(final["per_class"]) == classes
        assert sum(entry["support"] for entry in final["per_class"].values()) == final["samples"] == 128
        confusion = final["confusion"]
        assert len(confusion) == len(classes) and all(len(row) == len(classes) for row in confusion)
        assert sum(map(sum, confusion)) == final["samples"]
        correct = sum(confusion[i][i] for i in range(len(classes)))
        assert correct / final["samples"] == pytest.approx(final["accuracy"])
        assert "per_class" not in last[split] and "confusion" not in last[split]  # metrics.jsonl stays small


def test_same_seed_same_metrics_other_seed_other_metrics(tiny):
    first, first_dir = transmodal.train(tiny(), quiet=True)
    second, second_dir = transmodal.train(tiny(), quiet=True)
    third, third_dir = transmodal.train(tiny("trainer.seed=1"), quiet=True)
    assert without_timing(read_metrics(first_dir)) == without_timing(read_metrics(second_dir))
    assert without_timing(read_metrics(first_dir)) != without_timing(read_metrics(third_dir))


def test_resumed_run_ends_like_an_uninterrupted_one(tiny, monkeypatch: pytest.MonkeyPatch):
    _, full_dir = transmodal.train(tiny("trainer.epochs=3", "output.name=full"), quiet=True)

    # Interrupt the second run in the middle of its second epoch, as Ctrl-C would.
    original_step = transmodal.Trainer.train_step
    steps_per_epoch = 256 // 32

    def interrupted_step(self, source, target=None):
        if self.step == steps_per_epoch + 3:
            raise KeyboardInterrupt
        return original_step(self, source, target)

    monkeypatch.setattr(transmodal.Trainer, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        transmodal.train(tiny("trainer.epochs=3", "output.name=stopped"), quiet=True)
    monkeypatch.setattr(transmodal.Trainer, "train_step", original_step)
    stopped_dir = full_dir.parent / "stopped"
    assert [r["epoch"] for r in read_metrics(stopped_dir)] == [1]

    resume(stopped_dir, quiet=True)
    assert without_timing(read_metrics(stopped_dir)) == without_timing(read_metrics(full_dir))
    assert json.loads((stopped_dir / "summary.json").read_text())["final"] == \
        json.loads((full_dir / "summary.json").read_text())["final"]
    resumed_weights = load_checkpoint(stopped_dir / "checkpoints" / "last.pt")["model"]
    uninterrupted_weights = load_checkpoint(full_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(resumed_weights[k], uninterrupted_weights[k]) for k in uninterrupted_weights)


def test_resuming_a_finished_run_changes_nothing(tiny):
    summary, run_dir = transmodal.train(tiny("trainer.epochs=1"), quiet=True)
    assert resume(run_dir, quiet=True)["final"] == summary["final"]
    assert len(read_metrics(run_dir)) == 1


def test_evaluate_a_saved_run_and_drop_a_modality(tiny):
    summary, run_dir = transmodal.train(tiny(), quiet=True)
    metrics, header = evaluate_run(run_dir)
    assert header["selected_by"] == "source-val (source/val accuracy)"
    assert metrics == summary["best"]
    without_text, _ = evaluate_run(run_dir, drop_modalities=("text",))
    assert without_text["source/val"]["accuracy"] != metrics["source/val"]["accuracy"]
    with pytest.raises(CheckpointError, match="modalities are image, text"):
        evaluate_run(run_dir, drop_modalities=("audio",))
    with pytest.raises(ConfigError, match="dropping every modality .* leaves the model no input"):
        evaluate_run(run_dir, drop_modalities=("image", "text"))


def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"weights": torch.ones(3)}, path)

    def failing_save(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="disk full.*the previous checkpoint is unchanged"):
        save_checkpoint({"weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["weights"], torch.ones(3))  # the old one is intact
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


class Custom:
    """Any class: unpickling it would run code, which weights_only loading refuses."""


def test_checkpoints_load_with_weights_only(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Custom()}, path)
    with pytest.raises(CheckpointError, match="not a transmodal checkpoint and must not be trusted"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_existing_run_directory_is_not_overwritten(tiny):
    transmodal.train(tiny("trainer.epochs=1", "output.name=taken"), quiet=True)
    with pytest.raises(RunDirectoryError, match="--resume"):
        transmodal.train(tiny("trainer.epochs=1", "output.name=taken"), quiet=True)


def test_a_run_dir_given_to_train_must_be_new_or_empty(tiny, tmp_path: Path):
    _, finished = transmodal.train(tiny("trainer.epochs=1"), quiet=True)
    before = {path: path.read_bytes() for path in finished.rglob("*") if path.is_file()}
    for taken in (finished, finished.parent, finished / "config.yaml"):
        with pytest.raises(RunDirectoryError, match="is not an empty folder"):
            transmodal.train(tiny("trainer.epochs=1"), quiet=True, run_dir=taken)
    assert {path: path.read_bytes() for path in finished.rglob("*") if path.is_file()} == before
    (tmp_path / "empty").mkdir()
    for chosen in (tmp_path / "empty", str(tmp_path / "new" / "run")):  # a str is a path too
        _, run_dir = transmodal.train(tiny("trainer.epochs=1"), quiet=True, run_dir=chosen)
        assert run_dir == Path(chosen) and (run_dir / "summary.json").is_file()


def test_a_run_starts_from_another_runs_weights_and_tokenizers(tiny, tmp_path: Path):
    from transmodal.initial_weights import read_initial_weights

    _, first = transmodal.train(tiny("trainer.epochs=1", "output.name=first"), quiet=True)
    # Another vocabulary would be fitted (min_freq 2); the first run's tokenizer is used so its embeddings fit.
    second = tiny(f"model.init_from={first}", "data.tokenizer={name: word, min_freq: 2}", "output.name=second")
    initial = read_initial_weights(str(first))
    assembled = assemble(second, tokenizer_states=initial.tokenizer_states)
    initial.load_into(assembled.model, assembled.data.bundle.classes)
    best = load_checkpoint(first / "checkpoints" / "best.pt")
    assert all(torch.equal(tensor, best["model"][name]) for name, tensor in assembled.model.state_dict().items())
    trainer = transmodal.Trainer(assembled, quiet=True)
    initial.load_target_statistics(trainer.target_statistics)  # per-domain BatchNorm: the target's, too
    saved = best["target_batchnorm"]
    assert all(torch.equal(buffers[name], saved[i][name]) for i, buffers in
               enumerate(trainer.target_statistics.state_dict()) for name in buffers)
    _, run_dir = transmodal.train(second, quiet=True)
    assert (run_dir / "tokenizers" / "text.json").read_text() == (first / "tokenizers" / "text.json").read_text()
    with pytest.raises(CheckpointError, match="was trained on other classes than this run's data gives"):
        initial.load_into(assembled.model, ["angry circle", "calm circle"])


@pytest.mark.parametrize("overrides, error, message", [
    (["model.init_from={tmp}/nowhere"], ConfigError, "model.init_from: no checkpoints/best.pt in"),
    (["model.init_from={first}", "model.fusion.hidden=16"], CheckpointError, "does not fit this model"),
])
def test_init_from_a_run_that_does_not_fit_is_refused_before_a_run_directory(tiny, tmp_path: Path, overrides,
                                                                             error, message):
    first = tmp_path / "runs" / "first"
    if not first.exists():
        transmodal.train(tiny("trainer.epochs=1", "output.name=first"), quiet=True)
    experiment = tiny(*[o.format(tmp=tmp_path, first=first) for o in overrides], "output.name=second")
    with pytest.raises(error, match=message):
        transmodal.train(experiment, quiet=True)
    assert not (tmp_path / "runs" / "second").exists()


def test_config_errors_found_while_assembling_leave_no_run_directory(tiny, tmp_path: Path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        transmodal.train(tiny("trainer.precision=fp16", "trainer.device=cpu"), quiet=True)
    with pytest.raises(ConfigError, match="dataset 'synthetic-shapes' has no modality \\['audio'\\]"):
        transmodal.train(tiny("model.encoders.audio={name: mlp}"), quiet=True)
    with pytest.raises(ConfigError, match="'dirt-t' refines a trained model, and without model.init_from"):
        transmodal.train(tiny("adaptation=[{name: dirt-t}]"), quiet=True)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_dann_without_target_data_is_rejected_before_training(tiny):
    with pytest.raises(ConfigError, match="provides no target domain"):
        transmodal.train(tiny("data.dataset.target_train_size=0"), quiet=True)


def test_bf16_autocast_trains_on_cpu(tiny):
    summary, _ = transmodal.train(tiny("trainer.precision=bf16", "trainer.epochs=1"), quiet=True)
    assert 0.0 <= summary["final"]["source/val"]["accuracy"] <= 1.0
    assert summary["final"]["source/val"]["loss"] == pytest.approx(summary["final"]["source/val"]["loss"])  # not NaN


def test_meter_matches_hand_computed_accuracy_and_macro_f1():
    meter = ClassificationMeter(3, torch.device("cpu"))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 1, 1, 1, 2, 0])
    meter.update(torch.nn.functional.one_hot(predictions, 3).float() * 10, labels)
    result = meter.compute()
    assert result["accuracy"] == pytest.approx(4 / 6)
    # per class F1: class 0 p=1/2 r=1/2 -> .5; class 1 p=2/3 r=1 -> .8; class 2 p=1 r=1/2 -> 2/3
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert result["samples"] == 6



class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _DefinitionsToSentences:
    """Two text domains whose vocabularies differ: the target's verbs never occur in the labelled source."""

    @transmodal.hookimpl
    def register_datasets(self, register):
        def build(params, seed):
            def split(texts: list[str], labelled: bool) -> Split:
                return Split({"text": texts, "label": torch.arange(len(texts)) % 2} if labelled else {"text": texts})

            return DatasetBundle(
                modalities={"text": "text"}, classes=["eat", "walk"],
                train=split(["take in food", "move on foot"] * 4, True),
                evaluation={"source/val": split(["take in food", "move on foot"], True)},
                unlabelled=split(["she devoured the pie", "they strolled home"], False),
            )
        register("definitions-to-sentences", build, _NoParams, "Two text domains.")


@pytest.mark.parametrize("fit_on, target_words_known", [("train", False), ("train+unlabelled", True)])
def test_tokenizer_learns_target_words_only_when_asked(tmp_path: Path, fit_on: str, target_words_known: bool):
    experiment = parse_experiment({
        "data": {"dataset": {"name": "definitions-to-sentences"}, "tokenizer_fit": fit_on},
        "model": {"encoders": {"text": {"name": "bow", "embedding_dim": 8}}},
        "output": {"dir": str(tmp_path)},
    })
    plugins = Plugins(entry_points=[], extra_plugins=[("text-domains", _DefinitionsToSentences())])
    vocabulary = assemble(experiment, plugins).data.tokenizers["text"].vocabulary()
    assert {"food", "foot"} <= set(vocabulary)
    target_words = {"devoured", "strolled"} & set(vocabulary)
    assert target_words == ({"devoured", "strolled"} if target_words_known else set())


@pytest.mark.parametrize("stop_at_step", [3, 8 + 5])  # inside the first epoch; inside the second, after its end
def test_run_resumed_from_a_step_checkpoint_ends_bit_identical(tiny, monkeypatch: pytest.MonkeyPatch,
                                                               stop_at_step: int):
    _, full_dir = transmodal.train(tiny("output.name=full"), quiet=True)
    original_step = interrupt_training_at(monkeypatch, stop_at_step)
    with pytest.raises(KeyboardInterrupt):
        transmodal.train(tiny("output.name=stopped", "trainer.checkpoint_every=2"), quiet=True)
    monkeypatch.setattr(transmodal.Trainer, "train_step", original_step)
    stopped_dir = full_dir.parent / "stopped"
    saved = load_checkpoint(stopped_dir / "checkpoints" / "last.pt")
    assert saved["step"] == stop_at_step - 1 and saved["position"]["batch"] == (stop_at_step - 1) % 8

    resume(stopped_dir, quiet=True)
    # The epoch records (train losses summed across the stop included) come out once each and exactly equal.
    assert without_timing(read_metrics(stopped_dir)) == without_timing(read_metrics(full_dir))
    resumed = load_checkpoint(stopped_dir / "checkpoints" / "last.pt")
    uninterrupted = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    assert resumed["position"] is None and resumed["step"] == uninterrupted["step"] == 16
    assert all(torch.equal(resumed["model"][k], uninterrupted["model"][k]) for k in uninterrupted["model"])
    assert torch.equal(resumed["rng"]["torch"], uninterrupted["rng"]["torch"])


def test_step_checkpoints_by_the_clock(tiny, monkeypatch: pytest.MonkeyPatch):
    """checkpoint_every_minutes: looked at every log_every steps (a moment is always long enough here)."""
    original_step = interrupt_training_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        transmodal.train(tiny("output.name=clock", "trainer.checkpoint_every_minutes=1e-9", "trainer.log_every=3"),
                         quiet=True)
    monkeypatch.setattr(transmodal.Trainer, "train_step", original_step)
    assert load_checkpoint(tiny().output.dir / "clock" / "checkpoints" / "last.pt")["step"] == 6


def test_early_stopping_stops_once_the_validator_stops_improving(tiny, monkeypatch):
    from transmodal.validator import MetricValidator

    scores = iter([0.5, 0.7, 0.7, 0.6, 0.9, 0.9])  # best at epoch 2; epochs 3 and 4 do not beat it
    monkeypatch.setattr(MetricValidator, "score", lambda self, context: next(scores))
    monkeypatch.setattr(MetricValidator, "tiebreak", lambda self, context: 0.0)  # a tie keeps the first epoch
    experiment = tiny("trainer.epochs=6", "adaptation=[{name: finetune}]", "trainer.early_stopping={patience: 2}",
                      "trainer.score_validators=false")
    summary, run_dir = transmodal.train(experiment, quiet=True)
    assert summary["epochs"] == 4 and summary["best_epoch"] == 2
    assert summary["stopped_early"] == {"epoch": 4, "patience": 2}
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    # Resuming a run that stopped early trains nothing more.
    assert transmodal.resume(run_dir, quiet=True)["epochs"] == 4


def test_without_early_stopping_every_epoch_trains(tiny, monkeypatch):
    from transmodal.validator import MetricValidator

    monkeypatch.setattr(MetricValidator, "score", lambda self, context: 0.5)  # never improves after epoch 1
    summary, _ = transmodal.train(tiny("trainer.epochs=3", "adaptation=[{name: finetune}]",
                                       "trainer.score_validators=false"), quiet=True)
    assert summary["epochs"] == 3 and "stopped_early" not in summary


def test_compile_compiles_the_model_in_place_and_keeps_its_parameter_names(tiny):
    """trainer.compile uses nn.Module.compile, so checkpoints keep their keys (torch.compile's wrapper would
    prefix them with _orig_mod). Compiling itself happens at the first step: too slow on a CPU for this suite;
    bench/gpu.py measures it on a GPU."""
    plain = transmodal.Trainer(transmodal.assemble(tiny()), quiet=True)
    compiled = transmodal.Trainer(transmodal.assemble(tiny("trainer.compile=true")), quiet=True)
    assert compiled.model._compiled_call_impl is not None and plain.model._compiled_call_impl is None
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())
