"""trainer.ema_decay: the averaged weights are what is evaluated, selected, saved as best.pt and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import transmodal
from conftest import interrupt_training_at
from transmodal.checkpoint import load_checkpoint
from transmodal.errors import CheckpointError
from transmodal.run import evaluate_run, resume
from transmodal.weight_average import WeightAverage


def read_metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_average_follows_the_documented_decays_and_leaves_the_trained_weights_as_they_were():
    model = nn.BatchNorm1d(3)
    average = WeightAverage(0.9, model.state_dict)
    expected = model.weight.detach().clone()
    for step in range(30):
        with torch.no_grad():
            model.weight.add_(1.0)
            model.num_batches_tracked.add_(1)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * model.weight.detach()
        average.update()
    assert torch.allclose(average.average["weight"], expected)
    assert average.average["num_batches_tracked"].item() == 30  # integer buffers follow the model
    trained = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with average.applied():
        assert torch.allclose(model.weight, expected)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in trained.items())


def test_averaged_weights_saved_for_another_model_are_refused():
    average = WeightAverage(0.9, nn.Linear(2, 2).state_dict)
    other = WeightAverage(0.9, nn.BatchNorm1d(2).state_dict).state_dict()
    with pytest.raises(CheckpointError, match="averaged weights"):
        average.load_state_dict(other)


def test_best_pt_holds_the_averaged_weights_that_were_evaluated(tiny):
    summary, run_dir = transmodal.train(tiny("trainer.ema_decay=0.9", "adaptation=[{name: finetune}]"), quiet=True)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    weights = [name for name, tensor in last["model"].items() if tensor.is_floating_point()]
    assert all(not torch.equal(best["model"][name], last["model"][name]) for name in weights)
    assert set(last["weight_average"]["average"]) >= {f"model.{name}" for name in last["model"]}
    metrics, _ = evaluate_run(run_dir)  # best.pt, evaluated anew, gives what the run recorded for its epoch
    recorded = read_metrics(run_dir)[summary["best_epoch"] - 1]
    for split in ("source/val", "target/test"):
        assert metrics[split]["accuracy"] == recorded[split]["accuracy"]
        assert metrics[split]["loss"] == pytest.approx(recorded[split]["loss"], rel=1e-5)


def test_the_modules_of_strategies_saved_with_the_weights_are_averaged_with_them(tiny):
    _, run_dir = transmodal.train(tiny("trainer.ema_decay=0.9", "trainer.epochs=1",
                                       "adaptation=[{name: contrastive-alignment}]"), quiet=True)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")["strategy_weights"]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    [key] = best
    assert all(torch.equal(last["weight_average"]["average"][f"strategy.{key}.{name}"], tensor)
               for name, tensor in best[key].items())
    assert not all(torch.equal(last["strategy_weights"][key][name], tensor) for name, tensor in best[key].items())


def test_averaging_changes_what_is_evaluated(tiny):
    _, plain_dir = transmodal.train(tiny("adaptation=[{name: finetune}]", "output.name=plain"), quiet=True)
    _, averaged_dir = transmodal.train(tiny("adaptation=[{name: finetune}]", "output.name=averaged",
                                            "trainer.ema_decay=0.9"), quiet=True)
    plain, averaged = read_metrics(plain_dir), read_metrics(averaged_dir)
    assert [r["train"] for r in plain] == [r["train"] for r in averaged]  # training itself is untouched
    assert [r["source/val"]["loss"] for r in plain] != [r["source/val"]["loss"] for r in averaged]


def test_a_run_with_averaging_resumes_bit_identical(tiny, monkeypatch: pytest.MonkeyPatch):
    # dann: per-domain BatchNorm, so the target's statistics are averaged too
    _, full_dir = transmodal.train(tiny("output.name=full", "trainer.ema_decay=0.9"), quiet=True)
    original_step = interrupt_training_at(monkeypatch, 8 + 5)
    with pytest.raises(KeyboardInterrupt):
        transmodal.train(tiny("output.name=stopped", "trainer.ema_decay=0.9", "trainer.checkpoint_every=2"),
                         quiet=True)
    monkeypatch.setattr(transmodal.Trainer, "train_step", original_step)
    stopped_dir = full_dir.parent / "stopped"
    resume(stopped_dir, quiet=True)
    assert read_metrics(stopped_dir) == read_metrics(full_dir)
    for name in ("best.pt", "last.pt"):
        resumed = load_checkpoint(stopped_dir / "checkpoints" / name)
        uninterrupted = load_checkpoint(full_dir / "checkpoints" / name)
        assert all(torch.equal(resumed["model"][k], uninterrupted["model"][k]) for k in uninterrupted["model"])
        assert resumed["target_batchnorm"][0]["running_mean"].equal(uninterrupted["target_batchnorm"][0]["running_mean"])


def test_a_checkpoint_without_averaged_weights_cannot_resume_a_run_that_averages(tiny, monkeypatch):
    original_step = interrupt_training_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        transmodal.train(tiny("output.name=stopped", "trainer.checkpoint_every=2"), quiet=True)
    monkeypatch.setattr(transmodal.Trainer, "train_step", original_step)
    stopped_dir = tiny().output.dir / "stopped"
    config = stopped_dir / "config.yaml"
    config.write_text(config.read_text().replace("  ema_decay: null", "  ema_decay: 0.9"))
    with pytest.raises(CheckpointError, match="holds no averaged weights"):
        resume(stopped_dir, quiet=True)
