"""``transmodal report``: one HTML page with PNG figures for a run, or comparing several runs.

For one run: loss and accuracy per split over the epochs, the strategies' loss terms and logged metrics, the epoch
each label-free validator would pick beside the oracle's, and, from the best checkpoint on every evaluation split, its
features in 2-D (before training too, where the run adapted to target data), each modality's contribution and the
confusion matrix and per-class metrics. ``metrics.jsonl`` and ``summary.json`` hold the curves, but the run keeps
neither features nor the confusion matrix of its best epoch, so ``best.pt`` is evaluated again
(``report_measures.py``). For several runs: their curves overlaid and a
table of their best and final metrics and validator picks (nothing is evaluated).

The page and its figures are written into a temporary folder beside the destination and renamed into place, so a
reader never sees half a report. The figures need matplotlib, an optional extra (``transmodal[report]``).
"""

from __future__ import annotations

import html
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from transmodal.compare import summary_problem
from transmodal.errors import ConfigError, TransmodalError
from transmodal.report_measures import SAMPLES, Measures
from transmodal.run_dir import open_up, read_metrics

PAGE = "report.html"
INSTALL_HINT = 'pip install "transmodal[report]"'
ORACLE_SPLIT = "target/test"  # the split whose labels the oracle epoch is chosen on (see selection.py)

Panels = dict[str, dict[str, list[tuple[float, float]]]]  # panel title -> line label -> (epoch, value) points


@dataclass(frozen=True)
class Run:
    path: Path
    label: str
    records: list[dict[str, Any]]  # metrics.jsonl, one per epoch
    summary: dict[str, Any]  # summary.json; empty while the run has none (still training, or stopped)

    @property
    def splits(self) -> list[str]:
        """The evaluation splits, in the order the run records them."""
        return [key for key, value in self.records[-1].items() if isinstance(value, dict) and "accuracy" in value]

    def curve(self, section: str, key: str) -> list[tuple[float, float]]:
        return [(record["epoch"], record[section][key]) for record in self.records
                if key in record.get(section, {})]

    def train_keys(self, prefix: str) -> list[str]:
        """The names under ``prefix`` ("loss/", "metric/") that any epoch's train record holds."""
        keys = (key for record in self.records for key in record["train"] if key.startswith(prefix))
        return [key.removeprefix(prefix) for key in dict.fromkeys(keys)]


