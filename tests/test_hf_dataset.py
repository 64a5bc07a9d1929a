"""transmodal-hf's ``hf-dataset``: a Hugging Face ``datasets`` dataset on this machine, columns mapped to
modalities as ``manifest`` maps them. Every test runs with network connections refused: nothing may download."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transmodal_hf")
datasets = pytest.importorskip("datasets")
pytest.importorskip("PIL")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import transmodal  # noqa: E402
from transmodal.cli import main  # noqa: E402
from transmodal.config import parse_experiment  # noqa: E402
from transmodal.data import presence_key  # noqa: E402
from transmodal.errors import ConfigError, DataError  # noqa: E402
from transmodal.images import decode_rgb  # noqa: E402
from transmodal.plugins import Plugins  # noqa: E402
from transmodal_hf import plugin  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
NAMES = list(COLOURS)  # the ClassLabel's order, which is not alphabetical
SIZE = 8


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hf() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-hf", plugin)])


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _columns(count: int, start: int = 0) -> dict[str, list[Any]]:
    """Colour-coded images and captions; label i % 3 (an index into NAMES)."""
    labels = [(start + i) % 3 for i in range(count)]
    return {"caption": [f"a {NAMES[label]} thing" for label in labels],
            "picture": [Image.open(io.BytesIO(_png(COLOURS[NAMES[label]]))) for label in labels],
            "label": labels}



def _features() -> Any:
    return datasets.Features({"caption": datasets.Value("string"), "picture": datasets.Image(),
                              "label": datasets.ClassLabel(names=NAMES)})


def _dataset_dict(folder: Path, sizes: dict[str, int]) -> Path:
    parts, start = {}, 0
    for name, count in sizes.items():
        parts[name] = datasets.Dataset.from_dict(_columns(count, start), features=_features())
        start += count
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


MODALITIES = {"image": {"kind": "image", "column": "picture"}, "text": {"kind": "text", "column": "caption"}}


def build(hf: Plugins, path: Path | str, **params: Any) -> transmodal.DatasetBundle:
    params = {"modalities": MODALITIES, "image_size": SIZE, **params}
    return hf.get("dataset", "hf-dataset").build(0, path=str(path), **params)


def test_a_saved_dataset_dict_trains_end_to_end(tmp_path, hf):
    folder = _dataset_dict(tmp_path / "colours", {"train": 24, "validation": 9, "test": 6})
    bundle = build(hf, folder)
    assert bundle.classes == NAMES  # the ClassLabel's names, in its order
    assert bundle.modalities == {"image": "image", "text": "text"}
    assert (len(bundle.train), len(bundle.evaluation["source/val"]), len(bundle.evaluation["source/test"])) == \
        (24, 9, 6)
    val = bundle.evaluation["source/val"].data
    assert val["label"].tolist() == [(24 + i) % 3 for i in range(9)]
    assert val["text"][0] == f"a {NAMES[val['label'][0]]} thing"
    # Each image is the core's decoding of the stored PNG: same resize, crop and channel order as manifest's.
    expected = decode_rgb(io.BytesIO(_png(COLOURS[NAMES[val["label"][0]]])), SIZE)
    assert val["image"].dtype == torch.uint8 and val["image"].shape == (9, 3, SIZE, SIZE)
    assert val["image"][0].flatten().tolist() == list(expected)

    raw = {
        "name": "hf-colours",
        "data": {"dataset": {"name": "hf-dataset", "path": str(folder), "modalities": MODALITIES,
                             "image_size": SIZE}},
        "model": {"encoders": {"image": {"name": "small-cnn", "channels": [4, 8]},
                               "text": {"name": "bow", "embedding_dim": 8}},
                  "fusion": {"name": "concat", "hidden": 16}},
        "adaptation": [],
        "trainer": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "num_threads": 1},
        "output": {"dir": str(tmp_path / "runs")},
    }
    summary, run_dir = transmodal.train(parse_experiment(raw), quiet=True, plugins=hf)
    assert summary["epochs"] == 2 and set(summary["final"]) == {"source/val", "source/test"}
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_parquet_files_with_domain_and_split_columns(tmp_path, hf):
    rows = _columns(18)
    rows["label"] = [NAMES[label] for label in rows["label"]]  # plain strings: classes in sorted order
    rows["domain"] = ["sketch" if i % 3 == 0 and i >= 6 else "web" for i in range(18)]
    rows["split"] = [["train", "train", "val", "test"][i % 4] for i in range(18)]
    rows["label"][9] = None  # a target row without a label: unlabelled data
    table = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "caption": datasets.Value("string"), "picture": datasets.Image(), "label": datasets.Value("string"),
        "domain": datasets.Value("string"), "split": datasets.Value("string")}))
    (tmp_path / "data").mkdir()
    table.select(range(10)).to_parquet(str(tmp_path / "data" / "part-0.parquet"))
    table.select(range(10, 18)).to_parquet(str(tmp_path / "data" / "part-1.parquet"))
    bundle = build(hf, tmp_path / "data" / "*.parquet", split="split",
                   domain={"column": "domain", "source": "web", "target": "sketch"})
    assert bundle.classes == sorted(NAMES)
    web = [i for i in range(18) if rows["domain"][i] == "web"]
    sketch = [i for i in range(18) if rows["domain"][i] == "sketch"]
    assert len(bundle.train) == sum(rows["split"][i] == "train" for i in web)
    assert len(bundle.evaluation["source/val"]) == sum(rows["split"][i] == "val" for i in web)
    assert len(bundle.unlabelled) == sum(rows["split"][i] == "train" or rows["label"][i] is None for i in sketch)
    assert bundle.unlabelled.data["domain"].eq(1).all() and not bundle.unlabelled.has_labels
    # images survive Parquet: every training image is its label's colour
    train = bundle.train.data
    for image, label in zip(train["image"], train["label"].tolist()):
        assert image[:, SIZE // 2, SIZE // 2].tolist() == list(COLOURS[bundle.classes[label]])


def test_class_labels_name_the_classes_and_the_domains(tmp_path, hf):
    names = ["neg", "pos", "neutral"]
    table = datasets.Dataset.from_dict(
        {"text": ["bad", "good", "meh", "awful", "great", "so so", "bad!", "fine"],
         "label": [0, 1, 2, 0, 1, 2, -1, 1], "site": [0, 0, 0, 0, 0, 0, 1, 1]},
        features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names),
                                    "site": datasets.ClassLabel(names=["web", "forum"])}))
    table.save_to_disk(str(tmp_path / "reviews"))
    bundle = build(hf, tmp_path / "reviews", modalities={"text": {"kind": "text", "column": "text"}},
                   domain={"column": "site", "source": "web", "target": "forum"}, val_fraction=0.0,
                   target_test_fraction=1.0)
    assert bundle.classes == names
    assert sorted(bundle.train.data["text"]) == sorted(["bad", "good", "meh", "awful", "great", "so so"])
    assert bundle.train.data["label"].tolist() == [0, 1, 2, 0, 1, 2]  # the dataset's own indices
    assert bundle.evaluation["target/test"].data["text"] == ["fine"]  # -1: no label, so unlabelled
    assert bundle.unlabelled.data["text"] == ["bad!"]


@pytest.mark.parametrize(("params", "message"), [
    ({"modalities": {"text": {"kind": "text", "column": "captoin"}}},
     r"data\.dataset\.modalities\.text\.column: colours has no column 'captoin'\. Did you mean: caption\?"),
    ({"label": "lable"}, r"data\.dataset\.label: colours has no column 'lable'\. Did you mean: label\?"),
    ({"splits": {"tset": "test"}}, r"data\.dataset\.splits: .*no split 'tset'\. Did you mean: test\?"),
    ({"split": "caption"}, r"data\.dataset\.split: .*DatasetDict split into train, test already"),
])
def test_unknown_columns_and_splits_say_what_was_meant(tmp_path, hf, params, message):
    folder = _dataset_dict(tmp_path / "colours", {"train": 6, "test": 3})
    with pytest.raises(ConfigError, match=message):
        build(hf, folder, **params)


def test_a_split_with_another_name_must_be_mapped(tmp_path, hf):
    folder = _dataset_dict(tmp_path / "colours", {"train": 6, "holdout": 3})
    with pytest.raises(ConfigError, match=r"split 'holdout' that is none of train, validation, test; .*"
                                          r"splits: \{holdout: train\}"):
        build(hf, folder)
    bundle = build(hf, folder, splits={"holdout": "test"})
    assert len(bundle.train) == 6 and len(bundle.evaluation["source/test"]) == 3


def test_undecodable_images_are_refused_or_skipped(tmp_path, hf):
    columns = _columns(6)
    columns["picture"] = [_png(COLOURS["red"]) for _ in range(6)]
    columns["picture"][4] = b"not an image"
    datasets.Dataset.from_dict(columns, features=_features()).save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(DataError, match=r"1 images of modality 'image' \(column 'picture'\) cannot be decoded: "
                                        r"hf-dataset: .*broken row 5\. .*on_missing"):
        build(hf, tmp_path / "broken")
    bundle = build(hf, tmp_path / "broken", on_missing="skip", val_fraction=0.0)
    assert len(bundle.train) == 5 and "1 rows with an undecodable image skipped" in bundle.description


def test_a_hub_name_is_refused_without_touching_the_network(tmp_path, hf, capsys):
    with pytest.raises(ConfigError, match=r"'stanfordnlp/imdb' is not a folder or file on this machine, and "
                                          r"hf-dataset never downloads\. .*datasets\.load_dataset\('stanfordnlp/imdb'\)"
                                          r"\.save_to_disk\('DIR'\)"):
        build(hf, "stanfordnlp/imdb")
    with pytest.raises(DataError, match=r"no folder or file at .*missing\.parquet"):
        build(hf, tmp_path / "missing.parquet")
    # through the CLI: one line, exit 2, before a run directory exists
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "data": {"dataset": {"name": "hf-dataset", "path": "imdb", "modalities": MODALITIES}},
        "model": {"encoders": {"image": {"name": "small-cnn"}, "text": {"name": "bow"}}},
        "adaptation": [], "output": {"dir": str(tmp_path / "runs")}}))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.dataset.path: 'imdb' is not a folder") and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_folder_of_data_files_is_named_by_a_glob(tmp_path, hf):
    (tmp_path / "files").mkdir()
    with pytest.raises(ConfigError, match=r"not a folder written by save_to_disk .*path: .*files/\*\.parquet"):
        build(hf, tmp_path / "files")


def test_csv_with_image_paths_relative_to_its_folder(tmp_path, hf):
    (tmp_path / "data" / "img").mkdir(parents=True)
    lines = ["file,caption,label"]
    for index in range(6):
        name = NAMES[index % 3]
        (tmp_path / "data" / "img" / f"{index}.png").write_bytes(_png(COLOURS[name]))
        lines.append(f"img/{index}.png,a {name} thing,{name}" if index != 2 else f",a {name} thing,{name}")
    (tmp_path / "data" / "rows.csv").write_text("\n".join(lines) + "\n")
    bundle = build(hf, tmp_path / "data" / "rows.csv", val_fraction=0.0,
                   modalities={"image": {"kind": "image", "column": "file"}, "text": {"kind": "text",
                                                                                    "column": "caption"}})
    train = bundle.train.data
    assert train[presence_key("image")].tolist() == [index != 2 for index in range(6)]  # an empty cell: absent
    assert train["image"][0, :, 0, 0].tolist() == list(COLOURS["red"])
