"""transmodal train --seeds/--over (parallel processes, one run directory each) and transmodal compare."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

import transmodal
from conftest import tiny_experiment_dict
from transmodal.checkpoint import load_checkpoint
from transmodal.cli import main
from transmodal.compare import compare
from transmodal.grid import parse_over, plan, split_values
from transmodal.errors import ConfigError


def without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def config_file(tmp_path: Path, *overrides: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment_dict(tmp_path, "trainer.epochs=1", *overrides)))
    return path


@pytest.mark.slow
def test_seeds_give_the_numbers_of_separate_runs(tmp_path: Path, tiny, capsys: pytest.CaptureFixture):
    config = config_file(tmp_path, "output.name=grid")
    assert main(["train", str(config), "--seeds", "0", "1", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 runs, 2 at a time" in printed and "| runs of |" in printed  # compared at the end
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["grid-seed0", "grid-seed1"]
    for seed in (0, 1):
        grid_dir = runs / f"grid-seed{seed}"
        assert "run directory" in (grid_dir / "train.log").read_text()
        assert yaml.safe_load((grid_dir / "config.yaml").read_text())["trainer"]["seed"] == seed
        _, alone_dir = transmodal.train(tiny("trainer.epochs=1", f"trainer.seed={seed}", f"output.name=alone{seed}"),
                                        quiet=True)
        assert without_timing(grid_dir / "metrics.jsonl") == without_timing(alone_dir / "metrics.jsonl")
        grid_summary = json.loads((grid_dir / "summary.json").read_text())
        assert grid_summary["final"] == json.loads((alone_dir / "summary.json").read_text())["final"]
        grid_weights = load_checkpoint(grid_dir / "checkpoints" / "best.pt")["model"]
        alone_weights = load_checkpoint(alone_dir / "checkpoints" / "best.pt")["model"]
        assert all(torch.equal(grid_weights[key], alone_weights[key]) for key in alone_weights)
    seed_runs = [runs / "grid-seed0", runs / "grid-seed1"]
    rows = list(csv.DictReader(io.StringIO(compare(seed_runs, "csv"))))
    assert len(rows) == 1 and rows[0]["runs"] == "2" and rows[0]["seeds"] == "0 1"
    accuracies = [100 * json.loads((run / "summary.json").read_text())["best"]["target/test"]["accuracy"]
                  for run in seed_runs]
    assert float(rows[0]["target/test (best by validator) mean"]) == pytest.approx(sum(accuracies) / 2)


def test_the_grid_is_the_product_of_seeds_and_values_named_after_them(tmp_path: Path):
    config = config_file(tmp_path, "output.name=g")
    _, runs = plan(config, [], [0, 1], ["model.fusion={name: gated},{name: concat, hidden: 32}",
                                        "optimizer.lr=0.01,0.001"])
    assert len(runs) == 8
    assert runs[0].name == "g-seed0-model.fusion=name_gated-optimizer.lr=0.01"
    assert len({run.run_dir for run in runs}) == 8


def test_values_too_long_for_a_folder_name_are_cut_and_keep_the_runs_apart(tmp_path: Path):
    config = config_file(tmp_path, "output.name=g")
    strategies = ["[" + ", ".join(["{name: entropy-min, weight: 0.5}"] * 12) + f", {{name: mmd, weight: 0.{i}}}]"
                  for i in (1, 2)]  # they differ only at their ends
    _, runs = plan(config, [], [0], ["adaptation=" + ",".join(strategies)])
    names = [run.name for run in runs]
    assert len(set(names)) == 2 and all(len(name.encode()) <= 255 for name in names)
    assert names[0].startswith("g-seed0-adaptation=name_entropy-min,weight_0.5") and "~" in names[0]
    with pytest.raises(ConfigError, match="set a shorter output.name"):
        plan(config_file(tmp_path, f"output.name={'g' * 250}"), [], [0], ["optimizer.lr=0.1,0.2"])


def test_grid_mistakes_are_refused_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = config_file(tmp_path)
    # gated has no 'hidden' parameter: found while planning, nothing written.
    assert main(["train", str(config), "--seeds", "0", "--over", "model.fusion.name=concat,gated"]) == 2
    assert "grid run seed=0 model.fusion.name=gated" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    for bad, message in ((["--over", "trainer.seed=1,2"], "--seeds"), (["--over", "optimizer.lr"], "--over expects"),
                         (["--over", "optimizer.lr=1,1"], "distinct"), (["--seeds", "1", "1"], "each seed once"),
                         (["--over", "trainer.batch_size=64,0x40"], "64 and 0x40 are one value"),
                         (["--over", "optimizer.lr=0.001,1e-3"], "optimizer.lr=1e-3 trains the same experiment as "
                                                                  "seed=0 optimizer.lr=0.001"),
                         (["--over", "trainer={seed: 1},{seed: 2}"], "a whole section holds trainer.seed"),
                         (["--over", "model.fusion.hidden=32,'32'"], "trains the same experiment as"),
                         (["--seeds", "0", "--resume", str(tmp_path)], "--resume")):
        assert main(["train", str(config), *bad]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="given twice"):
        parse_over(["optimizer.lr=1", "optimizer.lr=2"])
    assert split_values("[1, 2],{a: 1, b: 2},'x,y'") == ["[1, 2]", "{a: 1, b: 2}", "'x,y'"]


def fake_run(root: Path, name: str, settings: dict, accuracies: tuple[float, float], selected_by: str) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"name": "exp", "trainer": {"seed": settings.pop("seed"), "num_threads": 1},
              "output": {"dir": str(root), "name": name}, **settings}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    best, oracle = accuracies
    summary = {"name": "exp", "selected_by": selected_by,
               "best": {"target/test": {"accuracy": best, "macro_f1": best / 2}},
               "oracle": {"epoch": 3, "target/test": {"accuracy": oracle, "macro_f1": oracle / 2}}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.mark.parametrize("file, text, message", [
    ("summary.json", "[]", "it is not a JSON object"),
    ("summary.json", '"x"', "it is not a JSON object"),
    ("summary.json", '{"best": 5}', "its 'best' is not a mapping of splits to metrics"),
    ("summary.json", '{"best": {"target/test": {"accuracy": "high"}}}', "lacks a number for each of accuracy"),
    ("summary.json", '{"oracle": {"target/test": 0.5}}', "'oracle' split 'target/test' lacks a number"),
    ("config.yaml", "[1]\n", "holds no experiment"),
])
def test_compare_names_a_run_file_of_the_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture, file: str,
                                                     text: str, message: str):
    run = fake_run(tmp_path, "a0", {"seed": 0}, (0.5, 0.6), "source-val")
    (run / file).write_text(text)
    assert main(["compare", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(run / file) in err and "Traceback" not in err


def test_compare_counts_a_run_once_however_it_is_named(tmp_path: Path):
    run = fake_run(tmp_path, "a", {"seed": 0}, (0.5, 0.6), "source-val")
    (tmp_path / "link").symlink_to(run)
    for twice in ([run, run], [run, tmp_path / "link"], [run, tmp_path / "x" / ".." / "a"]):
        with pytest.raises(ConfigError, match="named twice .or through a link.; each run counts once"):
            compare(twice)


def test_compare_groups_by_config_differences_and_states_the_rule(tmp_path: Path, capsys: pytest.CaptureFixture):
    rule = "source-val (source/val accuracy)"
    runs = [
        fake_run(tmp_path, "a0", {"seed": 0, "adaptation": [{"name": "dann", "weight": 1.0}]}, (0.50, 0.60), rule),
        fake_run(tmp_path, "a1", {"seed": 1, "adaptation": [{"name": "dann", "weight": 1.0}]}, (0.70, 0.80), rule),
        fake_run(tmp_path, "b0", {"seed": 0, "adaptation": [{"name": "finetune"}]}, (0.40, 0.45), rule),
    ]
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("name: exp\n")
    assert main(["compare", *map(str, runs), str(tmp_path / "unfinished")]) == 0
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "unfinished" in captured.err
    table = captured.out
    assert rule in table and "uses no target label" in table and "upper bound" in table
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| adaptation.0.name | runs | seeds |")  # weight: implied by the name
    assert lines[2] == f"| dann | 2 | 0 1 | {rule} | 60.0 ± 14.1 | 70.0 ± 14.1 |"
    assert lines[3] == f"| finetune | 1 | 0 | {rule} | 40.0 | 45.0 |"
    assert main(["compare", *map(str, runs), "--format", "csv", "--metric", "macro_f1"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["target/test (best by validator) mean"] == "30.0"
    assert rows[1]["target/test (best by validator) std"] == ""  # one run: no spread
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
