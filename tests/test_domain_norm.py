"""Per-domain BatchNorm: each domain normalised by its own statistics, in training and in evaluation."""

from __future__ import annotations

import torch
from torch import nn

import transmodal
from transmodal.domain_norm import TargetStatistics, batchnorm_layers
from transmodal.experiment import assemble


def statistics(model: nn.Module) -> list[torch.Tensor]:
    return [torch.cat([layer.running_mean, layer.running_var]).clone() for layer in batchnorm_layers(model)]


def test_a_target_pass_updates_the_targets_statistics_only_and_backward_still_works():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2))
    norm = model[0]
    target_statistics = TargetStatistics(model)  # starts from the source's (zero mean, unit variance)
    source, target = torch.randn(16, 3), torch.randn(16, 3) * 5 + 10
    source_out = model(source)
    with target_statistics.active():
        target_out = model(target)
        assert torch.allclose(norm.running_mean, 0.1 * target.mean(0), atol=1e-6)  # momentum 0.1 from zero
    (source_out.sum() + target_out.sum()).backward()  # the swap kept autograd's record valid
    assert torch.allclose(norm.running_mean, 0.1 * source.mean(0), atol=1e-6)  # the source's saw only the source
    with target_statistics.active():
        assert torch.allclose(norm.running_mean, 0.1 * target.mean(0), atol=1e-6)  # kept between passes
    assert len(batchnorm_layers(model)) == 1


def test_per_domain_runs_keep_target_statistics_in_checkpoints_and_evaluate_each_domain_with_its_own(tiny):
    experiment = tiny()  # default-like: dann on synthetic-shapes, per-domain BatchNorm by default
    assert experiment.trainer.batchnorm == "per-domain"
    summary, run_dir = transmodal.train(experiment, quiet=True)
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert len(state["target_batchnorm"]) == len(batchnorm_layers(assemble(experiment).model))
    metrics, _ = transmodal.evaluate_run(run_dir, "best")
    for split in ("source/val", "target/test"):
        assert metrics[split]["accuracy"] == summary["best"][split]["accuracy"]

    # Joint BatchNorm, same seed: the target is normalised by the mixture, so its numbers differ.
    joint, _ = transmodal.train(tiny("trainer.batchnorm=joint", "output.name=joint"), quiet=True)
    assert joint["final"]["target/test"] != summary["final"]["target/test"]


def test_validators_see_source_batches_with_source_statistics_and_target_batches_with_the_targets(
        tiny, monkeypatch):
    seen: list[tuple[bool, bool]] = []  # (a target batch, the target's statistics in the model)
    original = transmodal.Trainer._batches

    def watched(self, loader):
        for batch in original(self, loader):
            first = batchnorm_layers(self.model)[0]
            seen.append((loader is self.data.unlabelled,
                         first.running_mean is self.target_statistics.buffers[0]["running_mean"]))
            yield batch

    monkeypatch.setattr(transmodal.Trainer, "_batches", watched)
    transmodal.train(tiny("validator={name: dev}"), quiet=True)
    source = [installed for is_target, installed in seen if not is_target]
    target = [installed for is_target, installed in seen if is_target]
    assert source and not any(source)
    assert target and all(target)
