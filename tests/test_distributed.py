"""Runs under torchrun: 2 CPU processes (gloo) through the real launcher and CLI, against 1 process.

The tests that start ``python -m torch.distributed.run`` as a subprocess are marked ``distributed``
(``-m 'not distributed'`` leaves them out); together they take about a minute on two cores. The others check what
needs no process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import transmodal
from conftest import tiny_experiment_dict
from transmodal.config import TrainerConfig, parse_experiment
from transmodal.data import BatchLoader
from transmodal.distributed import World
from transmodal.errors import ConfigError, DistributedError
from transmodal.experiment import assemble
from transmodal.run import _fit, resume
from transmodal.trainer import Trainer

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


@pytest.mark.distributed
def test_two_processes_train_as_one_on_the_same_global_batch(tmp_path: Path):
    # Without BatchNorm, dropout or augmentation, the global batch split in two and the gradients averaged is the
    # same step as one process takes, up to float rounding: the caption model (bag of words) and DANN. The
    # evaluation splits are not divisible by 2, and target/test's last batch (1 sample) leaves rank 1 no share.
    raw = tiny_experiment_dict(tmp_path, "adaptation.0.dropout=0", "output.name=one", "data.dataset.val_size=127",
                               "data.dataset.target_test_size=129")
    del raw["model"]["encoders"]["image"]
    # Pseudo-labels from a mean teacher: each rank thresholds its share, and the fraction used is averaged.
    raw["adaptation"].append({"name": "pseudo-label", "threshold": 0.14, "ema": 0.9})
    raw["trainer"]["ema_decay"] = 0.9  # and the averaged weights are what every rank evaluates
    one, _ = transmodal.train(parse_experiment(raw), quiet=True)
    raw["output"]["name"] = "two"
    result = torchrun("-m", "transmodal", "train", str(config_file(tmp_path, raw, "two")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1/2") == 1  # rank 0 reports, the other rank is quiet

    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]  # rank 1 made no run directory of its own
    assert [r["epoch"] for r in records(runs / "two")] == [1, 2]  # nor appended its own records
    two = json.loads((runs / "two" / "summary.json").read_text())
    for split, size in (("source/val", 127), ("target/test", 129)):  # tolerance: 1e-4 on the loss; the same predictions
        assert two["final"][split]["samples"] == one["final"][split]["samples"] == size  # each sample once
        assert two["final"][split]["loss"] == pytest.approx(one["final"][split]["loss"], abs=1e-4)
        assert two["final"][split]["accuracy"] == one["final"][split]["accuracy"]
    for first, second in zip(records(runs / "one"), records(runs / "two")):
        assert 0 < first["train"]["metric/pseudo-label.used"] < 1
        assert second["train"] == pytest.approx(first["train"], abs=1e-4)  # each loss term and strategy metric
        assert second["validators"] == pytest.approx(first["validators"], abs=1e-4)  # scored alike on every rank
    # Step records (output.loggers: jsonl) come from rank 0 alone, averaged over both ranks' shares of each batch.
    steps = {name: [json.loads(line) for line in (runs / name / "steps.jsonl").read_text().splitlines()]
             for name in ("one", "two")}
    assert [r["step"] for r in steps["two"]] == [r["step"] for r in steps["one"]] == [8, 16]
    for first, second in zip(steps["one"], steps["two"]):
        assert second["loss"] == pytest.approx(first["loss"], abs=1e-4)


@pytest.mark.distributed
def test_adabn_target_statistics_are_those_of_one_process(tmp_path: Path):
    """The default model made small (BatchNorm in the image encoder) with AdaBN. At a learning rate too small to
    move a weight, the target's evaluation depends on the target statistics AdaBN estimates alone (they replace the
    running ones): 2 processes must estimate those of 1, and score the target validators alike."""
    raw = tiny_experiment_dict(tmp_path, "adaptation=[{name: adabn}]", "optimizer.lr=1e-12", "trainer.epochs=1",
                               "data.dataset.target_test_size=129", "output.name=one")
    one, _ = transmodal.train(parse_experiment(raw), quiet=True)
    raw["output"]["name"] = "two"
    result = torchrun("-m", "transmodal", "train", str(config_file(tmp_path, raw, "two")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "runs" / "two" / "summary.json").read_text())
    assert two["final"]["target/test"]["samples"] == 129
    assert two["final"]["target/test"]["loss"] == pytest.approx(one["final"]["target/test"]["loss"], abs=1e-5)
    assert two["final"]["target/test"]["confusion"] == one["final"]["target/test"]["confusion"]
    [first], [second] = records(tmp_path / "runs" / "one"), records(tmp_path / "runs" / "two")
    for name in ("entropy", "snd"):  # read only the target, as AdaBN prepared the model
        assert second["validators"][name] == pytest.approx(first["validators"][name], abs=1e-5)


def test_each_rank_gets_a_disjoint_share_of_every_batch_set_by_the_seed_and_epoch():
    def shares(rank: int, epoch: int, seed: int = 0) -> list[list[int]]:
        loader = BatchLoader({"x": torch.arange(40)}, batch_size=8, shuffle=True, drop_last=True, seed=seed)
        loader.shard(rank, 2)
        return [batch["x"].tolist() for batch in loader.epoch(epoch)]

    whole = BatchLoader({"x": torch.arange(40)}, batch_size=8, shuffle=True, drop_last=True)
    for epoch in (0, 1):
        for batch, first, second in zip(whole.epoch(epoch), shares(0, epoch), shares(1, epoch), strict=True):
            assert not set(first) & set(second) and sorted(first + second) == sorted(batch["x"].tolist())
        assert shares(0, epoch) == shares(0, epoch)  # the same on every call: a resumed rank draws it again
    assert shares(0, 0) != shares(0, 1) and shares(0, 0) != shares(0, 0, seed=1)


def tiny_trainer(tmp_path: Path, *overrides: str) -> Trainer:
    """Rank 0's trainer of a 2-process run, built without a process group (building needs none)."""
    experiment = parse_experiment(tiny_experiment_dict(tmp_path, *overrides))
    return Trainer(assemble(experiment), quiet=True, world=World(0, 2, 0))


