"""contrastive-alignment and what evaluation reads from its aligned space: InfoNCE against a direct computation,
retrieval metrics on embeddings with known ranks, rows missing a modality left out, a short run on
synthetic-shapes whose retrieval rises far above chance, cross-modal transfer and zero-shot through
`transmodal evaluate`, and the errors of impossible parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transmodal
from conftest import tiny_experiment_dict
from transmodal.builtin.adaptation.contrastive import ContrastiveAlignment, Projections, info_nce
from transmodal.builtin.adaptation.params import ContrastiveAlignmentParams
from transmodal.checkpoint import load_checkpoint
from transmodal.cli import main
from transmodal.config import parse_experiment
from transmodal.cross_modal import cross_fitted_transfer, fit_probe
from transmodal.datasets.shapes_render import SHAPES, render_split
from transmodal.errors import ConfigError
from transmodal.model import ModelOutput
from transmodal.plugins import get_plugins
from transmodal.retrieval import median, pair_ranks, rank_metrics, retrieval_metrics
from transmodal.strategy import StepData, TrainingContext

# -- InfoNCE ------------------------------------------------------------------------------------------------------


def direct_info_nce(a: list[list[float]], b: list[list[float]], scale: float) -> float:
    """CLIP's loss written out: for each row i, -log softmax_j(scale <a_i, b_j>)[i], and the same for columns."""
    n = len(a)
    dot = [[scale * sum(x * y for x, y in zip(a[i], b[j])) for j in range(n)] for i in range(n)]
    rows = [-(dot[i][i] - math.log(sum(math.exp(dot[i][j]) for j in range(n)))) for i in range(n)]
    columns = [-(dot[j][j] - math.log(sum(math.exp(dot[i][j]) for i in range(n)))) for j in range(n)]
    return (sum(rows) / n + sum(columns) / n) / 2


def test_info_nce_of_orthonormal_pairs_by_hand():
    # logits = I: every row and column is -log(e / (e + 1)) = log(1 + 1/e)
    eye = torch.eye(2)
    assert info_nce(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_info_nce_matches_the_direct_formula_and_is_asymmetric_in_rows_and_columns():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.0], [0.0, 0.3, -2.0]]), dim=1)
    b = torch.nn.functional.normalize(torch.tensor([[0.9, 1.5, 0.4], [1.0, 0.0, 1.0], [-0.2, 1.0, -1.0]]), dim=1)
    for scale in (1.0, 1 / 0.07):
        expected = direct_info_nce(a.tolist(), b.tolist(), scale)
        assert info_nce(a, b, scale).item() == pytest.approx(expected, rel=1e-5)
    # the row and column terms differ here, so the symmetric mean is not either alone
    logits = a @ b.T
    rows = torch.nn.functional.cross_entropy(logits, torch.arange(3)).item()
    columns = torch.nn.functional.cross_entropy(logits.T, torch.arange(3)).item()
    assert rows != pytest.approx(columns)
    assert info_nce(a, b, 1.0).item() == pytest.approx((rows + columns) / 2, rel=1e-6)


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100():
    parts = Projections({"image": 4, "text": 3}, 8, 0.07, learn_temperature=True, max_scale=100.0)
    assert parts.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert parts.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        parts.logit_scale.fill_(10.0)
    assert parts.scale().item() == pytest.approx(100.0, rel=1e-5)
    parts.clamp_()
    assert parts.logit_scale.item() == pytest.approx(math.log(100.0))
    fixed = Projections({"image": 4, "text": 3}, 8, 0.07, learn_temperature=False, max_scale=100.0)
    assert not any(p is fixed.logit_scale for p in fixed.parameters())


# -- retrieval metrics --------------------------------------------------------------------------------------------


