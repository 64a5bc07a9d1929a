"""The manifest dataset: one's own multimodal data from a CSV/TSV/JSONL file, export, and training from it."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import transmodal
from transmodal.cli import main
from transmodal.config import parse_experiment
from transmodal.data import MappedColumn, presence_key
from transmodal.errors import ConfigError, DataError
from transmodal.plugins import get_plugins

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _write_csv(path: Path, rows: list[dict[str, Any]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(folder: Path, count: int = 12) -> list[dict[str, Any]]:
    """Colour-coded images, a caption naming the colour, two numbers; domain web for 2/3, sketch for 1/3."""
    rows = []
    for index in range(count):
        name = list(COLOURS)[index % 3]
        _png(folder / "images" / f"{index}.png", COLOURS[name])
        rows.append({"file": f"images/{index}.png", "title": f"a {name} thing", "a": index, "b": -index,
                     "label": name, "domain": "sketch" if index % 3 == 0 and index >= 6 else "web"})
    return rows


MODALITIES = {"image": {"kind": "image", "column": "file"}, "title": {"kind": "text", "column": "title"},
              "stats": {"kind": "vector", "columns": ["a", "b"]}}


def build(path: Path, **params: Any) -> transmodal.DatasetBundle:
    params = {"modalities": MODALITIES, "image_size": 8, "num_workers": 1, **params}
    return get_plugins().get("dataset", "manifest").build(0, path=str(path), **params)


def test_every_kind_with_rows_missing_modalities(tmp_path):
    rows = _rows(tmp_path)
    rows[1]["file"] = ""          # no image
    rows[2]["title"] = "null"     # no caption
    rows[4]["a"] = rows[4]["b"] = ""  # no vector
    bundle = build(_write_csv(tmp_path / "data.csv", rows), split=None, val_fraction=0.0)
    assert bundle.modalities == {"image": "image", "title": "text", "stats": "vector"}
    assert bundle.classes == ["blue", "green", "red"]
    train = bundle.train.data
    assert len(bundle.train) == 12 and train["image"].shape == (12, 3, 8, 8) and train["image"].dtype == torch.uint8
    # Each decoded image has its colour's dominant channel; the row without one reads as zeros and is absent.
    dominant = train["image"].float().mean(dim=(2, 3)).argmax(dim=1)
    expected = torch.tensor([{"red": 0, "green": 1, "blue": 2}[r["label"]] for r in rows])
    assert torch.equal(dominant[[0, *range(2, 12)]], expected[[0, *range(2, 12)]])
    assert train["image"][1].eq(0).all()
    assert train[presence_key("image")].tolist() == [i != 1 for i in range(12)]
    assert train[presence_key("title")].tolist() == [i != 2 for i in range(12)]
    assert train[presence_key("stats")].tolist() == [i != 4 for i in range(12)]
    assert train["title"][0] == "a red thing" and train["title"][2] == ""
    assert torch.equal(train["stats"][3], torch.tensor([3.0, -3.0]))


def test_model_marks_absent_modalities_from_the_batch(tmp_path, tiny):
    """The presence mask in a batch reaches the fusion: an absent caption changes nothing whatever it holds."""
    experiment = tiny()
    assembled = transmodal.assemble(experiment)
    model = assembled.model.eval()
    batch = next(assembled.data.evaluation["source/val"].epoch())
    absent = torch.zeros(len(batch["label"]), dtype=torch.bool)
    marked = model({**batch, presence_key("text"): absent}).logits
    other_text = model({**batch, "text": batch["text"].flip(0), presence_key("text"): absent}).logits
    without_text = model({k: v for k, v in batch.items() if k != "text"}).logits
    torch.testing.assert_close(marked, other_text)
    torch.testing.assert_close(marked, without_text)


def test_domains_splits_and_unlabelled_target_rows(tmp_path):
    rows = _rows(tmp_path, 18)
    for index, row in enumerate(rows):
        row["split"] = ["train", "train", "val", "test"][index % 4] if row["domain"] == "web" else \
            ["train", "test"][index % 2]
    rows[9]["label"] = ""  # a target row without a label: unlabelled data
    path = _write_csv(tmp_path / "data.tsv", rows, delimiter="\t")
    bundle = build(path, domain={"column": "domain", "source": "web", "target": ["sketch"]}, split="split")
    web = [r for r in rows if r["domain"] == "web"]
    sketch = [r for r in rows if r["domain"] == "sketch"]
    assert len(bundle.train) == sum(r["split"] == "train" for r in web)
    assert len(bundle.evaluation["source/val"]) == sum(r["split"] == "val" for r in web)
    assert len(bundle.evaluation["target/test"]) == sum(r["split"] == "test" and r["label"] != "" for r in sketch)
    assert len(bundle.unlabelled) == sum(r["split"] == "train" or r["label"] == "" for r in sketch)
    assert not bundle.unlabelled.has_labels
    assert bundle.unlabelled.data["domain"].eq(1).all() and bundle.train.data["domain"].eq(0).all()


def test_relative_image_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    data = tmp_path / "dataset"
    data.mkdir()
    _write_csv(data / "m.csv", _rows(data, 6))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # images/0.png exists only beside the manifest, not here
    bundle = build(Path("..") / "dataset" / "m.csv", val_fraction=0.0)
    assert len(bundle.train) == 6 and bool(bundle.train.data["image"].flatten(1).amax(dim=1).gt(0).all())


def test_jsonl_manifest_with_absolute_paths_and_missing_keys(tmp_path):
    rows = _rows(tmp_path, 6)
    lines = []
    for row in rows:
        row = {**row, "file": str(tmp_path / row["file"])}
        if row["a"] == 2:
            del row["title"]  # a key a JSONL row leaves out is an empty cell
        lines.append(json.dumps(row))
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    bundle = build(path, val_fraction=0.0)
    assert bundle.train.data[presence_key("title")].tolist() == [True, True, False, True, True, True]


def test_a_list_as_a_label_is_refused_rather_than_made_a_class(tmp_path):
    rows = _rows(tmp_path, 6)
    rows[1]["label"] = ["red", "green"]  # two labels at once
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"m\.jsonl line 2: label column 'label' holds a list"):
        build(path, val_fraction=0.0)


@pytest.mark.parametrize("cell", [{"a": 1}, [1, 2], True], ids=["object", "list", "boolean"])
def test_a_text_cell_that_is_not_a_string_is_refused_rather_than_learnt_as_its_repr(tmp_path, cell):
    rows = _rows(tmp_path, 6)
    rows[2]["title"] = cell
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=rf"m\.jsonl line 3: text column 'title' holds a {type(cell).__name__}"):
        build(path, val_fraction=0.0)


def test_a_csv_with_a_column_named_twice_or_a_row_of_too_many_cells_is_refused(tmp_path):
    rows = _rows(tmp_path, 6)
    path = _write_csv(tmp_path / "m.csv", rows)
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0].replace("title", "label"), *text[1:]]) + "\n")
    with pytest.raises(DataError, match="m.csv line 1 names column 'label' twice"):
        build(path, val_fraction=0.0)
    path.write_text("\n".join([*text[:3], text[3] + ",surplus", *text[4:]]) + "\n")
    with pytest.raises(DataError, match="m.csv line 4 has 7 cells but the header names 6 columns"):
        build(path, val_fraction=0.0)
    path.write_text("\n".join([*text[:3], text[3] + ",", *text[4:]]) + "\n")  # an empty trailing cell is harmless
    assert len(build(path, val_fraction=0.0).train) == 6


def test_on_missing_files(tmp_path):
    rows = _rows(tmp_path, 9)
    (tmp_path / "images" / "4.png").unlink()
    (tmp_path / "images" / "7.png").write_bytes(b"not a png")
    path = _write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(DataError, match=r"1 image files of modality 'image' are missing: images/4\.png \(line 6\)"):
        build(path)
    (tmp_path / "images" / "5.png").unlink()
    with pytest.raises(DataError, match=r"2 image files .* missing: images/4\.png \(line 6\), images/5\.png"):
        build(path)
    _png(tmp_path / "images" / "4.png", COLOURS["red"])
    _png(tmp_path / "images" / "5.png", COLOURS["red"])
    with pytest.raises(DataError, match=r"1 image files .* are undecodable: images/7\.png \(line 9\)"):
        build(path)
    absent = build(path, on_missing="absent", val_fraction=0.0)
    assert len(absent.train) == 9 and absent.train.data[presence_key("image")].sum() == 8
    assert "1 rows with a missing or undecodable image marked absent" in absent.description
    skipped = build(path, on_missing="skip", val_fraction=0.0)
    assert len(skipped.train) == 8 and skipped.train.data["title"] == [f"a {r['label']} thing" for r in rows
                                                                        if r["file"] != "images/7.png"]
    assert "1 rows with a missing or undecodable image skipped" in skipped.description


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"label_of_row": (6, "purple")}, DataError, r"line 8: target label 'purple' never occurs in the source"),
    ({"domain_of_row": (3, "")}, DataError, r"line 5: the domain column 'domain' is empty"),
    ({"domain_of_row": (3, "webb")}, DataError, r"line 5: domain 'webb' is neither source .*Did you mean: web\?"),
    ({"cell": (2, "a", "1.5x")}, DataError, r"line 4: vector column 'a' holds '1.5x', not a finite float32 number"),
    ({"cell": (2, "a", "inf")}, DataError, r"line 4: vector column 'a' holds 'inf', not a finite float32 number"),
    ({"cell": (2, "a", "1e39")}, DataError, r"line 4: vector column 'a' holds '1e39', not a finite float32 number"),
    ({"cell": (2, "a", "")}, DataError, r"line 4: vector column 'a' is empty while b have values"),
    ({"label_of_row": (0, "")}, DataError, r"line 2: a source row without a label"),
    ({"params": {"modalities": {"image": {"kind": "image", "column": "flie"}}}}, ConfigError,
     r"data\.dataset\.modalities\.image\.column: m\.csv has no column 'flie'\. Did you mean: file\?"),
    ({"params": {"label": "lable"}}, ConfigError, r"data\.dataset\.label: .*no column 'lable'\. Did you mean: label\?"),
    ({"params": {"domain": {"column": "domain", "source": "web", "target": ["sketch", "photo"]}}}, DataError,
     r"no row has domain photo"),
])
def test_bad_input_is_one_clear_error(tmp_path, change, error, message):
    rows = _rows(tmp_path, 9)
    if "label_of_row" in change:
        index, value = change["label_of_row"]
        rows[index]["label"] = value
    if "domain_of_row" in change:
        index, value = change["domain_of_row"]
        rows[index]["domain"] = value
    if "cell" in change:
        index, column, value = change["cell"]
        rows[index][column] = value
    params = {"domain": {"column": "domain", "source": "web", "target": "sketch"}, **change.get("params", {})}
    with pytest.raises(error, match=message):
        build(_write_csv(tmp_path / "m.csv", rows), **params)


def test_a_manifest_of_one_class_is_refused(tmp_path):
    rows = [{**row, "label": "red", "domain": "web"} for row in _rows(tmp_path, 6)]
    with pytest.raises(DataError, match="the dataset has only one class, 'red'; classification needs at least two"):
        build(_write_csv(tmp_path / "m.csv", rows))


def test_a_manifest_that_is_not_utf8_needs_its_encoding(tmp_path):
    rows = _rows(tmp_path, 6)
    rows[3]["title"] = "un café"
    path = tmp_path / "m.csv"
    with open(path, "w", newline="", encoding="latin-1") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"line 5 is not utf-8 text .*set data\.dataset\.encoding"):
        build(path)
    assert build(path, encoding="latin-1", val_fraction=0.0).train.data["title"][3] == "un café"


def test_bad_input_stops_the_cli_before_a_run_directory_exists(tmp_path, capsys):
    rows = _rows(tmp_path, 6)
    rows[2]["a"] = "many"
    path = _write_csv(tmp_path / "m.csv", rows)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "data": {"dataset": {"name": "manifest", "path": str(path), "modalities": MODALITIES}},
        "model": {"encoders": {"image": {"name": "small-cnn"}, "title": {"name": "bow"}, "stats": {"name": "mlp"}}},
        "adaptation": [], "output": {"dir": str(tmp_path / "runs")},
    }))
    assert main(["train", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: manifest:") and "line 4: vector column 'a' holds 'many'" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def _manifest_experiment(tmp_path: Path, manifest: Path, *overrides: str, **dataset: Any) -> transmodal.Experiment:
    raw = {
        "name": "shapes-manifest",
        "data": {"dataset": {"name": "manifest", "path": str(manifest), "image_size": 32, "num_workers": 1,
                             "modalities": {"image": {"kind": "image", "column": "path"},
                                            "text": {"kind": "text", "column": "caption"}},
                             "domain": {"column": "domain", "source": "source", "target": "target"},
                             "split": "split", **dataset}},
        "model": {"encoders": {"image": {"name": "small-cnn", "channels": [8, 16]},
                               "text": {"name": "bow", "embedding_dim": 16}},
                  "fusion": {"name": "concat", "hidden": 32}},
        "adaptation": [{"name": "dann"}],
        "trainer": {"epochs": 2, "batch_size": 32, "eval_batch_size": 64, "num_threads": 1},
        "output": {"dir": str(tmp_path / "runs")},
    }
    return parse_experiment(raw)


@pytest.fixture
def exported(tmp_path) -> Path:
    sizes = ["--set", "train_size=96", "--set", "val_size=32", "--set", "target_train_size=64",
             "--set", "target_test_size=32"]
    assert main(["data", "export", "synthetic-shapes", str(tmp_path / "shapes"), *sizes]) == 0
    return tmp_path / "shapes" / "manifest.csv"


def test_export_then_train_from_the_manifest(tmp_path, exported, capsys):
    with open(exported, encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 96 + 32 + 64 + 32 and (exported.parent / rows[0]["path"]).is_file()
    assert {(r["domain"], r["split"], bool(r["label"])) for r in rows} == {
        ("source", "train", True), ("source", "val", True), ("target", "train", False), ("target", "test", True)}
    # The exported images are the embedded dataset's, pixel for pixel (PNG is lossless).
    shapes = get_plugins().get("dataset", "synthetic-shapes").build(0, train_size=96, val_size=32,
                                                                    target_train_size=64, target_test_size=32)
    experiment = _manifest_experiment(tmp_path, exported)
    bundle = transmodal.assemble(experiment).data.bundle
    assert torch.equal(bundle.train.data["image"], shapes.train.data["image"])
    def names(bundle: transmodal.DatasetBundle) -> list[str]:
        return [bundle.classes[label] for label in bundle.train.data["label"].tolist()]

    assert names(bundle) == names(shapes)
    summary, run_dir = transmodal.train(experiment, quiet=True)
    assert set(summary["final"]) == {"source/val", "target/test"} and summary["epochs"] == 2
    assert (run_dir / "summary.json").is_file()
    capsys.readouterr()
    assert main(["data", "export", "synthetic-shapes", str(exported.parent)]) == 2  # never overwrites
    assert "manifest.csv exists" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["data", "export", "synthetic-shapes", str(tmp_path / "a-file")]) == 2
    assert f"{tmp_path / 'a-file'}: cannot make the folder there" in capsys.readouterr().err


def test_memory_mapped_split_trains_to_the_same_losses(tmp_path, exported):
    losses = {}
    for storage in ("memory", "mmap"):
        experiment = _manifest_experiment(tmp_path, exported, storage=storage)
        assembled = transmodal.assemble(experiment)
        image = assembled.data.bundle.train.data["image"]
        assert isinstance(image, MappedColumn) == (storage == "mmap")
        summary, run_dir = transmodal.train(experiment, quiet=True)
        losses[storage] = [json.loads(line)["train"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses["memory"] == losses["mmap"]


def test_the_example_config_validates(tmp_path):
    from transmodal.config import load_experiment, validate_components

    experiment = load_experiment(Path(__file__).parent.parent / "examples" / "manifest_shapes.yaml")
    assert experiment.data.dataset.name == "manifest"
    validate_components(experiment, get_plugins())


def test_a_cell_longer_than_csvs_default_limit_is_read_whole(tmp_path: Path):
    from transmodal.tables import read_rows

    document = "word " * 40_000  # 200,000 characters: a long review or article
    (tmp_path / "long.csv").write_text(f'text,label\n"{document}",a\nshort,b\n')
    rows = read_rows(tmp_path / "long.csv", "csv")
    assert [row["text"] for row in rows] == [document, "short"]
