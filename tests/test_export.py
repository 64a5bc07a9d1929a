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
