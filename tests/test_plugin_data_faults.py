"""Data faults in the plugins' datasets that were once silent or reported as bugs: text-csv domains and labels,
a truncated WAV file, image-folder's image suffixes. Each test skips where its plugin is not installed (the core
alone)."""

from __future__ import annotations

import warnings
import wave
from pathlib import Path

import pytest

from transmodal.errors import DataError, DataWarning


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["text,label,domain"] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def reviews(kitchen: str = "kitchen", count: int = 6) -> list[tuple[str, str, str]]:
    """Book reviews (source) and kitchen reviews (target), the kitchen rows' domain spelt ``kitchen``."""
    rows = []
    for index in range(count):
        rows += [(f"great book {index}", "pos", "books"), (f"dull book {index}", "neg", "books"),
                 (f"great blender {index}", "pos", kitchen), (f"leaky kettle {index}", "neg", kitchen)]
    return rows


# -- text-csv: domains ----------------------------------------------------------------------------------------


def test_text_csv_domain_with_surrounding_spaces_is_the_target_not_labelled_source_data(tmp_path: Path) -> None:
    pytest.importorskip("transmodal_text")
    from transmodal_text.datasets import build_text_csv
    from transmodal_text.params import TextCSVParams

    path = write_csv(tmp_path / "reviews.csv", reviews(kitchen="kitchen "))
    bundle = build_text_csv(TextCSVParams(path=path, domain_column="domain", target_domain="kitchen"))
    assert all("book" in text for text in bundle.train.data["text"])  # no target row (and label) in training
    assert len(bundle.unlabelled) + len(bundle.evaluation["target/test"]) == 12
    # A target_domain written with spaces names the same domain.
    spaced = build_text_csv(TextCSVParams(path=path, domain_column="domain", target_domain=" kitchen "))
    assert len(spaced.unlabelled) == len(bundle.unlabelled)


def test_text_csv_refuses_a_target_domain_spelt_in_another_case(tmp_path: Path) -> None:
    pytest.importorskip("transmodal_text")
    from transmodal_text.datasets import build_text_csv
    from transmodal_text.params import TextCSVParams

    rows = reviews()
    rows[2] = ("great blender", "pos", "Kitchen")  # line 4
    path = write_csv(tmp_path / "reviews.csv", rows)
    with pytest.raises(DataError, match=r"reviews\.csv line 4: domain 'Kitchen' differs from the target domain "
                                        r"'kitchen' only in case .*\['Kitchen', 'books', 'kitchen'\]"):
        build_text_csv(TextCSVParams(path=path, domain_column="domain", target_domain="kitchen"))


def test_text_csv_refuses_a_test_file_domain_that_is_neither_target_nor_source(tmp_path: Path) -> None:
    pytest.importorskip("transmodal_text")
    from transmodal_text.datasets import build_text_csv
    from transmodal_text.params import TextCSVParams

    train = write_csv(tmp_path / "train.csv", reviews())
    test = write_csv(tmp_path / "test.csv", [("fine book", "pos", "books"), ("good pan", "pos", "kitchn")])
    with pytest.raises(DataError, match=r"test\.csv line 3: domain 'kitchn' is neither the target domain 'kitchen' "
                                        r"nor a source domain"):
        build_text_csv(TextCSVParams(path=train, test_path=test, domain_column="domain", target_domain="kitchen"))
    write_csv(test, [("fine book", "pos", " books"), ("good pan", "pos", "kitchen ")])
    bundle = build_text_csv(TextCSVParams(path=train, test_path=test, domain_column="domain",
                                          target_domain="kitchen"))
    assert len(bundle.evaluation["source/test"]) == len(bundle.evaluation["target/test"]) == 1


# -- text-csv: classes ----------------------------------------------------------------------------------------


