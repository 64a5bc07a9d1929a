"""Exported bundles: read back by transmodal.load, giving the same outputs as the run they came from."""

from __future__ import annotations

import pytest
import torch

import transmodal
from transmodal.cli import main
from transmodal.export import sample_batch


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_experiment_dict

    root = tmp_path_factory.mktemp("export")
    # dann on target batches: per-domain BatchNorm keeps a second set of statistics, which must travel too
    _, path = transmodal.train(tiny_experiment_dict(root, "trainer.epochs=1", "trainer.device=cpu"), quiet=True)
    return path


@pytest.mark.parametrize("domain", ["source", "target"])
def test_safetensors_round_trip_gives_identical_outputs(run_dir, tmp_path, domain):
    pytest.importorskip("safetensors")
    original = transmodal.load(run_dir)
    assert main(["export", str(run_dir), "--output", str(tmp_path / "bundle")]) == 0
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "config.yaml", "model.json", "tokenizers", "weights.safetensors"]
    loaded = transmodal.load(tmp_path / "bundle")
    batch = sample_batch(original)
    assert torch.equal(loaded.forward_logits(batch, domain), original.forward_logits(batch, domain))
    assert loaded.classes == original.classes


@pytest.mark.parametrize("domain", ["source", "target"])
def test_torchscript_matches_pytorch_on_other_batch_sizes_and_text_lengths(run_dir, tmp_path, domain):
    original = transmodal.load(run_dir)
    bundle = original.export(tmp_path / "ts", "torchscript", domain)
    loaded = transmodal.load(bundle)
    assert not isinstance(loaded.model, transmodal.TransmodalModel)
    for size, length in ((1, 3), (7, 11)):
        batch = sample_batch(original, size=size, length=length)
        batch["present/text"][0] = False  # a sample without its caption
        torch.testing.assert_close(loaded.forward_logits(batch, domain), original.forward_logits(batch, domain))
    texts = ["a calm red circle", "something angry"]
    assert [r["prediction"] for r in loaded.predict(texts, domain=domain)] == [
        r["prediction"] for r in original.predict(texts, domain=domain)]
    other = "target" if domain == "source" else "source"
    with pytest.raises(transmodal.ConfigError, match=f"exported for the {domain} domain"):
        loaded.predict(texts, domain=other)


def test_export_refuses_an_existing_folder_and_leaves_nothing_half_written(run_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "taken").mkdir()
    assert main(["export", str(run_dir), "--output", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err

    import transmodal.export as export

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "trace", broken)
    with pytest.raises(OSError):
        transmodal.load(run_dir).export(tmp_path / "new", "torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_export_refuses_a_domain_it_cannot_serve_and_a_place_it_cannot_write(run_dir, tmp_path, capsys):
    trained = transmodal.load(run_dir)
    with pytest.raises(transmodal.ConfigError, match="domain 'foo': a model serves the source or the target"):
        trained.export(tmp_path / "foo", "torchscript", "foo")  # type: ignore[arg-type]
    with pytest.raises(transmodal.ConfigError, match="domain 'Target'"):
        trained.predict(["a calm red circle"], domain="Target")
    (tmp_path / "a-file").write_text("")
    assert main(["export", str(run_dir), "--output", str(tmp_path / "a-file" / "bundle")]) == 2
    assert f"{tmp_path / 'a-file'} is not a folder" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--output", "/proc/bundle"]) == 2
    assert "cannot write in /proc" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_an_exported_bundle_is_readable_by_others_as_a_plain_copy_would_be(run_dir, tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        bundle = transmodal.load(run_dir).export(tmp_path / "ts", "torchscript")
    finally:
        os.umask(umask)
    for path in [bundle, *bundle.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_a_bundle_whose_config_is_emptied_is_refused_by_name(run_dir, tmp_path):
    """An empty config.yaml reads as the default experiment: another model than the weights beside it."""
    bundle = transmodal.load(run_dir).export(tmp_path / "ts", "torchscript")
    (bundle / "config.yaml").write_text("")
    with pytest.raises(transmodal.CheckpointError, match="config.yaml is empty; a bundle's config.yaml holds"):
        transmodal.load(bundle)


def test_onnx_matches_pytorch_with_onnxruntime(run_dir, tmp_path, capsys):
    """One export for the target domain (its own BatchNorm statistics built in), run by onnxruntime."""
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    import json

    import onnxruntime

    assert main(["export", str(run_dir), "--format", "onnx", "--domain", "target",
                 "--output", str(tmp_path / "onnx")]) == 0
    assert "[torch.onnx]" not in capsys.readouterr().out  # the exporter's progress lines are kept quiet
    bundle = tmp_path / "onnx"
    assert sorted(p.name for p in bundle.iterdir()) == ["config.yaml", "model.json", "model.onnx", "tokenizers"]
    assert (bundle / "tokenizers" / "text.json").is_file()  # the tokenizer travels with the model
    original = transmodal.load(run_dir)
    loaded = transmodal.load(bundle)
    for size, length in ((1, 3), (7, 11)):
        batch = sample_batch(original, size=size, length=length)
        batch["present/text"][0] = False  # a sample without its caption
        torch.testing.assert_close(loaded.forward_logits(batch, "target"), original.forward_logits(batch, "target"),
                                   rtol=1e-4, atol=1e-5)
    texts = ["a calm red circle", "something angry"]
    assert loaded.predict(texts, domain="target")[0]["prediction"] == \
        original.predict(texts, domain="target")[0]["prediction"]
    with pytest.raises(transmodal.ConfigError, match="exported for the target domain"):
        loaded.predict(texts, domain="source")
    # Another runtime needs only the file and model.json's map of inputs to modalities.
    inputs = json.loads((bundle / "model.json").read_text())["export"]["onnx_inputs"]
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = loaded.full_batch(sample_batch(original, size=2, length=4))
    logits = session.run(["logits"], {name: batch[key].numpy() for name, key in inputs})[0]
    torch.testing.assert_close(torch.from_numpy(logits), original.forward_logits(batch, "target"),
                               rtol=1e-4, atol=1e-5)


def test_onnx_exports_an_image_only_model_for_any_batch_size(tmp_path):
    """Without a text modality nothing else marks the batch dimension: it must stay dynamic all the same."""
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    from conftest import tiny_experiment_dict

    experiment = tiny_experiment_dict(tmp_path, "trainer.epochs=1", "trainer.device=cpu", "adaptation=[]",
                                      "model.encoders={image: {name: small-cnn, channels: [8, 16]}}")
    _, run = transmodal.train(experiment, quiet=True)
    original = transmodal.load(run)
    loaded = transmodal.load(original.export(tmp_path / "onnx", "onnx"))
    for size in (1, 5):
        batch = sample_batch(original, size=size)
        torch.testing.assert_close(loaded.forward_logits(batch), original.forward_logits(batch), rtol=1e-4, atol=1e-5)


def test_onnx_without_its_packages_names_the_extra(run_dir, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    with pytest.raises(transmodal.ConfigError, match=r"transmodal\[onnx\]"):
        transmodal.load(run_dir).export(tmp_path / "onnx", "onnx")
    assert not (tmp_path / "onnx").exists()
