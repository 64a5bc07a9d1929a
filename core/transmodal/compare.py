"""``transmodal compare RUN_DIR...``: finished runs as one table, mean ± standard deviation over seeds.

Runs are grouped by what their resolved configs (``config.yaml``) say differently, leaving out what does not
change a result's meaning (the seed, the run directory's name and folder, threads, logging and checkpoint
intervals): runs that differ in nothing else are the seeds of one group. A group's row names the settings that tell
it apart. Each run contributes its ``summary.json``: the checkpoint its ``validator`` chose (the result; the rule is
stated above the table) and, where the run has a target test split, the "oracle" epoch chosen on target-test labels,
an upper bound and not a result. The standard deviation is the sample one (n - 1). No torch is imported.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from transmodal.errors import ConfigError
from transmodal.run_dir import refuse_repeated

# Settings that never tell groups apart: they change how a run is made or logged, not what it measures.
IGNORED = ("trainer.seed", "output.", "trainer.num_threads", "trainer.log_every", "trainer.checkpoint_every",
           "trainer.distributed_timeout", "trainer.score_validators")
METRICS = ("accuracy", "macro_f1")
_ABSENT = "(absent)"


@dataclass
class RunResult:
    path: Path
    seed: int | None
    settings: dict[str, Any]  # the flattened config
    summary: dict[str, Any]


@dataclass
class Group:
    label: dict[str, str]  # the settings that tell it apart
    runs: list[RunResult]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        items = ((str(index), item) for index, item in enumerate(node))
    else:
        return {prefix.rstrip("."): node}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def load_runs(paths: Sequence[Path]) -> list[RunResult]:
    """Each run directory's config and summary; an unfinished run (no summary.json) is skipped with a notice."""
    refuse_repeated(list(paths), "each run counts once in a mean and its spread")
    runs: list[RunResult] = []
    for path in paths:
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path} is not a run directory (no config.yaml)")
        if not (path / "summary.json").is_file():
            print(f"compare: skipping {path}: no summary.json (the run has not finished)", file=sys.stderr)
            continue
        try:
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read its config.yaml or summary.json ({error})") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{path / 'config.yaml'} holds no experiment (a mapping of sections); the run cannot be "
                              f"told apart from the others")
        problem = summary_problem(summary)
        if problem is not None:
            raise ConfigError(f"{path / 'summary.json'}: {problem}; it is not a summary that training wrote")
        settings = _flatten(config)
        seed = settings.get("trainer.seed")
        runs.append(RunResult(path, seed if isinstance(seed, int) else None, settings, summary))
    if not runs:
        raise ConfigError("no finished run to compare (each needs its summary.json)")
    return runs


def summary_problem(summary: Any) -> str | None:
    """What keeps ``summary`` (a run's summary.json) from being read as training wrote it, or None: each split
    under "best", "final" and the oracle's "target/test" holds a number for each metric, the oracle and each
    validator's choice an epoch."""
    if not isinstance(summary, dict):
        return "it is not a JSON object"
    parts = {part: summary.get(part, {}) for part in ("best", "final")}
    oracle = summary.get("oracle", {})
    if not isinstance(oracle, dict) or ("epoch" in oracle and not _is_number(oracle["epoch"])):
        return "its 'oracle' is not a mapping with an epoch"
    if oracle:
        parts["oracle"] = {"target/test": oracle.get("target/test")}
    for part, splits in parts.items():
        if not isinstance(splits, dict):
            return f"its '{part}' is not a mapping of splits to metrics"
        for split, metrics in splits.items():
            if not isinstance(metrics, dict) or not all(_is_number(metrics.get(name)) for name in METRICS):
                return f"'{part}' split '{split}' lacks a number for each of {', '.join(METRICS)}"
    validators = summary.get("validators", {})
    choices = validators.get("by_validator", {}) if isinstance(validators, dict) else None
    if not isinstance(choices, dict) or not all(isinstance(c, dict) and _is_number(c.get("epoch"))
                                                for c in choices.values()):
        return "its 'validators' is not a mapping of each validator to the epoch it chose"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ignored(key: str) -> bool:
    return any(key == ignored or (ignored.endswith(".") and key.startswith(ignored)) for ignored in IGNORED)


