"""transmodal-text through the whole engine: a text domain-adaptation run from a CSV file, token outputs into
fusion, bf16 autocast, and the IMDB example configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transmodal_text")

import transmodal
from transmodal.config import load_experiment, parse_experiment, validate_components
from transmodal.errors import DataError
from transmodal.plugins import get_plugins

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IMDB_EXAMPLES = ["imdb_lstm.yaml", "imdb_text_cnn.yaml", "imdb_bow.yaml"]


def write_two_domain_csv(path: Path) -> Path:
    """Book reviews (source) and kitchen reviews (target); the sentiment words are shared, the topics are not."""
    good, bad = ["great", "excellent", "loved"], ["awful", "terrible", "hated"]
    lines = ["text,label,domain"]
    for index in range(24):
        word = index % 3
        lines.append(f"{good[word]} novel with a {good[(word + 1) % 3]} plot,positive,books")
        lines.append(f"{bad[word]} novel and a {bad[(word + 1) % 3]} ending,negative,books")
        lines.append(f"{good[word]} blender<br />works {good[(word + 2) % 3]},positive,kitchen")
        lines.append(f"{bad[word]} kettle that leaks,negative,kitchen")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def experiment(tmp_path: Path, encoder: dict, tokenizer: dict, adaptation: list[dict], **trainer) -> transmodal.Experiment:
    return parse_experiment({
        "name": "text-csv-tiny",
        "data": {
            "dataset": {"name": "text-csv", "path": str(write_two_domain_csv(tmp_path / "reviews.csv")),
                        "domain_column": "domain", "target_domain": "kitchen"},
            "tokenizer": tokenizer,
        },
        "model": {"encoders": {"text": encoder}, "fusion": {"name": "concat", "hidden": 16}, "head": {"name": "linear"}},
        "adaptation": adaptation,
        "optimizer": {"lr": 0.01},
        "trainer": {"epochs": 2, "batch_size": 8, "eval_batch_size": 32, "num_threads": 1, **trainer},
        "output": {"dir": str(tmp_path / "runs")},
    })


def test_text_cnn_with_bpe_adapts_from_books_to_kitchen_with_dann(tmp_path: Path) -> None:
    summary, run_dir = transmodal.train(experiment(
        tmp_path, {"name": "text-cnn", "embedding_dim": 16, "widths": [1, 2], "filters": 8},
        # A discriminator sized to these 16-d features: the default (Ganin et al.'s 1024-1024 for deep features)
        # overpowers the task in a 24-step toy run.
        {"name": "bpe", "vocab_size": 120, "max_length": 16}, [{"name": "dann", "hidden": 64}], epochs=6,
    ), quiet=True)
    assert set(summary["final"]) == {"source/val", "source/test", "target/test"}
    assert "oracle" in summary  # target-test selection is reported apart from the result
    assert summary["final"]["source/test"]["accuracy"] >= 0.9  # the sentiment words are learnt
    metrics, _ = transmodal.evaluate_run(run_dir, "last")
    assert metrics["target/test"]["accuracy"] == pytest.approx(summary["final"]["target/test"]["accuracy"])


def test_token_sequences_reach_the_fusion_and_bf16_autocast_runs(tmp_path: Path) -> None:
    summary, _ = transmodal.train(experiment(
        tmp_path, {"name": "gru", "embedding_dim": 8, "hidden_dim": 8, "bidirectional": True, "tokens": True},
        {"name": "wordpiece", "vocab_size": 80, "max_length": 12}, [{"name": "finetune"}], precision="bf16",
    ), quiet=True)
    assert summary["steps"] == 2 * 4  # 48 source rows - 10 test - 4 val = 34: four full batches of 8 per epoch
    assert all(torch.isfinite(torch.tensor(v["loss"])) for v in summary["final"].values())


@pytest.mark.parametrize("name", IMDB_EXAMPLES)
def test_imdb_examples_validate_and_say_what_to_do_without_data(tmp_path: Path, name: str) -> None:
    loaded = load_experiment(EXAMPLES / name, [f"data.dataset.root={tmp_path / 'none'}", "data.dataset.download=false"])
    validate_components(loaded, get_plugins())
    with pytest.raises(DataError, match="download: true"):
        transmodal.train(loaded, quiet=True)
