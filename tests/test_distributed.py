"""Runs under torchrun: 2 CPU processes (gloo) through the real launcher and CLI, against 1 process.

Each test starts ``python -m torch.distributed.run`` as a subprocess, so these are marked ``distributed``
(``-m 'not distributed'`` leaves them out); together they take about half a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import transmodal
from conftest import tiny_experiment_dict
from transmodal.config import parse_experiment
from transmodal.errors import ConfigError
from transmodal.run import resume

pytestmark = pytest.mark.distributed
TESTS = Path(__file__).parent
LAUNCH_TIMEOUT = 120  # seconds: a hung job fails the test instead of the suite


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)


def config_file(tmp_path: Path, raw: dict[str, Any], name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_as_one_on_the_same_global_batch(tmp_path: Path):
    # Without BatchNorm, dropout or augmentation, the global batch split in two and the gradients averaged is the
    # same step as one process takes, up to float rounding: the caption model (bag of words) and DANN.
    raw = tiny_experiment_dict(tmp_path, "adaptation.0.dropout=0", "output.name=one")
    del raw["model"]["encoders"]["image"]
    one, _ = transmodal.train(parse_experiment(raw), quiet=True)
    raw["output"]["name"] = "two"
    result = torchrun("-m", "transmodal", "train", str(config_file(tmp_path, raw, "two")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1/2") == 1  # rank 0 reports, the other rank is quiet

    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]  # rank 1 made no run directory of its own
    assert [r["epoch"] for r in records(runs / "two")] == [1, 2]  # nor appended its own records
    two = json.loads((runs / "two" / "summary.json").read_text())
    for split in ("source/val", "target/test"):  # stated tolerance: 1e-4 on the loss; the same predictions
        assert two["final"][split]["samples"] == one["final"][split]["samples"] == 128  # each sample once
        assert two["final"][split]["loss"] == pytest.approx(one["final"][split]["loss"], abs=1e-4)
        assert two["final"][split]["accuracy"] == one["final"][split]["accuracy"]
    for first, second in zip(records(runs / "one"), records(runs / "two")):
        assert second["train"]["loss"] == pytest.approx(first["train"]["loss"], abs=1e-4)
    # Step records (output.loggers: jsonl) come from rank 0 alone, averaged over both ranks' shares of each batch.
    steps = {name: [json.loads(line) for line in (runs / name / "steps.jsonl").read_text().splitlines()]
             for name in ("one", "two")}
    assert [r["step"] for r in steps["two"]] == [r["step"] for r in steps["one"]] == [8, 16]
    for first, second in zip(steps["one"], steps["two"]):
        assert second["loss"] == pytest.approx(first["loss"], abs=1e-4)


def test_a_killed_rank_stops_the_job_and_resume_completes_it(tmp_path: Path):
    """The default experiment made small (BatchNorm, per-domain statistics, DANN). Rank 1 is killed at step 6, after
    the step checkpoint at step 4; rank 0 stops with a message within seconds, not at the end of a hang."""
    raw = tiny_experiment_dict(tmp_path, "trainer.checkpoint_every=4", "trainer.distributed_timeout=30",
                               "output.name=run")
    config = config_file(tmp_path, raw, "run")
    stopped = torchrun(str(TESTS / "die_at_step.py"), "1", "6", "train", str(config), cwd=tmp_path)
    assert stopped.returncode != 0
    assert "another process of this run stopped" in stopped.stderr and "--resume" in stopped.stderr
    run_dir = tmp_path / "runs" / "run"
    assert not (run_dir / "metrics.jsonl").exists()  # stopped inside epoch 1, after the step checkpoint

    with pytest.raises(ConfigError, match="trained by 2 processes and can only be resumed by as many"):
        resume(run_dir, quiet=True)

    resumed = torchrun("-m", "transmodal", "train", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "at step 4" in resumed.stdout
    assert [r["epoch"] for r in records(run_dir)] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["final"]["target/test"]["samples"] == 128