def group_runs(runs: Sequence[RunResult]) -> list[Group]:
    """Runs grouped by their differing settings, in the order the groups first appear."""
    keys = sorted({key for run in runs for key in run.settings if not _ignored(key)})
    differing = [key for key in keys
                 if len({json.dumps(run.settings.get(key, _ABSENT), sort_keys=True) for run in runs}) > 1]
    groups: dict[str, Group] = {}
    for run in runs:
        values = {key: _shown(run.settings.get(key, _ABSENT)) for key in differing}
        groups.setdefault(json.dumps(values), Group(values, [])).runs.append(run)
    # A component's parameters differ with its name (dann's weight, cdan's entropy): the name alone labels the
    # groups, unless two groups would then look alike.
    names = {key[: -len(".name")] for key in differing if key.endswith(".name")}
    short = [key for key in differing
             if not any(key.startswith(f"{prefix}.") and key != f"{prefix}.name" for prefix in names)]
    labels = {json.dumps({key: group.label[key] for key in short}) for group in groups.values()}
    if len(labels) == len(groups):
        for group in groups.values():
            group.label = {key: group.label[key] for key in short}
    return list(groups.values())


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _stats(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _selection(runs: Sequence[RunResult]) -> str:
    rules = sorted({str(run.summary.get("selected_by")) for run in runs})
    return rules[0] if len(rules) == 1 else " / ".join(rules)


def table(runs: Sequence[RunResult], metric: str = "accuracy") -> tuple[list[str], list[list[Any]], str]:
    """The header, the rows (label values, run count, seeds, selection rule, then (mean, std) pairs in %; std None
    for a single run) and the note that
    states the selection rule."""
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric}: choose {' or '.join(METRICS)}")
    groups = group_runs(runs)
    label_keys = list(dict.fromkeys(key for group in groups for key in group.label))
    splits = list(dict.fromkeys(split for run in runs for split in run.summary.get("best", {})))
    has_oracle = any("oracle" in run.summary for run in runs)
    header = [*(label_keys or ["runs of"]), "runs", "seeds", "selected by",
              *(f"{split} (best by validator)" for split in splits),
              *(["target/test (oracle: upper bound)"] if has_oracle else [])]
    rows: list[list[Any]] = []
    for group in groups:
        row: list[Any] = [group.label[key] for key in label_keys] if label_keys else [group.runs[0].summary.get(
            "name", "")]
        seeds = sorted(run.seed for run in group.runs if run.seed is not None)
        row += [len(group.runs), " ".join(map(str, seeds)), _selection(group.runs)]
        for split in splits:
            values = [100 * run.summary["best"][split][metric] for run in group.runs
                      if split in run.summary.get("best", {})]
            row.append(_stats(values) if values else None)
        if has_oracle:
            values = [100 * run.summary["oracle"]["target/test"][metric] for run in group.runs
                      if "oracle" in run.summary]
            row.append(_stats(values) if values else None)
        rows.append(row)
    rule = _selection(runs)
    note = (f"{metric.replace('_', '-')} in %, mean ± standard deviation (n - 1) over each group's runs. Result: the "
            f"checkpoint each run's validator chose, {rule}" + ("; uses no target label" if "oracle" not in rule
                                                               else "") + ".")
    if has_oracle:
        note += (" Oracle: the epoch chosen on target-test labels, an upper bound on what any selection rule could "
                 "reach, not a result.")
    return header, rows, note


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"
    return str(value)


def format_markdown(header: list[str], rows: list[list[Any]], note: str) -> str:
    lines = [note, "", "| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value).replace("|", "\\|") for value in row) + " |" for row in rows]
    return "\n".join(lines)


def format_csv(header: list[str], rows: list[list[Any]]) -> str:
    """One column per label and count, two (mean, std) per metric column; values in %, unrounded."""
    columns: list[str] = []
    first_metric = header.index("selected by") + 1
    for index, name in enumerate(header):
        columns += [f"{name} mean", f"{name} std"] if index >= first_metric else [name]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells: list[Any] = []
        for index, value in enumerate(row):
            if index < first_metric:
                cells.append(value)
            elif value is None:
                cells += ["", ""]
            else:
                cells += [_number(value[0]), _number(value[1])]
        writer.writerow(cells)
    return text.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(round(value, 6))


def compare(paths: Sequence[Path], format: str = "markdown", metric: str = "accuracy") -> str:
    header, rows, note = table(load_runs(paths), metric)
    return format_csv(header, rows) if format == "csv" else format_markdown(header, rows, note)