def write_report(run_dirs: Sequence[Path], output: Path | None = None, samples: int = SAMPLES) -> Path:
    """Write the report of ``run_dirs`` (one: its own page; several: a comparison) into ``output``, by default
    the first run's ``report/`` folder, which a new report replaces; returns the page's path. ``samples``: per
    split, for the features and the modality contribution."""
    plots = _plots()
    runs = [_read_run(path, label) for path, label in zip(run_dirs, _labels(run_dirs))]
    output = _destination(output or run_dirs[0] / "report")
    evaluation = _best_evaluation(runs[0], samples) if len(runs) == 1 else None
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as error:
        raise ConfigError(f"--output {output}: cannot write in {output.parent} ({error.strerror}); choose a folder "
                          f"you can write to") from None
    try:
        body = (_run_page(runs[0], evaluation, plots, temporary) if evaluation is not None
                else _comparison_page(runs, plots, temporary))
        (temporary / PAGE).write_text(_document(body), encoding="utf-8")
        open_up(temporary)  # mkdtemp's folder is private; a report is made to be read
        _replace(output, temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return output / PAGE


def _plots() -> ModuleType:
    # matplotlib is looked for on every call: report_plots may have been imported before it became unavailable.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(f"transmodal report draws its figures with matplotlib, which is not installed: "
                          f"{INSTALL_HINT}") from None
    from transmodal import report_plots

    return report_plots


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a name."""
    names = [path.name or str(path) for path in run_dirs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, run_dirs)]


def _read_run(path: Path, label: str) -> Run:
    records = read_metrics(path)
    if not records:
        raise ConfigError(f"{path} has no epoch recorded in metrics.jsonl: not a run directory, or one that has "
                          f"not finished its first epoch")
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent while training; the curves do without it
        summary = {}
    problem = summary_problem(summary)
    if problem is not None:
        raise ConfigError(f"{path / 'summary.json'}: {problem}; it is not a summary that training wrote")
    return Run(path, label, records, summary)


def _destination(output: Path) -> Path:
    """``output``, checked before anything is evaluated: a new folder, or a previous report to replace."""
    output = output.expanduser()
    if not output.parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {output.parent} does not exist")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; choose a folder")
    if output.is_dir() and not _holds_only_a_report(output):
        raise ConfigError(f"--output {output} is a folder that holds more than a report ({PAGE} and its .png "
                          f"figures), so it is not replaced; choose a new folder")
    return output


def _holds_only_a_report(folder: Path) -> bool:
    """Empty, or what a report writes and nothing else: the page and its figures, all plain files."""
    children = list(folder.iterdir())
    if not children:
        return True
    return (folder / PAGE).is_file() and all(
        child.is_file() and not child.is_symlink() and (child.name == PAGE or child.suffix == ".png")
        for child in children)


def _replace(output: Path, temporary: Path) -> None:
    """Put the finished report at ``output``, the previous one aside first and then removed."""
    if not output.exists():
        temporary.rename(output)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{output.name}.previous.", dir=output.parent))
    output.rename(previous / output.name)
    temporary.rename(output)
    shutil.rmtree(previous, ignore_errors=True)


@dataclass(frozen=True)
class _Evaluation:
    metrics: dict[str, dict[str, Any]]  # by split, with per_class and confusion
    caption: str
    measures: Measures | None = None  # what only the checkpoint can give: features, modality contribution


def _best_evaluation(run: Run, samples: int) -> _Evaluation:
    """The best checkpoint on every evaluation split, per class, with its features and modality contribution;
    where it cannot be evaluated (the dataset moved, a plugin is missing), the final epoch's metrics from
    summary.json, saying why."""
    from transmodal.report_measures import measure

    try:
        measures = measure(run.path, samples)
        header = measures.header
        return _Evaluation(measures.metrics, f"best checkpoint (epoch {header['epoch']}, selected by "
                                             f"{header['selected_by']}), evaluated again", measures)
    except TransmodalError as error:
        print(f"transmodal report: the best checkpoint could not be evaluated ({error}); the confusion matrices "
              f"are the final epoch's, from summary.json, and the features and modality contribution are left "
              f"out", file=sys.stderr)
        final = {split: metrics for split, metrics in run.summary.get("final", {}).items() if "confusion" in metrics}
        return _Evaluation(final, f"final epoch, from summary.json: the best checkpoint could not be evaluated "
                                  f"({error})")


# -- pages ---------------------------------------------------------------------------------------------------


def _run_page(run: Run, evaluation: _Evaluation, plots: ModuleType, folder: Path) -> str:
    summary = run.summary
    facts = [("run directory", str(run.path)), ("experiment", summary.get("name")),
             ("epochs", summary.get("epochs", run.records[-1]["epoch"])), ("steps", summary.get("steps")),
             ("checkpoint selected by", summary.get("selected_by")), ("best epoch", summary.get("best_epoch"))]
    if "stopped_early" in summary:
        stopped = summary["stopped_early"]
        facts.append(("stopped early", f"epoch {stopped['epoch']} (patience {stopped['patience']})"))
    parts = [f"<h1>{_text(run.label)}</h1>", _table([], [f for f in facts if f[1] is not None]),
             "<h2>Metrics</h2>", _metrics_table([run], by_run=False)]
    parts.append("<h2>Curves</h2>")
    splits = run.splits
    panels: list[tuple[str, Panels, str]] = [
        ("loss.png", {"loss": {"train": run.curve("train", "loss"),
                               **{split: run.curve(split, "loss") for split in splits}}}, "loss"),
        ("accuracy.png", {"accuracy": {split: run.curve(split, "accuracy") for split in splits},
                          "macro-F1": {split: run.curve(split, "macro_f1") for split in splits}}, "score"),
    ]
    terms = run.train_keys("loss/")
    if terms != ["task"]:  # a strategy adds terms; alone, "task" is the loss already drawn
        panels.append(("loss-terms.png", {"train loss terms": {t: run.curve("train", f"loss/{t}") for t in terms}},
                       "loss"))
    metrics = run.train_keys("metric/")
    if metrics:  # scales differ, so a panel each
        panels.append(("strategy-metrics.png", {m: {m: run.curve("train", f"metric/{m}")} for m in metrics},
                       "value"))
    parts += [_figure(plots, folder, name, figure_panels, ylabel) for name, figure_panels, ylabel in panels]
    parts.append(_validators_section(run, plots, folder))
    if evaluation.measures is not None:
        parts += [_features_section(evaluation.measures, plots, folder),
                  _contribution_section(evaluation.measures, plots, folder)]
    parts.append(f"<h2>Confusion matrices</h2><p>{_text(evaluation.caption)}; rows: true class, columns: predicted "
                 f"class, colour: share of the true class.</p>")
    if not evaluation.metrics:
        parts.append("<p>None available.</p>")
    for split, metrics in evaluation.metrics.items():
        name = f"confusion-{_slug(split)}.png"
        classes = list(metrics["per_class"])
        plots.confusion_matrix(metrics["confusion"], classes, split, folder / name)
        rows = [[c, *(_number(v[key]) for key in ("precision", "recall", "f1")), v["support"]]
                for c, v in metrics["per_class"].items()]
        heading = f"{split}: accuracy {_number(metrics['accuracy'])}, macro-F1 {_number(metrics['macro_f1'])}"
        parts += [f"<h3>{_text(heading)}</h3>", _image(name, f"confusion matrix, {split}"),
                  _table(["class", "precision", "recall", "F1", "support"], rows)]
    return "\n".join(parts)


def _validators_section(run: Run, plots: ModuleType, folder: Path) -> str:
    choices = run.summary.get("validators", {}).get("by_validator", {})
    if not choices:
        return ""
    oracle = run.summary.get("oracle", {}).get("epoch")
    rows = [[name, c["epoch"], _number(c.get(f"{ORACLE_SPLIT} accuracy")), _number(c.get("regret"))]
            for name, c in choices.items()]
    if oracle is not None:
        rows.append(["oracle (target labels: an upper bound)", oracle,
                     _number(run.summary["oracle"][ORACLE_SPLIT]["accuracy"]), _number(0.0)])
    oracle_mark = [(oracle, f"oracle, epoch {oracle}", ":")] if oracle is not None else []
    scores = {name: {"score": run.curve("validators", name)} for name in choices}
    marks = {name: [(c["epoch"], f"picks epoch {c['epoch']}", "--"), *oracle_mark] for name, c in choices.items()}
    if ORACLE_SPLIT in run.splits:
        scores[f"{ORACLE_SPLIT} accuracy"] = {ORACLE_SPLIT: run.curve(ORACLE_SPLIT, "accuracy")}
        marks[f"{ORACLE_SPLIT} accuracy"] = oracle_mark
    return "\n".join([
        "<h2>Label-free validators</h2>",
        f"<p>{_text(run.summary['validators'].get('note', ''))}.</p>",
        _table(["validator", "epoch it picks", f"{ORACLE_SPLIT} accuracy there", "regret"], rows),
        _figure(plots, folder, "validators.png", scores, "score", marks),
    ])


def _features_section(measures: Measures, plots: ModuleType, folder: Path) -> str:
    """The fused features of each split in 2-D (PCA; t-SNE too with scikit-learn), coloured by split and by
    class; before adaptation as well where the run adapted to unlabelled target data."""
    from transmodal.report_measures import TSNE_SAMPLES, pca, tsne

    if not measures.after:
        return ""
    states = {**({"before training": measures.before} if measures.before else {}), "best checkpoint": measures.after}
    pca_panels: dict[str, dict[str, Any]] = {}
    tsne_panels: dict[str, dict[str, Any]] = {}
    shares = []
    for state, by_split in states.items():
        features = {split: values for split, (values, _) in by_split.items()}
        labels = {split: label for split, (_, label) in by_split.items()}
        points, share = pca(features)
        shares.append(f"{state}: {share[0]:.0%} and {share[1]:.0%}")
        pca_panels.update(_coloured(state, points, labels, measures.classes))
        embedded = tsne(features)
        if embedded is not None:
            tsne_panels.update(_coloured(state, embedded, labels, measures.classes))
    note = (f"The fused features (what the head classifies and adaptation aligns) of {_first(measures)}, all "
            f"splits projected together. ")
    if measures.before is not None:
        note += ("Before training: the model the run started from (the same seed and pretrained weights, before "
                 "any step); the run keeps no checkpoint of an earlier epoch. ")
    else:
        note += "Only the best checkpoint is drawn: this run used no unlabelled target data. "
    note += f"Share of the variance on the two PCA axes: {'; '.join(shares)}."
    parts = ["<h2>Features in 2-D</h2>", f"<p>{_text(note)}</p>"]
    plots.scatter_panels(pca_panels, folder / "features-pca.png", 2, "PC 1", "PC 2")
    parts.append(_image("features-pca.png", "features in 2-D by PCA"))
    if tsne_panels:
        plots.scatter_panels(tsne_panels, folder / "features-tsne.png", 2, "t-SNE 1", "t-SNE 2")
        parts += [f"<p>t-SNE (scikit-learn) of the first {TSNE_SAMPLES} of these samples of each split.</p>",
                  _image("features-tsne.png", "features in 2-D by t-SNE")]
    else:
        parts.append("<p>With scikit-learn installed, a t-SNE view is drawn as well.</p>")
    return "\n".join(parts)


def _first(measures: Measures) -> str:
    """How many samples of each split were measured: the first ``samples`` in evaluation order, or all."""
    counts = {split: len(labels) for split, (_, labels) in measures.after.items()}
    cut = any(count == measures.samples for count in counts.values())
    return (f"the first {measures.samples} samples of each split (--samples), or all of a smaller one"
            if cut else f"all samples of each split ({', '.join(f'{s}: {n}' for s, n in counts.items())})")


def _coloured(state: str, points: Mapping[str, Any], labels: Mapping[str, Any],
              classes: Sequence[str]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Two panels of ``state``: the points coloured by split, and the same points coloured by class."""
    by_class: dict[str, list[tuple[float, float]]] = {name: [] for name in classes}
    for split, xy in points.items():
        for point, label in zip(xy.tolist(), labels[split].tolist()):
            by_class[classes[label]].append(tuple(point))
    return {f"{state}, by split": {split: [tuple(p) for p in xy.tolist()] for split, xy in points.items()},
            f"{state}, by class": {name: xy for name, xy in by_class.items() if xy}}