def test_text_csv_refuses_a_label_only_the_test_file_has(tmp_path: Path) -> None:
    pytest.importorskip("transmodal_text")
    from transmodal_text.datasets import build_text_csv
    from transmodal_text.params import TextCSVParams

    train = write_csv(tmp_path / "train.csv", [(f"text {i}", str(i % 2), "a") for i in range(10)])
    test = write_csv(tmp_path / "test.csv", [("text x", "1", "a"), ("text y", "1.0", "a")])
    with pytest.raises(DataError, match=r"test\.csv line 3: label '1\.0' is not one of the classes \['0', '1'\] "
                                        r"\(1 such rows\): it never occurs in the training file .*train\.csv"):
        build_text_csv(TextCSVParams(path=train, test_path=test))
    # Listed in classes, it is a class training never sees, evaluated on purpose.
    bundle = build_text_csv(TextCSVParams(path=train, test_path=test, classes=["0", "1", "1.0"]))
    assert bundle.classes == ["0", "1", "1.0"]
    assert bundle.evaluation["source/test"].data["label"].tolist() == [1, 2]


def test_text_csv_refuses_a_class_listed_twice() -> None:
    pytest.importorskip("transmodal_text")
    from pydantic import ValidationError
    from transmodal_text.params import TextCSVParams

    with pytest.raises(ValidationError, match="class '1' is listed more than once"):
        TextCSVParams(path=Path("t.csv"), classes=["2", "1", "1", "0"])
    assert TextCSVParams(path=Path("t.csv"), classes=["2", "1", "0"]).classes == ["2", "1", "0"]


# -- audio-folder: a truncated WAV ----------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "cut"), [(1, 1), (2, 2)])
def test_a_wav_file_whose_data_ends_before_its_header_says_is_refused_by_name(tmp_path: Path, channels: int,
                                                                             cut: int) -> None:
    pytest.importorskip("transmodal_audio")
    from transmodal_audio.wav import read_wav

    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(8000)
        file.writeframes(bytes(400 * 2 * channels))  # 400 frames of 16 bits per channel
    path.write_bytes(path.read_bytes()[: 44 + 100 * 2 * channels + cut])  # the header still says 400 frames
    with pytest.raises(DataError, match=r"clip\.wav is truncated: its header promises 400 frames"):
        read_wav(path, 8000, 400)
    path.write_bytes(path.read_bytes()[: 44 + 100 * 2 * channels])  # whole frames, still fewer than promised
    with pytest.raises(DataError, match=r"its data holds 100;"):
        read_wav(path, 8000, 400)
    assert read_wav(path, 8000, 100).shape == (100,)  # a clip within what the file holds is read


# -- image-folder: the suffixes predict takes -----------------------------------------------------------------


def test_image_folder_reads_every_suffix_predict_takes_and_counts_the_files_it_skips(tmp_path: Path) -> None:
    pytest.importorskip("transmodal_vision")
    image = pytest.importorskip("PIL.Image")
    from transmodal.images import IMAGE_SUFFIXES
    from transmodal_vision.image_folder import build_image_folder
    from transmodal_vision.params import ImageFolderParams

    suffixes = sorted(IMAGE_SUFFIXES)
    assert {".bmp", ".tif", ".tiff"} <= IMAGE_SUFFIXES
    for name, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0))):
        (tmp_path / name).mkdir()
        for index, suffix in enumerate(suffixes):
            image.new("RGB", (8, 8), colour).save(tmp_path / name / f"{index}{suffix.upper() if index % 2 else suffix}")
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    (tmp_path / "green" / "README").write_text("not an image")
    (tmp_path / "green" / ".DS_Store").write_bytes(b"hidden: skipped without a word")
    params = ImageFolderParams(root=tmp_path, image_size=8, num_workers=1, val_fraction=0.0, test_fraction=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = build_image_folder(params)
    assert len(bundle.train) == 2 * len(suffixes)
    shown = [str(warning.message) for warning in caught if issubclass(warning.category, DataWarning)]
    assert len(shown) == 1 and "skipped 2 file(s) that are not images (no suffix: 1, .txt: 1)" in shown[0]


def test_image_folder_names_a_cache_folder_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("transmodal_vision")
    from transmodal.errors import ConfigError
    from transmodal_vision.image_folder import build_image_folder
    from transmodal_vision.params import ImageFolderParams

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TRANSMODAL_CACHE_DIR", str(tmp_path / "a-file"))
    (tmp_path / "images" / "red").mkdir(parents=True)
    with pytest.raises(ConfigError, match="TRANSMODAL_CACHE_DIR .*a-file cannot hold the image cache"):
        build_image_folder(ImageFolderParams(root=tmp_path / "images", image_size=8, num_workers=1))
