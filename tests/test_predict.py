"""Using a trained model: predict on files, texts and manifests, evaluate on other data, and a run directory that
keeps working after it is moved and its training data deleted."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

import transmodal
from conftest import exported_shapes_experiment
from transmodal.cli import main
from transmodal.errors import InputError

pytest.importorskip("PIL")


def _manifest_run(root: Path) -> tuple[Path, Path]:
    """A 1-epoch image + caption run trained from exported synthetic-shapes files; returns (run, data folder)."""
    experiment, data = exported_shapes_experiment(root, [{"name": "dann"}])
    _, run_dir = transmodal.train(experiment, quiet=True)
    return run_dir, data


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSMODAL_CACHE_DIR", str(root / "cache"))
        return _manifest_run(root)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as file:
        return list(csv.DictReader(file))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_predict_agrees_with_the_trainers_evaluation_of_the_same_samples(trained, tmp_path):
    run_dir, data = trained
    metrics, _ = transmodal.evaluate_run(run_dir, detailed=True)
    val_rows = [row for row in _rows(data / "manifest.csv") if row["domain"] == "source" and row["split"] == "val"]
    subset = _write(data / "source-val.csv", val_rows)
    model = transmodal.load(run_dir)
    records = model.predict(subset, top_k=len(model.classes))
    confusion = torch.zeros(len(model.classes), len(model.classes), dtype=torch.int64)
    for row, record in zip(val_rows, records):
        confusion[model.classes.index(row["label"]), model.classes.index(record["prediction"])] += 1
        assert abs(sum(entry["probability"] for entry in record["top_k"]) - 1) < 1e-5
    assert confusion.tolist() == metrics["source/val"]["confusion"]
    assert sum(metrics["source/val"]["per_class"][c]["support"] for c in model.classes) == len(val_rows)


def test_predict_reads_files_folders_texts_and_writes_csv_or_jsonl(trained, tmp_path, capsys):
    run_dir, data = trained
    images = sorted((data / "images" / "source-val").glob("*.png"))[:3]
    assert main(["predict", str(run_dir), *map(str, images), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "input,prediction,probability,class_2,probability_2"
    assert [line.split(",")[0] for line in lines[1:]] == [str(image) for image in images]

    folder = tmp_path / "folder"
    folder.mkdir()
    for image in images:
        shutil.copy(image, folder / image.name)
    model = transmodal.load(run_dir)
    by_folder = model.predict(folder)
    by_files = model.predict(images)
    assert [r["probability"] for r in by_folder] == [r["probability"] for r in by_files]
    # Batched or not, the same predictions.
    assert [r["probability"] for r in model.predict(images, batch_size=1)] == pytest.approx(
        [r["probability"] for r in by_files], abs=1e-6)

    texts = tmp_path / "texts.txt"
    texts.write_text("a calm red circle\n\nsomething angry at the top\n")
    output = tmp_path / "out.jsonl"
    assert main(["predict", str(run_dir), str(texts), "--output", str(output)]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["input"] for r in records] == [f"{texts}:1", f"{texts}:3"]
    direct = model.predict(["a calm red circle", "something angry at the top"])
    assert [{**r, "input": None} for r in records] == [{**r, "input": None} for r in direct]


def test_missing_modalities_are_absent_not_zero_filled_inputs(trained):
    run_dir, _ = trained
    model = transmodal.load(run_dir)
    text_only = model.predict(["a calm red circle"], top_k=len(model.classes))[0]
    through_mapping = model.predict({"text": ["a calm red circle"], "image": [None]}, top_k=len(model.classes))[0]
    assert text_only["top_k"] == through_mapping["top_k"]


@pytest.mark.parametrize("arguments, message", [
    (["{data}/not-there.png"], "No image file"),
    (["{bad}"], "Cannot decode"),
    (["hello", "--modality", "caption"], "--modality caption: the model's modalities are image (image), text"),
    (["{data}/images", "--modality", "text"], "the inputs are image but modality 'text' takes text"),
    (["{data}/../empty.csv"], "holds no rows"),
    (["{latin}"], "line 2 is not utf-8 text (byte 0xe9 at offset 20); save it as UTF-8"),
    ([""], "input 1 is an empty string"),  # not the working directory and every image below it
    (["hello", "--output", "{tmp}"], "is a folder; name the file to write"),
    (["hello", "--output", ""], "is a folder; name the file to write"),
    (["hello", "--output", "/proc/predictions.csv"], "cannot write it"),
    (["hello", "--output", "{tmp}/predictions.json"], "predictions are written as .csv or .jsonl"),
    (["hello", "--device", "mps"], "'mps' is not supported; use auto, cpu, cuda or cuda:N"),
])
def test_bad_inputs_exit_2_with_one_line(trained, tmp_path, capsys, arguments, message):
    run_dir, data = trained
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    (data.parent / "empty.csv").write_text("image,text\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,text\nx.png,caf\u00e9\n".encode("latin-1"))
    filled = [a.format(data=data, bad=bad, tmp=tmp_path, latin=latin) for a in arguments]
    assert main(["predict", str(run_dir), *filled]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_row_without_any_modality_is_refused_by_its_id(trained, tmp_path, capsys):
    run_dir, _ = trained
    manifest = tmp_path / "rows.csv"
    manifest.write_text("id,text\nfirst,a calm red circle\nsecond,\n")
    assert main(["predict", str(run_dir), str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "1 inputs have none of the model's modalities" in err and "e.g. second;" in err


def test_predictions_never_replace_an_input_or_a_file_of_the_model(trained, tmp_path, capsys):
    run_dir, _ = trained
    inputs = tmp_path / "inputs.csv"
    inputs.write_text("text\na calm red circle\n")
    before = {path: path.read_bytes() for path in [inputs, *run_dir.rglob("*")] if path.is_file()}
    assert main(["predict", str(run_dir), str(inputs), "--output", str(inputs)]) == 2
    assert "is one of the inputs, which writing the predictions would replace" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "hello", "--output", str(run_dir / "metrics.jsonl")]) == 2
    assert "is inside the model's folder" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in before} == before


def test_a_moved_run_without_its_training_data_evaluates_predicts_and_exports(trained, tmp_path, capsys):
    run_dir, data = trained
    moved_data = tmp_path / "new-data"
    shutil.copytree(data, moved_data)
    moved = tmp_path / "elsewhere" / run_dir.name
    shutil.copytree(run_dir, moved)
    labelled = _write(moved_data / "labelled.csv", [r for r in _rows(moved_data / "manifest.csv") if r["label"]])
    original = transmodal.load(run_dir).predict(labelled)
    hidden = data.rename(data.parent / "data-hidden")  # the training data is gone ...
    try:
        assert main(["evaluate", str(moved), "--data", str(labelled), "--json"]) == 0
        assert transmodal.load(moved).predict(labelled) == original
        assert main(["export", str(moved), "--output", str(tmp_path / "bundle")]) == 0
        assert transmodal.load(tmp_path / "bundle").predict(labelled) == original
        assert main(["evaluate", str(tmp_path / "bundle"), "--data", str(labelled)]) == 0
        # a bundle has no splits of its own, and --data is a file
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / "bundle")]) == 2
        assert "is an exported model: it has no dataset" in capsys.readouterr().err
        assert main(["evaluate", str(moved), "--data", str(moved_data)]) == 2
        assert "is a folder; give a manifest file" in capsys.readouterr().err
        # ... and the run's own splits, which live in that data, say so instead of failing deep inside
        assert main(["evaluate", str(moved)]) != 0
    finally:
        hidden.rename(data)


def test_evaluate_data_reports_per_class_metrics_and_refuses_unknown_labels(trained, tmp_path, capsys):
    run_dir, data = trained
    rows = [row for row in _rows(data / "manifest.csv") if row["label"]]
    for row in rows:
        row["path"] = str(data / row["path"])
    manifest = _write(tmp_path / "labelled.csv", rows)
    assert main(["evaluate", str(run_dir), "--data", str(manifest), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = result["metrics"]["labelled.csv"]
    assert metrics["samples"] == len(rows)
    assert sum(map(sum, metrics["confusion"])) == len(rows)
    assert set(metrics["per_class"]) == set(transmodal.load(run_dir).classes)

    rows[0]["label"] = "purple elephant"
    _write(manifest, rows)
    assert main(["evaluate", str(run_dir), "--data", str(manifest)]) == 2
    assert "purple elephant are not among the model's classes" in capsys.readouterr().err


def test_evaluate_data_from_a_config_matches_the_run_on_its_own_dataset(trained):
    run_dir, _ = trained
    from transmodal.evaluate_data import evaluate_on

    own, _ = transmodal.evaluate_run(run_dir)
    other, _ = evaluate_on(run_dir, run_dir / "config.yaml")
    for split, metrics in own.items():
        assert other[split]["accuracy"] == pytest.approx(metrics["accuracy"])
        assert other[split]["loss"] == pytest.approx(metrics["loss"], rel=1e-5)



def test_evaluate_data_from_a_config_of_another_image_size_is_refused(trained, tmp_path):
    import yaml

    from transmodal.errors import InputError
    from transmodal.evaluate_data import evaluate_on

    run_dir, _ = trained
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    size = config["data"]["dataset"]["image_size"]
    config["data"]["dataset"]["image_size"] = 2 * size
    (tmp_path / "larger.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(InputError, match=f"samples have shape \\(3, {2 * size}, {2 * size}\\), the model takes "
                                         f"\\(3, {size}, {size}\\)"):
        evaluate_on(run_dir, tmp_path / "larger.yaml")


def test_config_yaml_records_every_component_parameter_with_its_default(trained):
    import yaml

    run_dir, _ = trained
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["fusion"]["batchnorm"] is False  # concat's default, not given in the experiment
    assert config["adaptation"][0]["weight"] == 1.0  # dann's default
    assert config["data"]["dataset"]["on_missing"] == "error"
    assert config["data"]["tokenizer"]["max_length"] > 0
    # and it loads back as the same experiment
    assert transmodal.load_experiment(run_dir / "config.yaml").model.fusion.params["hidden"] == 32


def test_python_api_refuses_a_wrong_modality_name(trained):
    run_dir, _ = trained
    with pytest.raises(InputError, match="no modality caption"):
        transmodal.load(run_dir).predict({"caption": ["hello"]})


@pytest.mark.parametrize("inputs, message", [
    (torch.zeros(2, 3, 32, 32), "input 1 is a Tensor: give file paths or texts"),
    ([1, 2], "input 1 is a int"),
    ([None], "input 1 is a NoneType"),
    (b"abc", "input 1 is a int"),
    ({"text": "a calm red circle"}, "'text': give a list with one value per sample, not a str"),
    ({"text": [5]}, "a text is given as a str, not int"),
])
def test_python_api_refuses_inputs_it_would_misread(trained, inputs, message):
    with pytest.raises(InputError, match=message):
        transmodal.load(trained[0]).predict(inputs)


@pytest.mark.parametrize("option", [{"top_k": "3"}, {"top_k": 0}, {"batch_size": 2.5}, {"batch_size": True}])
def test_python_api_refuses_a_count_that_is_not_a_positive_whole_number(trained, option):
    with pytest.raises(InputError, match="must be a whole number of at least 1"):
        transmodal.load(trained[0]).predict(["a calm red circle"], **option)



def test_python_api_takes_numpys_whole_numbers_as_counts(trained):
    numpy = pytest.importorskip("numpy")
    records = transmodal.load(trained[0]).predict(["a calm red circle"], top_k=numpy.int64(2),
                                                   batch_size=numpy.int32(8))
    assert len(records[0]["top_k"]) == 2


def test_a_long_text_or_one_starting_with_a_tilde_is_a_text_not_a_path(trained):
    model = transmodal.load(trained[0])
    for text in ("circle " * 60, "~nobody-by-this-name said circle"):
        assert len(model.predict([text])) == 1


def test_python_api_takes_image_tensors_as_the_files_they_were_decoded_from(trained):
    run_dir, data = trained
    from transmodal.images import decode_rgb

    rows = [row for row in _rows(data / "manifest.csv") if row["split"] == "val"][:6]
    paths = [data / row["path"] for row in rows]
    texts = [row["caption"] for row in rows]
    model = transmodal.load(run_dir)
    decoded = torch.stack([torch.frombuffer(bytearray(decode_rgb(path, 32)), dtype=torch.uint8).view(3, 32, 32)
                           for path in paths])
    from_files = model.predict({"image": paths, "text": texts})
    from_tensors = model.predict({"image": decoded, "text": texts})
    assert [r["top_k"] for r in from_tensors] == [r["top_k"] for r in from_files]
    with pytest.raises(InputError, match=r"uint8 image tensors of shape \(3, 32, 32\)"):
        model.predict({"image": decoded.float() / 255, "text": texts})
    with pytest.raises(InputError, match="a file path or a uint8 tensor"):
        model.predict({"image": [3] * len(texts), "text": texts})


@pytest.mark.parametrize("cells", [["nan", "0.5"], ["inf", "0.5"], ["1e39", "0.5"], ["0.5 -inf"]])
def test_a_vector_cell_that_is_no_finite_number_is_refused_with_its_line(cells):
    from pathlib import Path

    from transmodal.errors import InputError
    from transmodal.predict import _vector_cells

    columns = ["a", "b"][: len(cells)]
    with pytest.raises(InputError, match="new.csv line 3: column"):
        _vector_cells(cells, Path("new.csv"), 3, columns)
    assert _vector_cells(["0.25", "1e3"], Path("new.csv"), 3, ["a", "b"]) == [0.25, 1000.0]
