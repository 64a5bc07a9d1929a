"""Several runs of one experiment: ``transmodal train CONFIG --seeds 0 1 2 --over key=a,b``.

The runs are the cartesian product of the seeds and the ``--over`` values. Each is a ``transmodal train`` of its
own, in a process of its own (the same command a user would type, so a grid run gives the numbers a separate run of
that seed gives), several at a time: by default one per core on the CPU, with the cores' threads split between
them (``trainer.num_threads``, unless the config sets it), or one per GPU, each given its own. Every run has its
own run directory named after the grid, its seed and its values (``NAME-seed1-model.fusion.name=gated``), with
the process's output in ``train.log``; at the end the runs are compared (:mod:`transmodal.compare`).

Everything is validated before the first run starts: a mistake in one combination stops the grid with nothing
written. This module does not import torch, except to count GPUs when the experiment may use one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from transmodal.config import (
    Experiment, NAME_MAX_BYTES, load_experiment, resolved_config, validate_components,
)
from transmodal.errors import ConfigError, TransmodalError
from transmodal.yaml_limits import parse_yaml

# Keys --over may not vary: the grid sets them itself.
_GRID_KEYS = {"trainer.seed": "--seeds", "output.name": "the grid's naming", "output.dir": "--set output.dir=..."}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]+")
TRAIN_LOG = "train.log"


@dataclass
class GridRun:
    seed: int
    values: list[tuple[str, str]]  # (key, value as typed) of each --over
    name: str
    run_dir: Path
    log: IO[str] | None = None
    process: subprocess.Popen | None = None
    started: float = 0.0
    status: int | None = None
    gpu: int | None = field(default=None)

    @property
    def label(self) -> str:
        return " ".join([f"seed={self.seed}", *(f"{key}={value}" for key, value in self.values)])


def split_values(text: str) -> list[str]:
    """``a,b,c`` -> ["a", "b", "c"], leaving commas inside brackets, braces or quotes alone, so that
    ``--over 'model.fusion={name: gated, hidden: 64},{name: concat}'`` gives two values."""
    values, depth, quote, current = [], 0, "", []
    for character in text:
        if quote:
            quote = "" if character == quote else quote
        elif character in "\"'":
            quote = character
        elif character in "[{(":
            depth += 1
        elif character in "]})":
            depth -= 1
        elif character == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(character)
    values.append("".join(current).strip())
    return values


def parse_over(over: Sequence[str]) -> list[tuple[str, list[str]]]:
    parsed: list[tuple[str, list[str]]] = []
    for item in over:
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or not key or not text.strip():
            raise ConfigError(f"--over expects path.to.key=value1,value2, got '{item}'")
        if key in _GRID_KEYS:
            raise ConfigError(f"--over {key}: the grid sets it itself; use {_GRID_KEYS[key]}")
        inside = [grid_key for grid_key in _GRID_KEYS if grid_key.startswith(f"{key}.")]
        if inside:  # --over 'trainer={seed: 1},...' would be overruled by the grid's own trainer.seed
            raise ConfigError(f"--over {key}: a whole section holds {', '.join(inside)}, which the grid sets "
                              f"itself; vary its keys one by one (--over {key}.KEY=a,b)")
        if key in (k for k, _ in parsed):
            raise ConfigError(f"--over {key} is given twice; list all its values once: --over {key}=a,b")
        values = split_values(text)
        if any(not value for value in values) or len(set(map(_as_read, values))) != len(values):
            raise ConfigError(f"--over {item}: values must be non-empty and distinct (as YAML reads them: 64 and "
                              f"0x40 are one value)")
        parsed.append((key, values))
    return parsed


def _as_read(value: str) -> str:
    """``value`` as the config will hold it, in a form that compares: what --set makes of it."""
    try:
        return json.dumps(parse_yaml(value, "--over"), sort_keys=True, default=str)
    except ConfigError:
        return json.dumps(value)


def _name_part(key: str, value: str) -> str:
    """``model.fusion={name: gated}`` -> ``model.fusion=name_gated``: a piece of a folder name."""
    return re.sub(r"_*([=,])_*", r"\1", _UNSAFE.sub("_", f"{key}={value}")).strip("_")


def _run_name(stem: str, seed: int, values: list[tuple[str, str]]) -> str:
    """``STEM-seedS-key=value-...``; a value too long for a folder name (a list of strategies, say) is cut and keeps
    a hash of itself, so that names stay distinct; each run's config.yaml holds its values whole."""
    parts = [_name_part(key, value) for key, value in values]
    name = "-".join([stem, f"seed{seed}", *parts])
    if len(name.encode()) > NAME_MAX_BYTES:
        name = "-".join([stem, f"seed{seed}", *(_shortened(part) for part in parts)])
    if len(name.encode()) > NAME_MAX_BYTES:
        raise ConfigError(f"the run name {name[:60]}... is longer than {NAME_MAX_BYTES} bytes; set a shorter "
                          f"output.name, or vary fewer keys with --over")
    return name


