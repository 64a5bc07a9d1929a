"""``transmodal report``: a run's page, several runs compared, written whole, and its mistakes (exit status 2)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_experiment_dict
from transmodal.api import train
from transmodal.cli import main
from transmodal.report_measures import measure, pca
from transmodal.run import saved_run_trainer

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny runs, trained once for the module: DANN for 2 epochs, source-only for 1."""
    root = tmp_path_factory.mktemp("report")
    _, dann = train(tiny_experiment_dict(root, "output.name=dann"), quiet=True)
    _, source_only = train(tiny_experiment_dict(root, "output.name=source-only", "trainer.epochs=1",
                                                "adaptation=[]"), quiet=True)
    return dann, source_only


def images(page: Path) -> list[str]:
    """The images the page shows, each checked to be a PNG file beside it."""
    sources = re.findall(r'<img src="([^"]+)"', page.read_text(encoding="utf-8"))
    for source in sources:
        assert (page.parent / source).read_bytes()[:8] == PNG_SIGNATURE, source
    return sources


def test_report_of_one_run(runs: tuple[Path, Path], capsys: pytest.CaptureFixture):
    run_dir = runs[0]
    assert main(["report", str(run_dir)]) == 0
    page = run_dir / "report" / "report.html"
    assert f"report: {page}" in capsys.readouterr().out
    tsne = {"features-tsne.png"} if importlib.util.find_spec("sklearn") else set()
    assert set(images(page)) == {"loss.png", "accuracy.png", "loss-terms.png", "validators.png",
                                 "features-pca.png", "modalities.png",
                                 "confusion-source-val.png", "confusion-target-test.png"} | tsne
    text = page.read_text(encoding="utf-8")
    summary = (run_dir / "summary.json").read_text()
    best_epoch = re.search(r'"best_epoch": (\d+)', summary).group(1)
    assert f"best checkpoint (epoch {best_epoch}, selected by source-val" in text  # best.pt evaluated again
    assert "<td>calm circle</td>" in text and "<td>dev</td>" in text and "oracle (target labels" in text

    assert main(["report", str(run_dir)]) == 0  # a second report replaces the first, leaving nothing aside
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_features_before_and_after_adaptation_and_without_target_data(runs: tuple[Path, Path], tmp_path: Path):
    dann, source_only = runs
    assert main(["report", str(dann), "--output", str(tmp_path / "dann")]) == 0
    text = (tmp_path / "dann" / "report.html").read_text(encoding="utf-8")
    assert "Before training: the model the run started from" in text
    assert "all samples of each split (source/val: 128, target/test: 128)" in text

    measures = measure(dann, samples=50)  # the cap holds the first 50 samples of each split
    assert measures.before is not None
    for state in (measures.after, measures.before):
        assert {split: len(labels) for split, (_, labels) in state.items()} == {"source/val": 50, "target/test": 50}
    assert not torch.equal(measures.before["target/test"][0], measures.after["target/test"][0])

    assert main(["report", str(source_only), "--output", str(tmp_path / "source-only")]) == 0
    text = (tmp_path / "source-only" / "report.html").read_text(encoding="utf-8")
    assert "features-pca.png" in images(tmp_path / "source-only" / "report.html")
    assert "Only the best checkpoint is drawn: this run used no unlabelled target data" in text
    assert measure(source_only).before is None


