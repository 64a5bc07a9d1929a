"""The report's figures, drawn with matplotlib (the ``report`` extra) and saved as PNG files.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot: no global figure state and no GUI backend,
so drawing works on a headless machine and inside a process that already uses matplotlib interactively.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure

Curve = Sequence[tuple[float, float]]  # (epoch, value) points
Mark = tuple[float, str, str]  # (epoch, label, line style): a vertical line across a panel

_PANEL_WIDTH, _PANEL_HEIGHT = 4.8, 3.4  # inches
_ANNOTATED_CLASSES = 30  # beyond this many classes a confusion matrix's cells are too small for their counts
_LABELLED_CLASSES = 60  # ... and its axes too crowded for class names
_DPI = 100


def _plain_text(draw: Callable[..., None]) -> Callable[..., None]:
    """Labels drawn as written: matplotlib reads text between two $ as math, which a class name such as "$$"
    (a price tier) would break or turn into other symbols."""
    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> None:
        with rc_context({"text.parse_math": False}):
            draw(*args, **kwargs)
    return drawn


@_plain_text
def line_panels(panels: Mapping[str, Mapping[str, Curve]], path: Path, ylabel: str,
                marks: Mapping[str, Sequence[Mark]] | None = None) -> None:
    """One panel per entry of ``panels`` side by side, each with a line per labelled curve over epochs, and the
    panel's ``marks``."""
    marks = marks or {}
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(_PANEL_WIDTH * columns, _PANEL_HEIGHT * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, (title, curves) in zip(axes, panels.items()):
        for label, points in curves.items():
            epochs, values = zip(*points) if points else ((), ())
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
        for index, (epoch, label, style) in enumerate(marks.get(title, ()), len(curves)):
            ax.axvline(epoch, color=f"C{index}", linestyle=style, label=label)  # colours after the curves'

        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.ticklabel_format(axis="y", useOffset=False)  # validator scores vary in their 5th digit
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.savefig(path, dpi=_DPI)


@_plain_text
def confusion_matrix(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: Path) -> None:
    """Counts coloured by their share of the true class (so that rare classes show as clearly as common ones):
    rows are true classes, columns predicted ones."""
    size = len(classes)
    side = min(max(4.0, 0.45 * size + 2), 24.0)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = figure.subplots()
    shares = [[count / max(1, sum(row)) for count in row] for row in confusion]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, label="share of the true class")
    if size <= _ANNOTATED_CLASSES:
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize="small",
                        color="white" if shares[i][j] > 0.5 else "black")
    if size <= _LABELLED_CLASSES:
        names = [name if len(name) <= 18 else name[:17] + "…" for name in classes]
        ax.set_xticks(range(size), names, rotation=60, ha="right", fontsize="small")
        ax.set_yticks(range(size), names, fontsize="small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    figure.savefig(path, dpi=_DPI)


Points = Sequence[tuple[float, float]]  # (x, y) of each sample in a 2-D projection
_LEGEND_GROUPS = 12  # beyond this many groups (classes) a scatter's legend hides the points


@_plain_text
def scatter_panels(panels: Mapping[str, Mapping[str, Points]], path: Path, columns: int, xlabel: str,
                   ylabel: str) -> None:
    """Panels of points in rows of ``columns``, a colour for each group (a split, a class) of a panel."""
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=((_PANEL_WIDTH + 1.4) * columns, _PANEL_WIDTH * rows), layout="constrained")  # + legend
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, (title, groups) in zip(axes, panels.items()):
        size = 14 if sum(len(points) for points in groups.values()) < 1000 else 5  # small, where they crowd
        for index, (label, points) in enumerate(groups.items()):
            xs, ys = zip(*points) if points else ((), ())
            # Ten distinct colours; beyond them (many classes), a continuous map
            colour = f"C{index}" if len(groups) <= 10 else colormaps["turbo"](index / (len(groups) - 1))
            ax.scatter(xs, ys, s=size, alpha=0.6, color=colour, label=label, linewidths=0)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(groups) <= _LEGEND_GROUPS:
            ax.legend(fontsize="x-small", markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))  # off the points
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.savefig(path, dpi=_DPI)


@_plain_text
def grouped_bars(values: Mapping[str, Mapping[str, float]], path: Path, ylabel: str) -> None:
    """For each group (a split), a bar per setting (all modalities, without each one)."""
    groups = list(values)
    settings = list(dict.fromkeys(setting for bars in values.values() for setting in bars))
    width = 0.8 / max(1, len(settings))
    figure = Figure(figsize=(max(_PANEL_WIDTH, 2.5 + 0.6 * len(groups) * len(settings)), _PANEL_HEIGHT),
                    layout="constrained")
    ax = figure.subplots()
    for index, setting in enumerate(settings):
        offsets = [g + (index - (len(settings) - 1) / 2) * width for g in range(len(groups))]
        heights = [values[group].get(setting, 0.0) for group in groups]
        bars = ax.bar(offsets, heights, width, label=setting, color=f"C{index}")
        ax.bar_label(bars, fmt="%.3f", fontsize="x-small")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.08)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside: bars reach the top
    figure.savefig(path, dpi=_DPI)