def _contribution_section(measures: Measures, plots: ModuleType, folder: Path) -> str:
    """Accuracy on each split with every modality, and with each one dropped (``evaluate --drop-modality``)."""
    from transmodal.report_measures import ALL

    contribution = measures.contribution
    if not contribution:
        return ""
    settings = list(contribution)
    dropped = [setting.removeprefix("without ") for setting in settings[1:]]
    splits = list(contribution[ALL])
    rows = [[split, *(_number(contribution[s][split]["accuracy"]) for s in settings),
             *(_number(contribution[ALL][split]["accuracy"] - contribution[s][split]["accuracy"])
               for s in settings[1:])] for split in splits]
    plots.grouped_bars({split: {s: contribution[s][split]["accuracy"] for s in settings} for split in splits},
                       folder / "modalities.png", "accuracy")
    note = (f"Accuracy of the best checkpoint with every modality, and with each one absent (as transmodal "
            f"evaluate --drop-modality measures it), on {_first(measures)}; what a modality adds is the accuracy "
            f"lost without it.")
    return "\n".join(["<h2>Modality contribution</h2>", f"<p>{_text(note)}</p>",
                      _table(["split", *settings, *(f"{m} adds" for m in dropped)], rows),
                      _image("modalities.png", "accuracy with each modality dropped")])