def test_before_training_is_the_model_the_run_started_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import transmodal.run

    started: dict[str, torch.Tensor] = {}

    class Recording(transmodal.run.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.update({key: value.clone() for key, value in self.model.state_dict().items()})

    monkeypatch.setattr(transmodal.run, "Trainer", Recording)
    _, run_dir = train(tiny_experiment_dict(tmp_path, "trainer.epochs=1"), quiet=True)
    monkeypatch.undo()
    rebuilt = saved_run_trainer(run_dir).trainer.model.state_dict()  # what measure() draws as "before"
    assert rebuilt.keys() == started.keys()
    assert all(torch.equal(rebuilt[key], started[key]) for key in started)


def test_modality_contribution_is_what_evaluate_drop_modality_measures(runs: tuple[Path, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    run_dir = runs[0]
    accuracy = {}
    for dropped in ([], ["image"], ["text"]):
        capsys.readouterr()
        options = [arg for m in dropped for arg in ("--drop-modality", m)]
        assert main(["evaluate", str(run_dir), "--json", *options]) == 0
        metrics = json.loads(capsys.readouterr().out)["metrics"]
        accuracy[tuple(dropped)] = {split: values["accuracy"] for split, values in metrics.items()}
    assert main(["report", str(run_dir), "--output", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "<th>all modalities</th><th>without image</th><th>without text</th><th>image adds</th>" in text
    for split in ("source/val", "target/test"):
        full, image, caption = (accuracy[key][split] for key in ((), ("image",), ("text",)))
        row = "".join(f"<td>{value:.4f}</td>" for value in (full, image, caption, full - image, full - caption))
        assert f"<tr><td>{split}</td>{row}</tr>" in text


def test_pca_finds_the_direction_of_largest_variance():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 3, generator=generator) * torch.tensor([5.0, 1.0, 0.1])
    points, share = pca({"source": features[:300], "target": features[300:]})
    assert [len(p) for p in points.values()] == [300, 100]
    first = torch.cat(list(points.values()))[:, 0]
    assert abs(torch.corrcoef(torch.stack([first, features[:, 0]]))[0, 1]) > 0.999
    assert 0.9 < share[0] < 1.0 and share[0] + share[1] <= 1.0


def test_several_runs_are_compared_on_one_page(runs: tuple[Path, Path], tmp_path: Path):
    output = tmp_path / "comparison"
    assert main(["report", *map(str, runs), "--output", str(output)]) == 0
    page = output / "report.html"
    assert set(images(page)) == {"loss.png", "accuracy.png", "loss-terms.png"}  # nothing evaluated
    text = page.read_text(encoding="utf-8")
    assert "2 runs compared" in text
    for label in ("dann", "source-only"):
        assert f"<tr><td>{label}</td><td>source/val</td>" in text and f"<th>{label}</th>" in text


def test_best_checkpoint_that_cannot_be_evaluated_falls_back_to_the_final_epoch(
        runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir = tmp_path / "moved"
    run_dir.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):  # no checkpoints
        (run_dir / name).write_bytes((runs[1] / name).read_bytes())
    assert main(["report", str(run_dir)]) == 0
    assert "could not be evaluated" in capsys.readouterr().err
    page = run_dir / "report" / "report.html"
    assert {"confusion-source-val.png", "confusion-target-test.png"} <= set(images(page))
    text = page.read_text(encoding="utf-8")
    assert "final epoch, from summary.json" in text
    assert "Features in 2-D" not in text and "Modality contribution" not in text


def test_what_is_not_a_run_exits_2(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a run directory (no config.yaml)" in capsys.readouterr().err
    assert main(["report", str(runs[0]), str(tmp_path / "missing")]) == 2
    assert f"No run directory {tmp_path / 'missing'}" in capsys.readouterr().err
    assert main(["report", str(runs[0]), str(runs[0] / ".." / runs[0].name)]) == 2
    assert "is named twice (or through a link); a report compares different runs" in capsys.readouterr().err
    assert main(["report", str(runs[0]), "--samples", "0"]) == 2
    assert "--samples 0: give a positive number of samples per split" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text((runs[0] / "config.yaml").read_text())
    assert main(["report", str(tmp_path)]) == 2
    assert "has no epoch recorded in metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_a_folder_that_holds_more_than_a_report_is_not_replaced(runs: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["report", str(runs[1]), "--output", str(tmp_path)]) == 2
    assert "holds more than a report (report.html and its .png figures)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    (tmp_path / "report.html").write_text("an old page beside the user's own files")
    assert main(["report", str(runs[1]), "--output", str(tmp_path)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "report.html"]


@pytest.mark.parametrize("summary", ['{"best": "x"}', '{"final": null}', '{"validators": [1]}', "[]"])
def test_a_summary_of_the_wrong_shape_is_named(runs: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture, summary: str):
    damaged = tmp_path / "run"
    shutil.copytree(runs[0], damaged)
    (damaged / "summary.json").write_text(summary)
    assert main(["report", str(damaged), "--output", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert f"{damaged / 'summary.json'}: " in err and "not a summary that training wrote" in err
    assert "Traceback" not in err and not (tmp_path / "report").exists()


def test_without_matplotlib_exits_2_with_the_install_hint(runs: tuple[Path, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["report", str(runs[1]), "--output", str(tmp_path / "report")]) == 2
    assert 'pip install "transmodal[report]"' in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_class_names_with_dollar_signs_are_drawn_as_written(tmp_path):
    """Matplotlib reads text between two $ as math: "$$" (a price tier) would stop the figure."""
    from transmodal.report_plots import confusion_matrix, scatter_panels

    classes = ["$", "$$", "$$$"]
    confusion_matrix([[2, 1, 0], [0, 3, 0], [1, 0, 2]], classes, "source/val", tmp_path / "confusion.png")
    scatter_panels({"target/test": {name: [(0.0, 1.0), (1.0, 0.5)] for name in classes}}, tmp_path / "points.png",
                   1, "x", "y")
    assert (tmp_path / "confusion.png").stat().st_size > 0 and (tmp_path / "points.png").stat().st_size > 0
