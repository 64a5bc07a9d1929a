"""transmodal-text datasets: IMDB from an aclImdb_v1 archive written here in the real layout, safe extraction,
and custom CSV/JSONL files. Nothing is downloaded: the "download" reads a file:// URL."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transmodal_text")

import transmodal
from transmodal.config import parse_experiment
from transmodal.errors import ConfigError, DataError
from transmodal.plugins import Plugins
from transmodal_text import plugin as text_plugin

POSITIVE = ["A wonderful film.<br /><br />The cast is superb!", "Loved it; great story and music.",
            "Brilliant acting, I'd watch it again.", "A touching, funny and clever movie."]
NEGATIVE = ["Dull and far too long.<br />I left early.", "Awful script, wooden acting.",
            "The worst film I've seen this year.", "Boring. Nothing happens at all."]
UNLABELLED = ["Saw it on TV last night.<br /><br />Not sure what to think.", "My brother liked it more than me."]


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-text", text_plugin)])


def build(plugins: Plugins, name: str, seed: int = 0, **params):
    return plugins.get("dataset", name).build(seed, **params)


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_aclimdb(path: Path, per_class: int = 8, extra: list[tuple[str, bytes, bytes, str]] = ()) -> Path:
    """aclImdb_v1.tar.gz as published: aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt, train/unsup,
    the vocabulary and README files; reviews with <br /> tags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "aclImdb", kind=tarfile.DIRTYPE)
        _add(tar, "aclImdb/README", b"Large Movie Review Dataset v1.0\n")
        _add(tar, "aclImdb/imdb.vocab", b"the\nand\na\n")
        for split in ("train", "test"):
            _add(tar, f"aclImdb/{split}", kind=tarfile.DIRTYPE)
            for label, reviews, ratings in (("pos", POSITIVE, (7, 8, 9, 10)), ("neg", NEGATIVE, (1, 2, 3, 4))):
                _add(tar, f"aclImdb/{split}/{label}", kind=tarfile.DIRTYPE)
                for index in range(per_class):
                    text = f"{reviews[index % len(reviews)]} ({split} {label} review {index})"
                    name = f"aclImdb/{split}/{label}/{index}_{ratings[index % 4]}.txt"
                    _add(tar, name, text.encode())
            _add(tar, f"aclImdb/{split}/urls_pos.txt", b"http://www.imdb.com/title/tt0000001/usercomments\n")
        _add(tar, "aclImdb/train/unsup", kind=tarfile.DIRTYPE)
        for index in range(6):
            _add(tar, f"aclImdb/train/unsup/{index}_0.txt", UNLABELLED[index % 2].encode())
        for name, data, kind, link in extra:
            _add(tar, name, data, kind, link)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_imdb_downloads_checks_extracts_and_splits(plugins: Plugins, tmp_path: Path) -> None:
    archive = write_aclimdb(tmp_path / "mirror" / "aclImdb_v1.tar.gz")
    root = tmp_path / "data"
    params = {"root": str(root), "download": True, "url": archive.as_uri(), "sha256": sha256(archive),
              "val_size": 4, "unlabelled": True}
    bundle = build(plugins, "imdb", **params)
    assert (root / "aclImdb_v1.tar.gz").is_file() and (root / "aclImdb" / "train" / "pos").is_dir()
    assert not list(root.glob(".*")) and not list(root.glob("*.part"))  # no staging or partial file left
    assert bundle.modalities == {"text": "text"} and bundle.classes == ["neg", "pos"]
    assert len(bundle.train) == 12 and len(bundle.evaluation["source/val"]) == 4
    assert len(bundle.evaluation["source/test"]) == 16
    assert len(bundle.unlabelled) == 6 and not bundle.unlabelled.has_labels
    assert any("<br />" in text for text in bundle.train.data["text"])  # the tokenizer removes them, not the loader
    test = bundle.evaluation["source/test"].data
    for text, label in zip(test["text"], test["label"].tolist()):
        assert f"test {bundle.classes[label]} review" in text
    # Validation comes from train by seed: no overlap, same seed same split, another seed another one.
    assert not set(bundle.train.data["text"]) & set(bundle.evaluation["source/val"].data["text"])
    again = build(plugins, "imdb", **params)
    assert again.evaluation["source/val"].data["text"] == bundle.evaluation["source/val"].data["text"]
    other = build(plugins, "imdb", seed=1, **params)
    assert other.evaluation["source/val"].data["text"] != bundle.evaluation["source/val"].data["text"]
    # Once extracted, the archive is no longer needed.
    (root / "aclImdb_v1.tar.gz").unlink()
    subset = build(plugins, "imdb", root=str(root), val_size=2, train_size=5, test_size=3)
    assert len(subset.train) == 5 and len(subset.evaluation["source/test"]) == 3 and subset.unlabelled is None