def _comparison_page(runs: Sequence[Run], plots: ModuleType, folder: Path) -> str:
    splits = list(dict.fromkeys(split for run in runs for split in run.splits))
    terms = list(dict.fromkeys(term for run in runs for term in run.train_keys("loss/")))
    metrics = list(dict.fromkeys(m for run in runs for m in run.train_keys("metric/")))
    figures: list[tuple[str, Panels, str]] = [
        ("loss.png", {"train": {run.label: run.curve("train", "loss") for run in runs},
                      **{split: _by_run(runs, split, "loss") for split in splits}}, "loss"),
        ("accuracy.png", {split: _by_run(runs, split, "accuracy") for split in splits}, "accuracy"),
    ]
    if terms != ["task"]:
        figures.append(("loss-terms.png", {t: _by_run(runs, "train", f"loss/{t}") for t in terms}, "loss"))
    if metrics:
        figures.append(("strategy-metrics.png", {m: _by_run(runs, "train", f"metric/{m}") for m in metrics},
                        "value"))
    parts = [f"<h1>{len(runs)} runs compared</h1>",
             _table(["run", "run directory", "experiment", "epochs", "checkpoint selected by"],
                    [[r.label, str(r.path), r.summary.get("name"), r.records[-1]["epoch"],
                      r.summary.get("selected_by")] for r in runs]),
             "<h2>Metrics</h2>", _metrics_table(runs, by_run=True), "<h2>Curves</h2>",
             *(_figure(plots, folder, name, panels, ylabel) for name, panels, ylabel in figures)]
    validators = list(dict.fromkeys(name for run in runs
                                    for name in run.summary.get("validators", {}).get("by_validator", {})))
    if validators:
        rows = [[name, *(_pick(run, name) for run in runs)] for name in validators]
        rows.append(["oracle", *(_oracle_epoch(run) for run in runs)])
        note = f"The epoch each would pick (regret: the oracle's {ORACLE_SPLIT} accuracy minus the accuracy there)."
        parts += ["<h2>Label-free validators</h2>", f"<p>{_text(note)}</p>",
                  _table(["validator", *(run.label for run in runs)], rows)]
    return "\n".join(parts)


