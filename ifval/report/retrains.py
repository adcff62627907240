"""Retraining diagnostics in reports: basin-jump counts and the retraining-trajectory figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ifval.report.tables import DisplayTable

BASIN_JUMP = "basin_jump"
"""Diagnostic a ground truth sets on a retrain that left the basin it started in."""


def basin_flags(truths: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (trial, ground truth) with its retrain count and how many were flagged.

    Ground truths that record no ``basin_jump`` diagnostic are left out.
    """
    flags = [d.get(BASIN_JUMP) if isinstance(d, dict) else None for d in truths["diagnostics"]]
    frame = truths.drop(columns=["diagnostics"]).assign(flagged=flags)
    frame = frame[frame["flagged"].notna()]
    if frame.empty:
        return frame.assign(retrains=[], flagged_retrains=[])
    keys = [c for c in frame.columns if c not in ("position", "truth", "flagged")]
    grouped = frame.groupby(keys, sort=False, dropna=False)["flagged"]
    return grouped.agg(retrains="size", flagged_retrains="sum").reset_index()


def basin_table(flags: pd.DataFrame, factors: list[str]) -> DisplayTable | None:
    """Count, per condition and ground truth, the trials with a retrain that left its basin."""
    if flags.empty:
        return None
    flags = flags.assign(trial_flagged=flags["flagged_retrains"] > 0)
    # Factors such as `estimator` do not apply to a ground truth's retrains.
    keys = list(dict.fromkeys([f for f in factors if f in flags.columns] + ["ground_truth"]))
    table = flags.groupby(keys, sort=False, dropna=False).agg(
        trials=("trial_id", "size"), flagged_trials=("trial_flagged", "sum"),
        retrains=("retrains", "sum"), flagged_retrains=("flagged_retrains", "sum"),
    ).reset_index()
    text = table.astype({c: str for c in table.columns})
    total = int(table["flagged_trials"].sum())
    note = (f"{total} of {int(table['trials'].sum())} trial-ground truth pairs have a retrain "
            "whose objective rose above its start by more than the ground truth's "
            "`basin_tolerance`.")
    return DisplayTable("Retrains that left their basin", text, note)


def flagged_pairs(flags: pd.DataFrame) -> set[tuple[str, str]]:
    """Return the (trial id, ground truth) pairs with at least one flagged retrain."""
    if flags.empty:
        return set()
    rows = flags[flags["flagged_retrains"] > 0]
    return set(zip(rows["trial_id"], rows["ground_truth"], strict=True))


def plot_retraining(truths: pd.DataFrame, picks: list[tuple[str, str]], out_dir: Path,
                    stem: str = "retraining") -> list[Path]:
    """Plot each picked retrain's test loss over its epochs, one panel per (trial, ground truth).

    This is the analogue of Figure 5 of Epifano et al. Each line is the
    retrain of one removed point, drawn as the change from its starting
    test loss. Retrains flagged as having left their basin are drawn in red.
    """
    from ifval.report.plots import _pyplot, _save

    plt = _pyplot()
    columns = min(3, len(picks))
    rows = math.ceil(len(picks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows),
                                squeeze=False)
    for axis, (trial, truth) in zip(axes.flat, picks, strict=False):
        subset = truths[(truths["trial_id"] == trial) & (truths["ground_truth"] == truth)]
        flagged = 0
        for diagnostics in subset["diagnostics"]:
            epochs = np.asarray(diagnostics["trajectory_epochs"])
            loss = np.asarray(diagnostics["trajectory_test_loss"], dtype=float)
            jump = bool(diagnostics.get(BASIN_JUMP, False))
            flagged += jump
            axis.plot(epochs, loss - loss[0], color="tab:red" if jump else "tab:blue",
                      alpha=0.9 if jump else 0.4, linewidth=1.2 if jump else 0.8)
        axis.axhline(0.0, color="grey", linewidth=0.6)
        axis.set_title(f"{trial}, {truth}\n{len(subset)} retrains, {flagged} left their basin",
                       fontsize=8)
        axis.set_xlabel("retraining epoch")
        axis.set_ylabel("test loss minus its start")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(picks):]:
        axis.set_visible(False)
    return _save(figure, out_dir, stem)


def trajectory_picks(truths: pd.DataFrame, flags: pd.DataFrame, worst: list[tuple[str, str]],
                     count: int = 3) -> list[tuple[str, str]]:
    """Choose the retrains to plot: the most-flagged pairs first, then the worst-scored pairs."""
    has_trajectory = {
        (trial, truth)
        for trial, truth, diagnostics in zip(truths["trial_id"], truths["ground_truth"],
                                             truths["diagnostics"], strict=True)
        if isinstance(diagnostics, dict) and "trajectory_test_loss" in diagnostics
    }
    picks: list[tuple[str, str]] = []
    if not flags.empty:
        ranked = flags[flags["flagged_retrains"] > 0].sort_values(
            "flagged_retrains", ascending=False, kind="stable")
        picks += list(zip(ranked["trial_id"], ranked["ground_truth"], strict=True))
    picks += worst
    picks = [pick for pick in dict.fromkeys(picks) if pick in has_trajectory]
    return picks[:count]