def test_imdb_without_data_and_download_off_says_what_to_do(plugins: Plugins, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"IMDB is not in .*download: true"):
        build(plugins, "imdb", root=str(tmp_path / "nothing"))


def test_member_escaping_the_folder_is_refused(plugins: Plugins, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_aclimdb(root / "aclImdb_v1.tar.gz", extra=[("aclImdb/../../escaped.txt", b"gotcha", tarfile.REGTYPE, "")])
    with pytest.raises(DataError, match=r"refusing to extract member 'aclImdb/\.\./\.\./escaped\.txt'"):
        build(plugins, "imdb", root=str(root), sha256=sha256(root / "aclImdb_v1.tar.gz"))
    assert not (tmp_path / "escaped.txt").exists() and not (root / "escaped.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["aclImdb_v1.tar.gz"]  # nothing half-extracted


@pytest.mark.parametrize("name, kind, link", [("aclImdb/link", tarfile.SYMTYPE, "/etc/passwd"),
                                              ("aclImdb/hard", tarfile.LNKTYPE, "aclImdb/README"),
                                              ("/tmp/absolute.txt", tarfile.REGTYPE, "")])
def test_links_and_absolute_paths_are_refused(plugins: Plugins, tmp_path: Path, name: str, kind: bytes,
                                              link: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_aclimdb(root / "aclImdb_v1.tar.gz", extra=[(name, b"x", kind, link)])
    with pytest.raises(DataError, match="refusing to extract member"):
        build(plugins, "imdb", root=str(root), sha256=sha256(root / "aclImdb_v1.tar.gz"))
    assert not (root / "aclImdb").exists()


def test_truncated_archive_gives_a_clear_error(plugins: Plugins, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    complete = write_aclimdb(tmp_path / "complete.tar.gz").read_bytes()
    archive = root / "aclImdb_v1.tar.gz"
    archive.write_bytes(complete[: len(complete) * 2 // 3])
    with pytest.raises(DataError, match="truncated or corrupt.*download it again"):
        build(plugins, "imdb", root=str(root), sha256=sha256(archive))
    assert not (root / "aclImdb").exists()
    # With the published checksum, the same file is caught before extraction.
    with pytest.raises(DataError, match="expected SHA-256"):
        build(plugins, "imdb", root=str(root))


def test_download_with_a_wrong_checksum_keeps_nothing(plugins: Plugins, tmp_path: Path) -> None:
    archive = write_aclimdb(tmp_path / "mirror.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(DataError, match="does not have the expected SHA-256"):
        build(plugins, "imdb", root=str(root), download=True, url=archive.as_uri(), sha256="0" * 64)
    assert list(root.iterdir()) == []
    with pytest.raises(DataError, match="could not download"):
        build(plugins, "imdb", root=str(root), download=True, url=(tmp_path / "missing.tar.gz").as_uri())


# -- text-csv ---------------------------------------------------------------------------------------------------


def write_reviews_csv(path: Path) -> Path:
    lines = ["text,label,domain"]
    for index in range(10):
        lines.append(f'"Great book, read it twice ({index})",pos,books')
        lines.append(f'"Dull book ({index})",neg,books')
        lines.append(f'"This blender works well ({index})",pos,kitchen')
        lines.append(f'"Broke after a week ({index})",neg,kitchen')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_csv_with_a_target_domain(plugins: Plugins, tmp_path: Path) -> None:
    path = write_reviews_csv(tmp_path / "reviews.csv")
    bundle = build(plugins, "text-csv", path=str(path), domain_column="domain", target_domain="kitchen",
                   test_fraction=0.2, val_fraction=0.25)
    assert bundle.classes == ["neg", "pos"]
    assert set(bundle.evaluation) == {"source/val", "source/test", "target/test"}
    assert len(bundle.evaluation["source/test"]) == 4 and len(bundle.evaluation["target/test"]) == 4
    assert len(bundle.evaluation["source/val"]) == 4 and len(bundle.train) == 12
    assert len(bundle.unlabelled) == 16 and not bundle.unlabelled.has_labels
    assert all("book" in text for text in bundle.train.data["text"])
    assert all("book" not in text for text in bundle.unlabelled.data["text"])
    assert all("book" not in text for text in bundle.evaluation["target/test"].data["text"])
    labels = bundle.train.data["label"]
    assert all(("Great" in t) == (label == 1) for t, label in zip(bundle.train.data["text"], labels.tolist()))
    everything = (bundle.train.data["text"] + bundle.unlabelled.data["text"]
                  + [t for split in bundle.evaluation.values() for t in split.data["text"]])
    assert len(everything) == len(set(everything)) == 40  # every row in exactly one split


def test_text_csv_from_jsonl_with_a_test_file_and_fixed_classes(plugins: Plugins, tmp_path: Path) -> None:
    def write(path: Path, count: int) -> Path:
        rows = [{"review": f"review number {i}", "stars": 1 + i % 3} for i in range(count)]
        path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n", encoding="utf-8")
        return path

    bundle = build(plugins, "text-csv", path=str(write(tmp_path / "train.jsonl", 12)),
                   test_path=str(write(tmp_path / "test.jsonl", 6)), text_column="review", label_column="stars",
                   classes=["1", "2", "3"])
    assert bundle.classes == ["1", "2", "3"] and bundle.unlabelled is None
    assert len(bundle.evaluation["source/test"]) == 6
    assert len(bundle.train) + len(bundle.evaluation["source/val"]) == 12
    assert torch.equal(bundle.evaluation["source/test"].data["label"], torch.tensor([0, 1, 2, 0, 1, 2]))


def test_text_csv_errors_name_the_problem(plugins: Plugins, tmp_path: Path) -> None:
    path = write_reviews_csv(tmp_path / "reviews.csv")
    with pytest.raises(DataError, match="no column 'body'.*'text', 'label', 'domain'"):
        build(plugins, "text-csv", path=str(path), text_column="body")
    with pytest.raises(DataError, match="target domain 'garden' does not occur.*'books', 'kitchen'"):
        build(plugins, "text-csv", path=str(path), domain_column="domain", target_domain="garden")
    with pytest.raises(ConfigError, match="name the target domain"):
        build(plugins, "text-csv", path=str(path), domain_column="domain")
    with pytest.raises(DataError, match="line 2: label 'pos' is not one of the classes"):
        build(plugins, "text-csv", path=str(path), classes=["negative", "positive"])
    (tmp_path / "empty_label.csv").write_text("text,label\nfine,pos\nalso fine,\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 3: no label in 'label'"):
        build(plugins, "text-csv", path=str(tmp_path / "empty_label.csv"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        build(plugins, "text-csv", path=str(tmp_path / "broken.jsonl"))
    with pytest.raises(ConfigError, match="cannot tell the format"):
        build(plugins, "text-csv", path=str(tmp_path / "reviews.xlsx"))


# -- end to end -------------------------------------------------------------------------------------------------


def test_imdb_lstm_trains_one_epoch_and_evaluates_from_its_checkpoint(tmp_path: Path) -> None:
    """Through the installed plugin and the core: download, tokenize, train, then evaluate the saved run the way
    another process would (the tokenizer comes back from the checkpoint, not from refitting)."""
    archive = write_aclimdb(tmp_path / "mirror" / "aclImdb_v1.tar.gz")
    raw = {
        "name": "imdb-tiny",
        "data": {
            "dataset": {"name": "imdb", "root": str(tmp_path / "data"), "download": True, "url": archive.as_uri(),
                        "sha256": sha256(archive), "val_size": 4},
            "tokenizer": {"name": "hf-word", "max_length": 24},
            "bucket_by_length": True,
        },
        "model": {
            "encoders": {"text": {"name": "lstm", "embedding_dim": 8, "hidden_dim": 8, "pooling": "mean"}},
            "fusion": {"name": "concat"},
            "head": {"name": "linear", "dropout": 0.5},
        },
        "adaptation": [{"name": "finetune"}],
        "trainer": {"epochs": 1, "batch_size": 4, "eval_batch_size": 8, "num_threads": 1},
        "output": {"dir": str(tmp_path / "runs"), "name": "run"},
    }
    summary, run_dir = transmodal.train(parse_experiment(raw), quiet=True)
    assert summary["epochs"] == 1 and summary["steps"] == 3
    assert set(summary["best"]) == {"source/val", "source/test"}
    saved = json.loads((run_dir / "tokenizers" / "text.json").read_text())
    assert saved["max_length"] == 24 and "great" in saved["tokenizer"]
    metrics, header = transmodal.evaluate_run(run_dir, "best")
    assert header["epoch"] == 1
    for split, values in summary["best"].items():
        assert metrics[split]["accuracy"] == pytest.approx(values["accuracy"])
        assert metrics[split]["loss"] == pytest.approx(values["loss"], rel=1e-5)
