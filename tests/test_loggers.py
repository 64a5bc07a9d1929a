"""output.loggers: step records (loss terms, learning rates, throughput) in JSONL, CSV and TensorBoard, appended
without duplicates when a run resumes."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

import transmodal
from conftest import interrupt_training_at
from transmodal.errors import ConfigError, RunDirectoryError
from transmodal.run import resume

STEPS_PER_EPOCH = 256 // 32


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_step_records_hold_loss_terms_learning_rate_and_throughput(tiny):
    summary, run_dir = transmodal.train(tiny("trainer.log_every=3", "output.loggers=[jsonl, csv]"), quiet=True)
    steps = jsonl(run_dir / "steps.jsonl")
    # Every 3 steps and at each epoch's last step (8 per epoch): steps 3, 6, 8, 11, 14, 16.
    assert [r["step"] for r in steps] == [3, 6, 8, 11, 14, 16]
    assert [r["steps"] for r in steps] == [3, 3, 2] * 2
    assert [r["epoch"] for r in steps] == [1, 1, 1, 2, 2, 2]
    for record in steps:
        assert {"loss", "loss/task", "loss/dann.domain", "lr", "samples_per_second"} <= set(record)
        assert record["samples_per_second"] > 0
        assert record["loss"] == pytest.approx(record["loss/task"] + record["loss/dann.domain"], rel=1e-5)
    assert steps[0]["lr"] > steps[-1]["lr"]  # the cosine schedule, read at each record
    # The steps' means, weighted by how many steps each covers, are the epoch's mean loss.
    epochs = jsonl(run_dir / "metrics.jsonl")
    for epoch in (1, 2):
        records = [r for r in steps if r["epoch"] == epoch]
        mean = sum(r["loss"] * r["steps"] for r in records) / STEPS_PER_EPOCH
        assert mean == pytest.approx(epochs[epoch - 1]["train"]["loss"], rel=1e-5)
    # CSV: the same records, nested keys joined with "/".
    assert [int(r["step"]) for r in csv_rows(run_dir / "steps.csv")] == [r["step"] for r in steps]
    rows = csv_rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["target/test/accuracy"]) == pytest.approx(epochs[1]["target/test"]["accuracy"])
    assert float(rows[1]["train/loss/dann.domain"]) == pytest.approx(epochs[1]["train"]["loss/dann.domain"])


def test_default_logs_steps_jsonl_only_and_none_turns_them_off(tiny):
    _, run_dir = transmodal.train(tiny("trainer.epochs=1"), quiet=True)
    assert (run_dir / "steps.jsonl").is_file() and not (run_dir / "steps.csv").exists()
    _, run_dir = transmodal.train(tiny("trainer.epochs=1", "output.loggers=[]"), quiet=True)
    assert not (run_dir / "steps.jsonl").exists() and (run_dir / "metrics.jsonl").is_file()


def test_a_logger_named_twice_or_unknown_is_refused(tiny):
    with pytest.raises(ConfigError, match="output.loggers"):
        tiny("output.loggers=[csv, csv]")
    with pytest.raises(ConfigError, match="output.loggers"):
        tiny("output.loggers=[wandb]")


def test_tensorboard_without_its_package_names_the_extra(tiny, monkeypatch: pytest.MonkeyPatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    experiment = tiny("output.loggers=[tensorboard]")
    with pytest.raises(ConfigError, match=r"transmodal\[tensorboard\]"):
        transmodal.train(experiment, quiet=True)
    assert not list((experiment.output.dir).glob("*/metrics.jsonl"))  # refused before training


@pytest.mark.parametrize("checkpoint_every", [None, 5])
def test_a_resumed_run_logs_each_step_once(tiny, monkeypatch: pytest.MonkeyPatch, checkpoint_every):
    """Stopped at step 11 (in epoch 2), after a record at step 10: resumed from the epoch's checkpoint (step 8) or a
    step checkpoint (step 10), the logs end with the same steps and epochs as a run that never stopped."""
    pytest.importorskip("tensorboard")
    settings = ["trainer.epochs=3", "trainer.log_every=2", "output.loggers=[jsonl, csv, tensorboard]"]
    if checkpoint_every:
        settings.append(f"trainer.checkpoint_every={checkpoint_every}")
    _, full_dir = transmodal.train(tiny(*settings, "output.name=full"), quiet=True)
    original = interrupt_training_at(monkeypatch, STEPS_PER_EPOCH + 3)
    with pytest.raises(KeyboardInterrupt):
        transmodal.train(tiny(*settings, "output.name=stopped"), quiet=True)
    monkeypatch.setattr(transmodal.Trainer, "train_step", original)
    stopped_dir = full_dir.parent / "stopped"
    assert jsonl(stopped_dir / "steps.jsonl")[-1]["step"] == STEPS_PER_EPOCH + 2
    resume(stopped_dir, quiet=True)

    expected = [r["step"] for r in jsonl(full_dir / "steps.jsonl")]
    assert [r["step"] for r in jsonl(stopped_dir / "steps.jsonl")] == expected
    assert [int(r["step"]) for r in csv_rows(stopped_dir / "steps.csv")] == expected
    assert [int(r["epoch"]) for r in csv_rows(stopped_dir / "metrics.csv")] == [1, 2, 3]
    # The losses agree with the uninterrupted run's where a record covers the same steps.
    for full, resumed in zip(jsonl(full_dir / "steps.jsonl"), jsonl(stopped_dir / "steps.jsonl")):
        if full["steps"] == resumed["steps"]:
            assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-5)
    scalars = tensorboard_scalars(stopped_dir)
    assert [step for step, _ in scalars["step/train/loss"]] == expected
    assert [step for step, _ in scalars["epoch/target/test/accuracy"]] == [8, 16, 24]
    full_scalars = tensorboard_scalars(full_dir)
    assert [v for _, v in scalars["epoch/target/test/accuracy"]] == \
        pytest.approx([v for _, v in full_scalars["epoch/target/test/accuracy"]])


def test_a_run_logged_to_tensorboard_still_evaluates_without_the_package(tiny, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("tensorboard")
    summary, run_dir = transmodal.train(tiny("trainer.epochs=1", "output.loggers=[tensorboard]"), quiet=True)
    assert list((run_dir / "tensorboard").iterdir())
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    from transmodal.run import evaluate_run

    metrics, _ = evaluate_run(run_dir)
    assert metrics["target/test"]["accuracy"] == summary["best"]["target/test"]["accuracy"]
    with pytest.raises(ConfigError, match=r"transmodal\[tensorboard\]"):
        resume(run_dir, quiet=True)


def test_a_log_folder_that_cannot_be_written_is_named_not_a_traceback(tiny, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("tensorboard")
    original_step = interrupt_training_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        transmodal.train(tiny("trainer.checkpoint_every=2", "output.loggers=[tensorboard]", "output.name=stopped"),
                         quiet=True)
    monkeypatch.setattr(transmodal.Trainer, "train_step", original_step)
    run_dir = Path(tiny().output.dir) / "stopped"
    shutil.rmtree(run_dir / "tensorboard")
    (run_dir / "tensorboard").write_text("a file where the event folder belongs")
    with pytest.raises(RunDirectoryError, match=r"output.loggers: tensorboard cannot write its logs in .*leave "
                                                 r"tensorboard out of output.loggers"):
        resume(run_dir, quiet=True)