def _by_run(runs: Iterable[Run], section: str, key: str) -> dict[str, list[tuple[float, float]]]:
    return {run.label: run.curve(section, key) for run in runs}


def _pick(run: Run, validator: str) -> str:
    choice = run.summary.get("validators", {}).get("by_validator", {}).get(validator)
    if choice is None:
        return "–"
    regret = f" (regret {_number(choice['regret'])})" if "regret" in choice else ""
    return f"epoch {choice['epoch']}{regret}"


def _oracle_epoch(run: Run) -> str:
    oracle = run.summary.get("oracle")
    return f"epoch {oracle['epoch']}" if oracle else "–"


def _metrics_table(runs: Sequence[Run], by_run: bool) -> str:
    """Best (the run's validator's epoch) and final metrics per split, and the oracle's where there is one."""
    rows = []
    for run in runs:
        summary = run.summary
        final = summary.get("final") or {s: run.records[-1][s] for s in run.splits}  # no summary yet: last epoch
        for split in run.splits:
            best = summary.get("best", {}).get(split, {})
            oracle = summary.get("oracle", {}) if split == ORACLE_SPLIT else {}
            rows.append([*([run.label] if by_run else []), split, summary.get("best_epoch"),
                         _number(best.get("accuracy")), _number(best.get("macro_f1")),
                         _number(final.get(split, {}).get("accuracy")), _number(final.get(split, {}).get("macro_f1")),
                         _number(oracle.get(ORACLE_SPLIT, {}).get("accuracy")), oracle.get("epoch")])
    headers = ["split", "best epoch", "best accuracy", "best macro-F1", "final accuracy", "final macro-F1",
               "oracle accuracy", "oracle epoch"]
    return _table(["run", *headers] if by_run else headers, rows)


# -- HTML ----------------------------------------------------------------------------------------------------


def _figure(plots: ModuleType, folder: Path, name: str, panels: Panels, ylabel: str,
            marks: Mapping[str, Sequence[tuple[float, str, str]]] | None = None) -> str:
    plots.line_panels(panels, folder / name, ylabel, marks)
    return _image(name, ", ".join(panels))


def _image(name: str, alt: str) -> str:
    return f'<p><img src="{html.escape(name)}" alt="{html.escape(alt)}"></p>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = f"<tr>{''.join(f'<th>{_text(h)}</th>' for h in headers)}</tr>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _text(value: Any) -> str:
    return "–" if value is None else html.escape(str(value))


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def _slug(split: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in split)


_STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1500px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
th { background: #f3f3f3; } td { text-align: right; } td:first-child { text-align: left; }
img { max-width: 100%; }"""


def _document(body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>transmodal report</title>'
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")
