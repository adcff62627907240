"""Figures of a report, written as PNG and SVG."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ifval.protocol import VARIANT_FACTOR


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, out_dir: Path, stem: str) -> list[Path]:  # type: ignore[no-untyped-def]
    plt = _pyplot()
    figure.tight_layout()
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for path in paths:
        figure.savefig(path, dpi=150)
    plt.close(figure)
    return paths


def plot_scores(cells: pd.DataFrame, factors: list[str], out_dir: Path, stem: str = "scores",
                confidence: float = 0.95, keys: Sequence[str] = ("estimator", "ground_truth"),
                panel: str = "scorer") -> list[Path]:
    """Plot the mean value per cell with interval error bars, one panel per ``panel`` level.

    This is the analogue of Figure 1 of Epifano et al. The x axis is the
    first numeric factor, or else the first factor other than the variant.
    Each line is one level combination of the other factors and of those
    ``keys`` that have several levels (the estimator and ground truth of a
    run), and the legend names it. Without a ``panel`` column the figure
    has one panel.
    """
    plt = _pyplot()
    x_factor = _x_factor(cells, factors)
    line_columns = [f for f in factors if f != x_factor]
    line_columns += [k for k in keys if k in cells.columns and k not in factors and k != panel
                     and cells[k].nunique() > 1]
    panels = list(dict.fromkeys(cells[panel])) if panel in cells.columns else [None]
    columns = min(len(panels), PANELS_PER_ROW)
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows),
                                squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)

    for axis, level in zip(axes.flat, panels, strict=False):
        subset = cells if level is None else cells[cells[panel] == level]
        groups = subset.groupby(line_columns, sort=False) if line_columns else [((), subset)]
        for levels, line in groups:
            levels = levels if isinstance(levels, tuple) else (levels,)
            label = ", ".join(str(v) for v in levels) or "all"
            positions = np.arange(len(line)) if x_factor is None else line[x_factor].to_numpy()
            mean = line["mean"].to_numpy(dtype=float)
            error = np.vstack([mean - line["ci_low"].to_numpy(dtype=float),
                               line["ci_high"].to_numpy(dtype=float) - mean])
            axis.errorbar(positions, mean, yerr=np.nan_to_num(error), marker="o", capsize=3,
                          label=label)
        name = "value" if level is None else str(level)
        axis.set_title(name)
        axis.set_xlabel(x_factor or "condition")
        axis.set_ylabel(f"mean {name} ({confidence:.0%} interval)")
        axis.grid(alpha=0.3)
        if line_columns:
            axis.legend(fontsize=8, title=", ".join(line_columns), title_fontsize=8)
    return _save(figure, out_dir, stem)


PANELS_PER_ROW = 3
"""Panels of the scores figure per row, so six scorers make a 2 × 3 grid."""


def _x_factor(cells: pd.DataFrame, factors: list[str]) -> str | None:
    numeric = [f for f in factors if pd.api.types.is_numeric_dtype(cells[f])]
    if numeric:
        return numeric[0]
    return next((f for f in factors if f != VARIANT_FACTOR), None)


@dataclass
class RankedPair:
    """Estimated and true changes of one (trial, estimator, ground truth), for one panel."""

    title: str
    estimate: np.ndarray
    truth: np.ndarray
    scores: dict[str, float] = field(default_factory=dict)


def plot_ranked_changes(pairs: list[RankedPair], out_dir: Path,
                        stem: str = "ranked_changes") -> list[Path]:
    """Plot estimated and true changes against the rank of the true change, one panel per pair.

    This is the analogue of Figure 4 of Epifano et al. Rank 1 is the point
    whose removal raises the test loss most. Both series share one y axis in
    the loss's units, so an estimate with the right order but the wrong
    magnitudes shows as a gap between the two series that Spearman's ρ
    does not see. The panel title lists the pair's scores.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows),
                                squeeze=False)
    for axis, pair in zip(axes.flat, pairs, strict=False):
        order = np.argsort(-pair.truth, kind="stable")
        rank = np.arange(1, len(order) + 1)
        axis.plot(rank, pair.truth[order], marker="o", markersize=3, label="true change")
        axis.plot(rank, pair.estimate[order], marker="x", linestyle="none",
                  label="estimated change")
        axis.axhline(0.0, color="grey", linewidth=0.6)
        scores = ", ".join(f"{name} {value:.2f}" for name, value in pair.scores.items())
        title = "\n".join([pair.title, *textwrap.wrap(scores, width=70)])
        axis.set_title(title, fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("rank of the true change (1 = largest)")
        axis.set_ylabel("change in test loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(pairs):]:
        axis.set_visible(False)
    return _save(figure, out_dir, stem)