def _shortened(part: str, keep: int = 60) -> str:
    digest = hashlib.sha1(part.encode()).hexdigest()[:8]
    return part if len(part) <= keep + len(digest) + 1 else f"{part[:keep]}~{digest}"


def plan(config: Path | None, overrides: Sequence[str], seeds: Sequence[int] | None,
         over: Sequence[str]) -> tuple[Experiment, list[GridRun]]:
    """Every run of the grid, validated (its config and components) and named; nothing is written."""
    from transmodal.plugins import get_plugins

    axes = parse_over(over)
    base = load_experiment(config, list(overrides))
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds: each seed once")
    seed_list = list(seeds) if seeds else [base.trainer.seed]
    stem = base.output.name or f"{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plugins = get_plugins()
    runs: list[GridRun] = []
    experiments: list[dict[str, object]] = []  # each run's resolved config, output aside
    for seed, *chosen in itertools.product(seed_list, *(values for _, values in axes)):
        values = [(key, value) for (key, _), value in zip(axes, chosen)]
        name = _run_name(stem, seed, values)
        settings = [*overrides, *(f"{key}={value}" for key, value in values), f"trainer.seed={seed}"]
        try:
            experiment = load_experiment(config, settings)
            resolved = resolved_config(experiment, validate_components(experiment, plugins))
        except ConfigError as error:
            where = " ".join([f"seed={seed}", *(f"{key}={value}" for key, value in values)])
            raise type(error)(f"grid run {where}: {error}") from None
        resolved.pop("output")  # where a run is written, not what it measures
        where = " ".join(f"{key}={value}" for key, value in values)
        same = next((run for run, other in zip(runs, experiments) if other == resolved), None)
        if same is not None:  # values that read alike once validated: 0.001 and 1e-3, a parameter at its default
            raise ConfigError(f"--over: {where} trains the same experiment as {same.label}; list each value once")
        clash = next((run for run in runs if run.name == name), None)
        if clash is not None:  # values that differ only in what a folder name cannot hold
            raise ConfigError(f"--over: {where} and {clash.label} would share the run directory {name}; give values "
                              f"that differ in letters or digits")
        experiments.append(resolved)
        runs.append(GridRun(seed, values, name, experiment.output.dir / name))
    taken = [run.run_dir for run in runs if run.run_dir.exists()]
    if taken:
        raise ConfigError(f"run directory {taken[0]} already exists; choose another output.name for the grid")
    return base, runs


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gpus(experiment: Experiment) -> int:
    """GPUs the runs would use: with trainer.device auto or cuda, every visible one; none on the CPU, or when the
    config names one device (cuda:N)."""
    if experiment.trainer.device not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_grid(config: Path | None, overrides: Sequence[str], seeds: Sequence[int] | None, over: Sequence[str],
             jobs: int | None = None, quiet: bool = False) -> tuple[list[GridRun], list[GridRun]]:
    """Train every run of the grid; returns the runs that finished and those that failed."""
    if jobs is not None and jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    base, runs = plan(config, overrides, seeds, over)
    gpus = _gpus(base)
    slots = min(len(runs), jobs or gpus or available_cores())
    threads = None if base.trainer.num_threads is not None or gpus else max(1, available_cores() // slots)
    where = f"{gpus} GPU{'s' * (gpus > 1)}" if gpus else f"{available_cores()} cores"
    print(f"{len(runs)} runs, {slots} at a time ({where}" + (f", {threads} thread{'s' * (threads > 1)} each"
                                                             if threads else "") + ")", flush=True)
    pending, active, done, failed = list(runs), [], [], []
    try:
        while pending or active:
            while pending and len(active) < slots:
                run = pending.pop(0)
                busy = {r.gpu for r in active}
                run.gpu = next((g for g in range(gpus) if g not in busy), None) if gpus else None
                _start(run, config, overrides, threads, quiet)
                active.append(run)
            time.sleep(0.2)
            for run in [r for r in active if r.process is not None and r.process.poll() is not None]:
                active.remove(run)
                run.status = run.process.returncode
                _finish(run)
                (done if run.status == 0 else failed).append(run)
                _print_finished(run, len(done) + len(failed), len(runs))
    except BaseException:
        for run in active:  # our own children: stop them, then say how to go on
            if run.process is not None and run.process.poll() is None:
                run.process.terminate()
        for run in active:
            if run.process is not None:
                try:
                    run.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    run.process.kill()
                    run.process.wait()
                _finish(run)
        unfinished = [run for run in active if run.run_dir.is_dir()]
        if unfinished:
            print("unfinished runs; continue each with transmodal train --resume:", file=sys.stderr)
            for run in unfinished:
                print(f"  {run.run_dir}", file=sys.stderr)
        if pending:
            print(f"{len(pending)} runs not started: {', '.join(run.label for run in pending)}", file=sys.stderr)
        raise
    return done, failed


def _start(run: GridRun, config: Path | None, overrides: Sequence[str], threads: int | None, quiet: bool) -> None:
    settings = [*overrides, *(f"{key}={value}" for key, value in run.values), f"trainer.seed={run.seed}",
                f"output.name={run.name}"]
    if threads is not None:
        settings.append(f"trainer.num_threads={threads}")
    command = [sys.executable, "-m", "transmodal", "train", *([str(config)] if config is not None else []),
               "--quiet"]
    for setting in settings:
        command += ["--set", setting]
    environment = dict(os.environ)
    if threads is not None:
        environment["OMP_NUM_THREADS"] = str(threads)
    if run.gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = str(run.gpu)
    run.log = tempfile.NamedTemporaryFile("w+", prefix="transmodal-grid-", suffix=".log", delete=False)
    run.started = time.perf_counter()
    if not quiet:
        print(f"started  {run.label}", flush=True)
    run.process = subprocess.Popen(command, stdout=run.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=environment)


def _finish(run: GridRun) -> None:
    """The process's output into the run directory's train.log (or left in the temporary file, named, if the run
    never made its directory)."""
    if run.log is None:
        return
    run.log.close()
    if run.run_dir.is_dir():
        shutil.move(run.log.name, run.run_dir / TRAIN_LOG)
        run.log = None


def _print_finished(run: GridRun, count: int, total: int) -> None:
    seconds = time.perf_counter() - run.started
    if run.status == 0:
        print(f"[{count}/{total}] done     {run.label} ({seconds:.0f} s): {run.run_dir}", flush=True)
        return
    log = run.run_dir / TRAIN_LOG if run.log is None else Path(run.log.name)
    tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
    print(f"[{count}/{total}] FAILED   {run.label} (exit status {run.status}; output in {log})", file=sys.stderr)
    for line in tail:
        print(f"    {line}", file=sys.stderr)


class GridFailed(TransmodalError):
    """Some runs of a grid failed (the others finished)."""
