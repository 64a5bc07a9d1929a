"""Tabular data: the manifest's tabular kind, the schema learnt from the training split, the tabular encoder, and
a trained model that predicts on new rows with the training split's statistics and categories."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import transmodal
from transmodal.cli import main
from transmodal.config import parse_experiment
from transmodal.data import ModalitySpec
from transmodal.errors import ConfigError, DataError
from transmodal.plugins import get_plugins
from transmodal.tabular import SCHEMA_KEY, UNSEEN, TabularColumn, TabularSchema

CLASSES = ("low", "mid", "high")
TABLE = {"kind": "tabular", "numeric": ["size", "price"], "categorical": ["shop"]}


def _rows(count: int = 90) -> list[dict[str, Any]]:
    """The class shows in `size` (training rows near 0, 10, 20; val and test rows near 1000, far from the training
    split's statistics) and in `shop`; `price` is noise with empty cells."""
    rows = []
    for index in range(count):
        label = index % 3
        split = "train" if index < 60 else ("val" if index < 75 else "test")
        size = 10.0 * label + (index % 5) / 5 + (1000.0 if split != "train" else 0.0)
        rows.append({"size": size, "price": "" if index % 4 == 0 else (index * 7919) % 100,
                     "shop": ["north", "south", "east"][label], "label": CLASSES[label], "split": split})
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _experiment(tmp_path: Path, manifest: Path, modalities: dict[str, Any], encoders: dict[str, Any],
                epochs: int = 2) -> transmodal.Experiment:
    return parse_experiment({
        "name": "tabular",
        "data": {"dataset": {"name": "manifest", "path": str(manifest), "split": "split", "image_size": 8,
                             "num_workers": 1, "modalities": modalities}},
        "model": {"encoders": encoders, "fusion": {"name": "concat"}},
        "optimizer": {"lr": 0.01},
        "trainer": {"epochs": epochs, "batch_size": 16, "num_threads": 1, "device": "cpu"},
        "output": {"dir": str(tmp_path / "runs")},
    })


def _encoder(schema: TabularSchema, **params: Any) -> transmodal.Encoder:
    spec = ModalitySpec("table", "tabular", shape=(schema.width,), extras={SCHEMA_KEY: schema.to_dict()})
    return get_plugins().get("encoder", "tabular").build(spec, **params)


def test_schema_is_learnt_from_the_given_cells_only():
    column = TabularColumn.from_rows(["a", "b"], ["c"], [
        {"a": 1, "b": "", "c": "x"}, {"a": 3, "b": 5, "c": "y"}, {"a": "", "b": 5, "c": ""}, None])
    schema = TabularSchema.fit(column)
    assert schema.mean == [2.0, 5.0] and schema.std == [1.0, 1.0]  # b is constant: std 1, not 0
    assert schema.categories == {"c": ["x", "y"]} and schema.cardinalities == [3]
    other = TabularColumn.from_rows(["a", "b"], ["c"], [{"a": 7, "b": "", "c": "y"}, {"a": "", "b": 1, "c": "z"}])
    # empty numeric cells become the training mean; an unseen category and an empty cell the reserved index
    assert schema.encode(other).tolist() == [[7.0, 5.0, 2.0], [2.0, 1.0, float(UNSEEN)]]
    assert TabularSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    with pytest.raises(DataError, match=r"sample 1: numeric column 'a' holds 'many', not a finite float32 number"):
        TabularColumn.from_rows(["a"], [], [{"a": "many"}])
    for beyond_float32 in ("inf", "-1e39"):  # float32 would hold an infinity: the model would see no number
        with pytest.raises(DataError, match=f"holds '{beyond_float32}', not a finite float32 number"):
            TabularColumn.from_rows(["a"], [], [{"a": beyond_float32}])


def test_encoder_contract():
    column = TabularColumn.from_rows(["a", "b"], ["c", "d"], [
        {"a": i, "b": i * i, "c": "xyz"[i % 3], "d": "pq"[i % 2]} for i in range(12)])
    schema = TabularSchema.fit(column)
    encoder = _encoder(schema, width=16, blocks=2, hidden_factor=1.5)
    features = schema.encode(column)
    out = encoder(features)
    assert out.shape == (12, encoder.out_dim) == (12, 16)
    out.pow(2).sum().backward()
    grouped = {id(p) for _, group in encoder.layer_groups() for p in group.parameters()}
    assert grouped == {id(p) for p in encoder.parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    # Normalisation uses the schema's statistics, which are not trained and not in the weights (model.json has them)
    assert torch.allclose(encoder.mean, torch.tensor(schema.mean)) and "mean" not in encoder.state_dict()
    assert not any(name in ("mean", "std") for name, _ in encoder.named_parameters())
    # An index outside a column's categories reads as the reserved one, as an unseen category does
    encoder.eval()
    outside, unseen = features[:2].clone(), features[:2].clone()
    outside[:, 2], unseen[:, 2] = 99.0, float(UNSEEN)
    torch.testing.assert_close(encoder(outside), encoder(unseen))
    only_numeric = TabularSchema.fit(TabularColumn.from_rows(["a"], [], [{"a": 1}, {"a": 2}]))
    assert _encoder(only_numeric, width=8).eval()(torch.tensor([[1.0], [2.0]])).shape == (2, 8)


def test_encoder_refuses_another_kind():
    with pytest.raises(ConfigError, match=r"model\.encoders\.v: encoder 'tabular' takes a tabular modality.*mlp"):
        get_plugins().get("encoder", "tabular").build(ModalitySpec("v", "vector", shape=(3,)))


def test_manifest_statistics_come_from_the_training_split_alone(tmp_path):
    rows = _rows()
    manifest = _write(tmp_path / "table.csv", rows)
    assembled = transmodal.assemble(_experiment(tmp_path, manifest, {"table": TABLE}, {"table": {"name": "tabular"}}))
    schema = TabularSchema.from_dict(assembled.data.modalities["table"].extras[SCHEMA_KEY])
    train = [row for row in rows if row["split"] == "train"]
    sizes = torch.tensor([row["size"] for row in train], dtype=torch.float64)
    prices = torch.tensor([float(row["price"]) for row in train if row["price"] != ""], dtype=torch.float64)
    assert schema.numeric == ["size", "price"] and schema.categories == {"shop": ["east", "north", "south"]}
    assert schema.mean == pytest.approx([sizes.mean().item(), prices.mean().item()])
    assert schema.std == pytest.approx([sizes.std(correction=0).item(), prices.std(correction=0).item()])
    assert max(schema.mean) < 100  # the val/test rows near 1000 never entered the statistics
    encoder = assembled.model.encoders["table"]
    assert encoder.mean.tolist() == pytest.approx(schema.mean)
    # Every split is encoded with the training schema: an empty price is the training mean
    val = assembled.data.bundle.evaluation["source/val"].data["table"]
    assert val.shape == (15, 3) and val[0, 0] >= 1000
    assert val[[i for i, row in enumerate(r for r in rows if r["split"] == "val") if row["price"] == ""], 1].tolist() \
        == pytest.approx([schema.mean[1]] * 4)


@pytest.mark.parametrize(("modality", "message"), [
    ({"kind": "tabular", "column": "size"}, "a tabular modality takes numeric"),
    ({"kind": "tabular", "numeric": ["size"], "categorical": ["size"]}, "cannot be both numeric and categorical"),
    ({"kind": "vector", "columns": ["size"], "numeric": ["size"]}, "numeric and categorical are for a tabular"),
])
def test_config_mistakes_are_refused_with_their_path(tmp_path, modality, message):
    manifest = _write(tmp_path / "table.csv", _rows(9))
    with pytest.raises(ConfigError, match=rf"data\.dataset\.modalities\.table.*{message}"):
        transmodal.assemble(_experiment(tmp_path, manifest, {"table": modality}, {"table": {"name": "tabular"}}))


def test_data_mistakes_name_the_line(tmp_path):
    rows = _rows(9)
    rows[3]["size"] = "big"
    manifest = _write(tmp_path / "table.csv", rows)
    with pytest.raises(DataError, match=r"table\.csv line 5: numeric column 'size' holds 'big', not a finite float32 number"):
        transmodal.assemble(_experiment(tmp_path, manifest, {"table": TABLE}, {"table": {"name": "tabular"}}))
    experiment = _experiment(tmp_path, manifest, {"table": {**TABLE, "categorical": ["shopp"]}},
                             {"table": {"name": "tabular"}})
    with pytest.raises(ConfigError, match=r"modalities\.table\.categorical: .*no column 'shopp'\. Did you mean: shop"):
        transmodal.assemble(experiment)


@pytest.fixture
def image_and_table(tmp_path: Path) -> tuple[Path, Path]:
    """A trained image + tabular run; (run directory, manifest). The images carry the class too (its colour)."""
    image_module = pytest.importorskip("PIL.Image")
    rows = _rows()
    for index, row in enumerate(rows):
        path = tmp_path / "images" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        image_module.new("RGB", (8, 8), [(200, 20, 20), (20, 200, 20), (20, 20, 200)][index % 3]).save(path)
        row["file"] = f"images/{index}.png"
    rows[61]["shop"] = "west"  # a category the training split never had
    rows[62]["size"] = rows[62]["price"] = rows[62]["shop"] = ""  # no tabular cell at all: the modality is absent
    manifest = _write(tmp_path / "table.csv", rows)
    experiment = _experiment(tmp_path, manifest, {"image": {"kind": "image", "column": "file"}, "table": TABLE},
                             {"image": {"name": "small-cnn", "channels": [4]}, "table": {"name": "tabular",
                                                                                         "width": 16}}, epochs=3)
    summary, run_dir = transmodal.train(experiment, quiet=True)
    assert summary["epochs"] == 3 and set(summary["final"]) == {"source/val", "source/test"}
    return run_dir, manifest


def test_image_and_table_train_then_predict_with_the_training_schema(image_and_table, tmp_path, capsys):
    run_dir, manifest = image_and_table
    info = json.loads((run_dir / "model.json").read_text())
    assert info["modalities"]["table"]["kind"] == "tabular"
    assert info["modalities"]["table"]["extras"][SCHEMA_KEY]["categories"] == {"shop": ["east", "north", "south"]}
    model = transmodal.load(run_dir)
    metrics, _ = transmodal.evaluate_run(run_dir, detailed=True)
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    val = [row for row in rows if row["split"] == "val"]
    records = model.predict(_write(tmp_path / "val.csv", val))
    confusion = torch.zeros(3, 3, dtype=torch.int64)
    for row, record in zip(val, records):
        confusion[model.classes.index(row["label"]), model.classes.index(record["prediction"])] += 1
    assert confusion.tolist() == metrics["source/val"]["confusion"]  # the same encoding as in training

    # An unseen category predicts as an empty cell does; a row without tabular cells as a missing modality.
    image = str(manifest.parent / "images" / "0.png")
    table = {"size": 3.0, "price": 50}
    unseen, empty, absent, without = model.predict({"image": [image] * 4, "table": [
        {**table, "shop": "atlantis"}, {**table, "shop": ""}, None, {"size": "", "price": "", "shop": ""}]}, top_k=3)
    assert unseen["top_k"] == empty["top_k"] and absent["top_k"] == without["top_k"]

    from transmodal.evaluate_data import evaluate_on

    other, _ = evaluate_on(run_dir, run_dir / "config.yaml")  # the dataset read anew, encoded with the run's schema
    assert other["source/val"]["confusion"] == metrics["source/val"]["confusion"]
    # Another dataset whose training split lacks a category: its rows are still encoded with the run's categories
    moved = [{**row, "split": "val" if row["shop"] == "east" else row["split"]} for row in rows]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["dataset"]["path"] = str(_write(tmp_path / "moved.csv", moved))
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(config))
    other, _ = evaluate_on(run_dir, tmp_path / "moved.yaml")
    moved_val = [row for row in moved if row["split"] == "val"]
    predicted = model.predict(_write(tmp_path / "moved-val.csv", moved_val), top_k=3)
    losses = [-math.log(next(e["probability"] for e in record["top_k"] if e["class"] == row["label"]))
              for row, record in zip(moved_val, predicted)]
    assert other["source/val"]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert main(["evaluate", str(run_dir), "--data", str(manifest.parent / "val.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["val.csv"]["confusion"] == metrics["source/val"]["confusion"]
    exported = transmodal.load(run_dir).export(tmp_path / "bundle", format="torchscript")
    assert transmodal.load(exported).predict(tmp_path / "val.csv") == records


def test_predict_refuses_a_partial_table_and_bad_cells(image_and_table, tmp_path, capsys):
    run_dir, manifest = image_and_table
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))[:3]
    partial = _write(tmp_path / "partial.csv", [{k: v for k, v in row.items() if k != "price"} for row in rows])
    assert main(["predict", str(run_dir), str(partial)]) == 2
    assert "only some of the columns of tabular modality 'table': it lacks price" in capsys.readouterr().err
    rows[1]["size"] = "huge"
    assert main(["predict", str(run_dir), str(_write(tmp_path / "bad.csv", rows))]) == 2
    err = capsys.readouterr().err
    assert "bad.csv:3: numeric column 'size' holds 'huge', not a finite float32 number" in err and "Traceback" not in err


def test_rank_scores_tabular_encoders_and_a_trained_tabular_run(tmp_path):
    manifest = _write(tmp_path / "table.csv", _rows())
    experiment = _experiment(tmp_path, manifest, {"table": TABLE}, {"table": {"name": "tabular"}}, epochs=1)
    _, run_dir = transmodal.train(experiment, quiet=True)
    ranking = transmodal.rank(experiment, candidates=["tabular", run_dir])
    assert sorted(c.label for c in ranking.candidates) == sorted(["tabular", run_dir.name])
    assert all(abs(value) < float("inf") for c in ranking.candidates for value in c.scores.values())
