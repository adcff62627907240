"""The basin-jump flag of retrains and its use in reports."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import linear_batch, solve_logistic

from ifval.ground_truths.retrain import RetrainFromOptimum, RetrainParams
from ifval.models.mlp import MLP, MLPParams
from ifval.report.retrains import basin_flags, basin_table, flagged_pairs
from ifval.training.fit import FitSettings, fit

POINTS = np.array([[2, 30, 90, 140]])


def test_convex_retrain_not_flagged(iris_split):
    n = len(iris_split.y_train)
    flat = solve_logistic(iris_split.x_train, iris_split.y_train, np.full(n, 1 / n), 0.01, 3)
    batch = linear_batch(iris_split, flat, 0.01)
    result = RetrainFromOptimum().measure(RetrainParams(epochs=300, lr=0.01), batch, POINTS)
    for entry in result.diagnostics[0]:
        assert entry["basin_jump"] is False
        assert entry["objective_rise"] < 1e-3


@pytest.fixture(scope="module")
def trained_mlp(iris_split):
    model, params = MLP(), MLPParams(depth=1, width=10)
    weights = {name: w[None] for name, w in
               model.init(params, 4, 3, torch.Generator().manual_seed(1)).items()}
    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    n = len(y)
    objective = model.objective(params, x, y, torch.full((1, n), 1 / n, dtype=torch.float64))
    result = fit(weights, objective, FitSettings(epochs=2000, lr=0.01,
                                                 weight_decay=torch.zeros(1)))
    base = linear_batch(iris_split, np.zeros(15), 0.0)
    return dataclasses.replace(base, model=model, model_params=params, weights=result.weights)


def test_large_step_retrain_flagged(trained_mlp):
    # Adam's first steps move every weight by about lr, so lr 2 throws each
    # retrain far out of the minimum it started in.
    params = RetrainParams(layers="all", epochs=50, lr=2.0)
    result = RetrainFromOptimum().measure(params, trained_mlp, POINTS)
    rises = [entry["objective_rise"] for entry in result.diagnostics[0]]
    assert all(entry["basin_jump"] for entry in result.diagnostics[0])
    assert min(rises) > 1.0


def test_small_step_retrain_of_same_model_not_flagged(trained_mlp):
    params = RetrainParams(layers="all", epochs=50, lr=1e-4)
    result = RetrainFromOptimum().measure(params, trained_mlp, POINTS)
    assert not any(entry["basin_jump"] for entry in result.diagnostics[0])


def truths_frame() -> pd.DataFrame:
    rows = []
    for trial, jumps in (("a-0000", [False, False]), ("a-0001", [True, False]),
                         ("b-0000", [True, True])):
        for position, jump in enumerate(jumps):
            rows.append({"model.width": 8 if trial.startswith("a") else 20, "trial_id": trial,
                         "condition_id": trial[0], "repetition": int(trial[-1]),
                         "ground_truth": "retrain", "position": position, "truth": 0.1,
                         "diagnostics": {"basin_jump": jump}})
    rows.append({"model.width": 8, "trial_id": "a-0000", "condition_id": "a", "repetition": 0,
                 "ground_truth": "exact_optimum", "position": 0, "truth": 0.1,
                 "diagnostics": {"grad_norm": 1e-12}})
    return pd.DataFrame(rows)


def test_basin_counts_per_condition():
    flags = basin_flags(truths_frame())
    assert flagged_pairs(flags) == {("a-0001", "retrain"), ("b-0000", "retrain")}
    table = basin_table(flags, ["model.width"])
    assert table is not None
    rows = table.frame.set_index("model.width")
    assert rows.loc["8", "trials"] == "2"
    assert rows.loc["8", "flagged_trials"] == "1"
    assert rows.loc["20", "flagged_retrains"] == "2"
    assert table.note.startswith("2 of 3 ")


def test_flagged_scores_left_out():
    from ifval.report.build import _without_basin_jumps

    scores = pd.DataFrame({"trial_id": ["a-0000", "a-0001", "a-0001", "b-0000"],
                           "ground_truth": ["retrain", "retrain", "exact_optimum", "retrain"],
                           "value": [0.5, 0.2, 0.9, 0.1]})
    remaining = _without_basin_jumps(scores, basin_flags(truths_frame()))
    assert remaining["value"].tolist() == [0.5, 0.9]


def test_basin_counts_with_ground_truth_factor():
    factors = ["model.width", "ground_truth", "estimator"]
    table = basin_table(basin_flags(truths_frame()), factors)
    assert table is not None
    assert list(table.frame.columns[:2]) == ["model.width", "ground_truth"]
    assert len(table.frame) == 2