def test_batch_sizes_are_global_and_must_divide_between_the_processes(tmp_path: Path):
    trainer = tiny_trainer(tmp_path)
    assert trainer.data.train.batch_size == 32 and len(next(trainer.data.train.epoch(0))["label"]) == 16
    with pytest.raises(ConfigError, match="trainer.batch_size: 33 samples per step cannot be split evenly between 2"):
        tiny_trainer(tmp_path, "trainer.batch_size=33")


def test_a_split_smaller_than_its_batch_is_shared_unevenly_but_never_left_empty(tmp_path: Path):
    # 31 unlabelled samples are one batch of 31 (the configured 32 divides): 16 and 15, not an error about a
    # target_batch_size of 31 that nobody set.
    trainer = tiny_trainer(tmp_path, "data.dataset.target_train_size=31")
    assert len(next(trainer.data.unlabelled.stream())["image"]) == 16
    # One training sample cannot be shared by 2 processes: rank 1 would train no step and the job would hang.
    with pytest.raises(ConfigError, match="the training split has 1 sample, fewer than the 2 processes"):
        tiny_trainer(tmp_path, "data.dataset.train_size=1")


def test_sync_batchnorm_is_refused_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "1")):  # as torchrun sets them; refused before any process group starts
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="sync_batchnorm needs CUDA"):
        transmodal.train(parse_experiment(tiny_experiment_dict(tmp_path, "trainer.sync_batchnorm=true",
                                                               "trainer.device=cpu")), quiet=True)
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(ConfigError, match="WORLD_SIZE is set but MASTER_PORT is not"):
        transmodal.train(parse_experiment(tiny_experiment_dict(tmp_path)), quiet=True)


def test_a_lost_process_says_whether_the_run_continues_or_starts_again(tmp_path: Path):
    class LostPeer:  # a trainer whose collective found the other rank gone, as gloo reports it
        world = World(0, 2, 0)
        config = TrainerConfig(distributed_timeout=30)

        def fit(self) -> None:
            raise RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")

    with pytest.raises(DistributedError, match="No checkpoint was written yet; train it again from the beginning"):
        _fit(LostPeer(), tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(DistributedError, match="Continue from the last checkpoint with the same number"):
        _fit(LostPeer(), tmp_path)


@pytest.mark.distributed
def test_a_rank_killed_as_the_run_starts_stops_the_job_with_a_message(tmp_path: Path):
    raw = tiny_experiment_dict(tmp_path, "trainer.distributed_timeout=30", "output.name=run")
    stopped = torchrun(str(TESTS / "die_at_step.py"), "1", "start", "train", str(config_file(tmp_path, raw, "run")),
                       cwd=tmp_path)
    assert stopped.returncode != 0
    # Rank 0 either finds its peer gone or is stopped by torchrun first (SIGTERM): a message either way.
    assert ("error: rank 0: lost the other processes of this run" in stopped.stderr
            or "terminated by torchrun (SIGTERM), as another process of this run stopped" in stopped.stderr)
    assert "[rank0]: Traceback" not in stopped.stderr  # torchrun prefixes a worker's lines with its rank
    assert not (tmp_path / "runs" / "run").exists()  # nothing began: the empty run directory is removed


@pytest.mark.distributed
def test_a_killed_rank_stops_the_job_and_resume_completes_it(tmp_path: Path):
    """The default experiment made small (BatchNorm, per-domain statistics, DANN). Rank 1 is killed at step 6, after
    the step checkpoint at step 4; rank 0 stops with a message within seconds, not at the end of a hang."""
    raw = tiny_experiment_dict(tmp_path, "trainer.checkpoint_every=4", "trainer.distributed_timeout=30",
                               "output.name=run")
    config = config_file(tmp_path, raw, "run")
    stopped = torchrun(str(TESTS / "die_at_step.py"), "1", "6", "train", str(config), cwd=tmp_path)
    assert stopped.returncode != 0
    assert "another process of this run stopped" in stopped.stderr and "--resume" in stopped.stderr
    # From a checkpoint: rank 0 says so whether it found its peer gone or torchrun stopped it first (SIGTERM).
    assert "Continue from the last checkpoint" in stopped.stderr or "; continue with: torchrun" in stopped.stderr
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
