"""Figures of a run, written as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ifval.protocol import VARIANT_FACTOR


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores(cells: pd.DataFrame, factors: list[str], out_dir: Path, stem: str = "scores",
                confidence: float = 0.95) -> list[Path]:
    """Plot the mean score per cell with interval error bars, one panel per scorer.

    This is the analogue of Figure 1 of Epifano et al.

    The x axis is the first factor that is not the variant; each line is one
    variant (and estimator/ground truth pair, when the run has several).
    """
    plt = _pyplot()
    x_factor = next((f for f in factors if f != VARIANT_FACTOR), None)
    line_factors = [f for f in factors if f != x_factor]
    scorers = list(dict.fromkeys(cells["scorer"]))
    pairs = cells[["estimator", "ground_truth"]].drop_duplicates()
    figure, axes = plt.subplots(1, len(scorers), figsize=(5.2 * len(scorers), 4.2), squeeze=False)

    for axis, scorer in zip(axes[0], scorers, strict=True):
        subset = cells[cells["scorer"] == scorer]
        group_keys = line_factors + ["estimator", "ground_truth"]
        for levels, line in subset.groupby(group_keys, sort=False):
            levels = levels if isinstance(levels, tuple) else (levels,)
            parts = [str(v) for v in levels[: len(line_factors)]]
            if len(pairs) > 1:
                parts.append(f"{levels[-2]} vs {levels[-1]}")
            label = ", ".join(parts) or f"{levels[-2]} vs {levels[-1]}"
            if x_factor is None:
                positions = np.arange(len(line))
                axis.set_xticks(positions, [label] * len(line))
            else:
                positions = line[x_factor].to_numpy()
            mean = line["mean"].to_numpy(dtype=float)
            error = np.vstack([mean - line["ci_low"].to_numpy(dtype=float),
                               line["ci_high"].to_numpy(dtype=float) - mean])
            axis.errorbar(positions, mean, yerr=np.nan_to_num(error), marker="o", capsize=3,
                          label=label)
        axis.set_title(scorer)
        axis.set_xlabel(x_factor or "condition")
        axis.set_ylabel(f"mean {scorer} ({confidence:.0%} interval)")
        axis.grid(alpha=0.3)
        if line_factors or len(pairs) > 1:
            axis.legend(fontsize=8)
    figure.tight_layout()
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for path in paths:
        figure.savefig(path, dpi=150)
    plt.close(figure)
    return paths
