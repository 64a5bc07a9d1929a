"""Fusion earns its keep on synthetic-shapes: the class is (caption attribute x image shape), so each modality
alone can reach at most a third of the samples, and every operator must combine them to do better."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import transmodal
from transmodal.config import parse_experiment

try:
    import transmodal_attention
except ImportError:
    transmodal_attention = None

# Small widths, so that each operator trains in about a second on one thread.
OPERATORS: dict[str, dict[str, Any]] = {
    "concat": {},
    "mean": {"dim": 32},
    "gated": {"dim": 32},
    "bilinear": {"rank": 32, "dim": 32},
    "tensor": {"project": 8, "dim": 32},
    "low-rank-tensor": {"rank": 4, "dim": 32},
    "film": {"conditioning": "text"},
    "cross-attention": {"dim": 32, "heads": 2},
    "transformer": {"dim": 32, "heads": 2, "layers": 1, "feedforward": 64, "dropout": 0.0},
    "modality-attention": {"dim": 32, "hidden": 16},
}
ATTENTION = {"cross-attention", "transformer", "modality-attention"}


def experiment(
    encoders: tuple[str, ...], fusion: str, strategy: str, epochs: int, lr: float
) -> transmodal.Experiment:
    return parse_experiment({
        "data": {"dataset": {"name": "synthetic-shapes", "train_size": 1500, "val_size": 400,
                             "target_train_size": 0, "target_test_size": 100, "image_size": 16}},
        "model": {
            "encoders": {m: spec for m, spec in (("image", {"name": "small-cnn", "channels": [16, 32]}),
                                                 ("text", {"name": "bow", "embedding_dim": 16})) if m in encoders},
            "fusion": {"name": fusion, **OPERATORS[fusion]},
        },
        "adaptation": [{"name": strategy}],
        "optimizer": {"lr": lr},
        "trainer": {"epochs": epochs, "batch_size": 32, "eval_batch_size": 400, "num_threads": 1},
    })


def fit(experiment_: transmodal.Experiment, encoders_from: dict[str, transmodal.TransmodalModel] | None = None
        ) -> tuple[float, transmodal.TransmodalModel]:
    """Train (one thread, seeded, no run directory) and return source-val accuracy and the model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a second thread only waits on a busy machine
    try:
        torch.manual_seed(0)
        assembled = transmodal.assemble(experiment_)
        for modality, model in (encoders_from or {}).items():
            assembled.model.encoders[modality].load_state_dict(model.encoders[modality].state_dict())
        trainer = transmodal.Trainer(assembled, quiet=True)
        summary = trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return summary["final"]["source/val"]["accuracy"], trainer.model


@pytest.fixture(scope="module")
def unimodal() -> dict[str, tuple[float, transmodal.TransmodalModel]]:
    """One model per modality: the single-modality baselines, whose encoders the fusions then reuse."""
    return {
        "image": fit(experiment(("image",), "concat", "finetune", epochs=8, lr=3e-3)),
        "text": fit(experiment(("text",), "concat", "finetune", epochs=3, lr=1e-2)),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, id=n, marks=[pytest.mark.skipif(n in ATTENTION and transmodal_attention is None,
                                                     reason="transmodal-attention is not installed")])
     for n in OPERATORS],
)
def test_every_operator_beats_the_best_single_modality(name: str, unimodal) -> None:
    """Fusion and head train on the unimodal models' frozen encoders, so what is compared is the operator: the
    same features, fused, against each modality on its own (its encoder trained end to end)."""
    best_single = max(accuracy for accuracy, _ in unimodal.values())
    encoders = {modality: model for modality, (_, model) in unimodal.items()}
    accuracy, _ = fit(experiment(("image", "text"), name, "linear-probe", epochs=2, lr=1e-2), encoders)
    assert best_single < 0.45  # the bound above (a third, plus sampling noise) holds: the task needs both
    assert accuracy > best_single + 0.2, f"{name}: {accuracy:.3f} fused against {best_single:.3f} alone"


@pytest.mark.skipif(transmodal_attention is None, reason="transmodal-attention is not installed")
def test_attention_fusion_runs_on_image_tokens_and_without_the_caption(tmp_path) -> None:
    """The whole path through a run directory: tokens from the image encoder, modality dropout in training,
    a checkpoint saved and reloaded, and evaluation with the caption absent everywhere."""
    raw = experiment(("image", "text"), "cross-attention", "finetune", epochs=1, lr=3e-3).model_dump(mode="json")
    raw["data"]["dataset"].update(train_size=128, val_size=64, target_test_size=64)
    raw["model"]["encoders"]["image"]["tokens"] = True
    raw["model"]["modality_dropout"] = 0.3
    raw["output"] = {"dir": str(tmp_path), "name": "tokens"}
    threads = torch.get_num_threads()
    try:
        summary, run_dir = transmodal.train(parse_experiment(raw), quiet=True)
        without_caption, _ = transmodal.evaluate_run(run_dir, drop_modalities=("text",))
    finally:
        torch.set_num_threads(threads)
    assert summary["epochs"] == 1
    for split in ("source/val", "target/test"):
        assert 0.0 <= without_caption[split]["accuracy"] <= 1.0
        assert math.isfinite(without_caption[split]["loss"])