def embeddings_with_ranks(ranks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and gallery whose score matrix (queries @ gallery.T) puts query i's partner at rank ranks[i]:
    the partner scores 0, ranks[i] - 1 others score 1 and the rest -1."""
    n = len(ranks)
    scores = -torch.ones(n, n)
    for i, rank in enumerate(ranks):
        scores[i, i] = 0.0
        others = [j for j in range(n) if j != i][: rank - 1]
        scores[i, others] = 1.0
    return torch.eye(n), scores.T.contiguous()  # eye @ scores.T.T = scores


def test_pair_ranks_and_recall_on_known_ranks():
    ranks = [1, 1, 2, 3, 5, 6, 7, 10, 11, 12, 12, 4]
    queries, gallery = embeddings_with_ranks(ranks)
    assert pair_ranks(queries, gallery).tolist() == ranks
    assert pair_ranks(queries, gallery, chunk=5).tolist() == ranks  # the same in chunks
    metrics = rank_metrics(torch.tensor(ranks))
    assert metrics["R@1"] == pytest.approx(2 / 12)
    assert metrics["R@5"] == pytest.approx(6 / 12)
    assert metrics["R@10"] == pytest.approx(9 / 12)
    assert metrics["median_rank"] == pytest.approx((5 + 6) / 2)  # even count: the mean of the middle two


def test_ties_count_against_the_query():
    # query 0 ties its partner with one other row: rank 2; collapsed embeddings rank every partner last
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # scores: row 0 [1, 1, 0] -> rank 2; row 1 [0, 0, 1] -> partner 0, two rows >= 0: rank 3; row 2 [1, 1, 1]: 3
    assert pair_ranks(queries, gallery).tolist() == [2, 3, 3]
    collapsed = torch.ones(5, 3)
    assert pair_ranks(collapsed, collapsed).tolist() == [5] * 5
    assert rank_metrics(pair_ranks(collapsed, collapsed))["R@1"] == 0.0


def test_retrieval_metrics_both_directions_and_the_median():
    queries, gallery = embeddings_with_ranks([1, 2, 3])  # the transpose: column ranks
    metrics = retrieval_metrics(queries, gallery, ("image", "text"))
    assert metrics["pool"] == 3
    assert metrics["image->text"]["R@1"] == pytest.approx(1 / 3)
    assert metrics["image->text"]["median_rank"] == 2
    columns = pair_ranks(gallery, queries).tolist()
    assert metrics["text->image"]["R@1"] == pytest.approx(sum(r <= 1 for r in columns) / 3)
    assert median(torch.tensor([4, 1, 3])) == 3.0
    with pytest.raises(ValueError):
        pair_ranks(torch.zeros(3, 2), torch.zeros(4, 2))


# -- the strategy on constructed batches -------------------------------------------------------------------------


def strategy_and_model(**params):
    strategy = get_plugins().get("strategy", "contrastive-alignment").build(**params)
    model = SimpleNamespace(modalities=["image", "text"], encoders={"image": SimpleNamespace(out_dim=4),
                                                                      "text": SimpleNamespace(out_dim=3)})
    strategy.check(model, [strategy])
    strategy.setup(model, TrainingContext(3, 10, 10, torch.device("cpu"), False))
    return strategy, model


def step_with(image: torch.Tensor, text: torch.Tensor, present_text: torch.Tensor) -> StepData:
    size = image.shape[0]
    source = {"image": torch.zeros(size, 3, 8, 8), "text": torch.ones(size, 4, dtype=torch.int64),
              "present/text": present_text, "label": torch.zeros(size, dtype=torch.int64)}
    output = ModelOutput(torch.zeros(size, 3), torch.zeros(size, 5), {"image": image, "text": text})
    return StepData(model=None, source=source, source_output=output, step=0, progress=0.5)


def test_rows_missing_a_modality_are_left_out_of_the_loss():
    strategy, _ = strategy_and_model(dim=6)
    torch.manual_seed(0)
    image, text = torch.randn(6, 4, requires_grad=True), torch.randn(6, 3)
    present = torch.tensor([True, True, False, True, False, True])
    loss = strategy.loss_terms(step_with(image, text, present))["infonce"]
    parts = strategy.parts
    kept = present.nonzero().squeeze(1)
    expected = info_nce(parts.embed("image", image[kept]), parts.embed("text", text[kept]), parts.scale())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # whatever the absent rows hold changes nothing, and they receive no gradient
    garbage = text.clone()
    garbage[~present] = 1e6
    assert strategy.loss_terms(step_with(image, garbage, present))["infonce"].item() == pytest.approx(loss.item())
    loss.backward()
    assert image.grad[~present].abs().sum() == 0 and image.grad[present].abs().sum() > 0


def test_fewer_than_two_pairs_give_a_zero_that_still_backpropagates():
    strategy, _ = strategy_and_model()
    image = torch.randn(3, 4, requires_grad=True)
    loss = strategy.loss_terms(step_with(image, torch.randn(3, 3), torch.tensor([False, True, False])))["infonce"]
    assert loss.item() == 0.0
    loss.backward()
    assert image.grad is not None


def test_the_default_pair_is_the_models_first_two_modalities():
    strategy = ContrastiveAlignment(ContrastiveAlignmentParams())
    model = SimpleNamespace(modalities=["audio", "image", "text"])
    assert strategy.resolve_pair(model) == ("audio", "image")
    named = ContrastiveAlignment(ContrastiveAlignmentParams(modalities=["text", "audio"]))
    assert named.resolve_pair(model) == ("text", "audio")


# -- errors -------------------------------------------------------------------------------------------------------


def test_impossible_parameters_are_config_errors(tmp_path: Path):
    def train(adaptation, **model):
        raw = tiny_experiment_dict(tmp_path)
        raw["data"]["dataset"].update(train_size=32, val_size=8, target_train_size=0, target_test_size=8)
        raw["adaptation"] = [adaptation, *([model.pop("adaptation_extra")] if "adaptation_extra" in model else [])]
        raw["model"].update(model)
        return transmodal.train(parse_experiment(raw), quiet=True)

    with pytest.raises(ConfigError, match=r"names audio, which the model does not have; its modalities .* image, text"):
        train({"name": "contrastive-alignment", "modalities": ["image", "audio"]})
    with pytest.raises(ConfigError, match="has only image"):
        train({"name": "contrastive-alignment"}, encoders={"image": {"name": "small-cnn", "channels": [8]}})
    with pytest.raises(ConfigError, match="more than once"):
        train({"name": "contrastive-alignment"}, adaptation_extra={"name": "contrastive-alignment", "dim": 8})
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # refused before a run


@pytest.mark.parametrize("params, message", [
    ({"modalities": ["text", "text"]}, "two different modalities"),
    ({"modalities": ["image"]}, "at least 2"),
    ({"source_pairs": False}, "nothing would be aligned"),
    ({"temperature": 0.001}, "above max_scale"),
    ({"dim": 0}, "greater than or equal to 1"),
])
def test_bad_parameters_are_refused_by_config_validate(tmp_path: Path, params, message, capsys):
    config = tmp_path / "config.yaml"
    raw = tiny_experiment_dict(tmp_path)
    raw["adaptation"] = [{"name": "contrastive-alignment", **params}]
    config.write_text(json.dumps(raw))
    assert main(["config", "validate", str(config)]) == 2
    error = capsys.readouterr().err
    assert "adaptation" in error and message in error


# -- trained on synthetic-shapes ----------------------------------------------------------------------------------

POOL = 100


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Alignment alone (task_weight 0) for a few epochs on small images whose captions name the shape: colour
    and shape are what image and caption share."""
    root = tmp_path_factory.mktemp("aligned")
    raw = tiny_experiment_dict(root)
    raw["data"]["dataset"].update(train_size=1500, val_size=POOL, target_train_size=64, target_test_size=POOL,
                                  image_size=16, caption_shape=True)
    raw["model"]["encoders"]["image"]["channels"] = [16, 32]
    raw["adaptation"] = [{"name": "contrastive-alignment", "task_weight": 0.0, "dim": 32, "retrieval_pool": POOL,
                          "target_pairs": True}]
    raw["trainer"].update(epochs=4, batch_size=64)
    raw["optimizer"] = {"lr": 0.002}
    return transmodal.train(parse_experiment(raw), quiet=True)


def test_alignment_lifts_retrieval_far_above_chance(aligned_run):
    summary, run_dir = aligned_run
    retrieval = summary["final"]["source/val"]["retrieval"]
    assert retrieval["pool"] == POOL
    chance = 1 / POOL
    for direction in ("image->text", "text->image"):
        assert retrieval[direction]["R@1"] >= 8 * chance, retrieval
        assert retrieval[direction]["R@10"] >= 0.4, retrieval
    # and it is in summary.json and metrics.jsonl, the epochs' curve rising
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["final"]["source/val"]["retrieval"] == retrieval
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["source/val"]["retrieval"]["image->text"]["R@1"] > 2 * chance
    assert "contrastive-alignment.logit_scale" in " ".join(history[-1]["train"])
    assert history[-1]["train"]["loss/task"] == 0.0  # task_weight 0: the alignment trained alone


def test_the_projections_are_saved_with_the_weights_and_evaluate_reports_retrieval(aligned_run, capsys):
    summary, run_dir = aligned_run
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert set(best["strategy_weights"]) == {"0.contrastive-alignment"}
    assert main(["evaluate", str(run_dir), "--checkpoint", "last", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["source/val"]["retrieval"] == summary["final"]["source/val"]["retrieval"]
    assert main(["evaluate", str(run_dir), "--checkpoint", "last"]) == 0
    text = capsys.readouterr().out
    assert "image->text" in text and "median rank" in text and "zero-shot accuracy" in text


def test_cross_modal_transfer_and_zero_shot(aligned_run, capsys):
    _, run_dir = aligned_run
    assert main(["evaluate", str(run_dir), "--via", "text", "--via", "image", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]["source/val"]
    transfer = metrics["transfer"]
    assert transfer["text"]["trained_on"] == "image" and transfer["image"]["trained_on"] == "text"
    assert transfer["text"]["samples"] == POOL and "accuracy" in transfer["text"]["within"]
    # the caption names the shape and the attribute, so a probe on its own embeddings beats chance clearly
    assert transfer["text"]["within"]["accuracy"] > 2 / 9
    shot = metrics["zero_shot"]
    assert shot["modality"] == "image" and shot["prototypes"] == "text"
    assert shot["unknown_token_fraction"] == 0.0 and shot["samples"] == POOL
    assert main(["evaluate", str(run_dir), "--via", "audio"]) == 2
    assert "the run aligns image and text" in capsys.readouterr().err


def test_via_needs_an_aligned_run(tmp_path: Path, capsys):
    raw = tiny_experiment_dict(tmp_path)
    raw["data"]["dataset"].update(train_size=64, val_size=32, target_train_size=32, target_test_size=32)
    raw["adaptation"] = [{"name": "finetune"}]
    raw["trainer"]["epochs"] = 1
    summary, run_dir = transmodal.train(parse_experiment(raw), quiet=True)
    assert "retrieval" not in summary["final"]["source/val"]  # no aligned space: nothing to rank
    assert main(["evaluate", str(run_dir), "--via", "text"]) == 2
    assert "contrastive-alignment" in capsys.readouterr().err


def test_fit_probe_is_deterministic_and_separates_separable_classes():
    torch.manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.nn.functional.one_hot(labels, 3).float() + 0.1 * torch.randn(60, 3)
    probe = fit_probe(features, labels, 3)
    assert (probe(features).argmax(1) == labels).all()
    again = fit_probe(features, labels, 3)
    assert torch.equal(probe.weight, again.weight)


def test_caption_shape_appends_the_shape_and_changes_nothing_else():
    plain = render_split("source", 20, 3, 16)
    named = render_split("source", 20, 3, 16, caption_shape=True)
    assert torch.equal(plain.images, named.images) and torch.equal(plain.labels, named.labels)
    for caption, with_shape, label in zip(plain.captions, named.captions, plain.labels.tolist()):
        assert with_shape == f"{caption} it is a {SHAPES[label // 3]}."
        assert not any(shape in caption for shape in SHAPES)


def test_cross_fitting_never_predicts_a_sample_with_a_probe_that_saw_it():
    # Labels that only the row's own position determines (memorised noise): a probe that saw the sample would be
    # right, a held-out one is at chance; the second modality is the first plus noise.
    torch.manual_seed(1)
    n = 200
    labels = torch.randint(0, 3, (n,))
    first = torch.nn.functional.normalize(torch.randn(n, 64), dim=1)
    second = torch.nn.functional.normalize(first + 0.01 * torch.randn(n, 64), dim=1)
    positions = torch.arange(n)
    result = cross_fitted_transfer((first, labels, positions), (second, labels, positions), 3, torch.device("cpu"))
    assert result["samples"] == n and result["cross_fitted"]
    assert result["accuracy"] < 0.5 and result["within"]["accuracy"] < 0.5  # no sample leaked into its own probe
    seen = fit_probe(first, labels, 3)
    assert (seen(second).argmax(1) == labels).float().mean() > 0.65  # what training on the same rows reports
