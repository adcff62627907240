"""A tiny Iris protocol with ``pydvl_cg`` beside ``exact``, run end to end by ifval's runner."""

from __future__ import annotations

import numpy as np
import pytest

from ifval.protocol import parse_protocol
from ifval.runner import run_protocol
from ifval.store import RunStore

PROTOCOL = """
name: pydvl_cg_quick
dataset: {name: iris, test_point: max_loo_loss}
model: {name: mlp, depth: 1, width: 4, activation: tanh}
training: {lr: 0.01, epochs: 300, weight_decay: 0.01}
points: {strategy: top_loss, k: 6}
estimators:
  - {name: exact, damping: 0.01}
  - {name: pydvl_cg, damping: 0.01}
ground_truths:
  - {name: retrain_from_optimum, epochs: 50, lr: 0.001}
scorers: [spearman, pearson]
repetitions: 2
"""


@pytest.fixture(scope="module")
def cg_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pydvl") / "run"
    summary = run_protocol(parse_protocol(PROTOCOL), PROTOCOL, run_dir)
    return run_dir, summary


def test_run_stores_every_trial(cg_run):
    _, summary = cg_run

    assert summary.total == 2
    assert summary.computed == 2


def test_cg_estimates_match_exact_in_store(cg_run):
    run_dir, _ = cg_run
    with RunStore(run_dir) as store:
        points = store.points_frame()

    estimates = points.pivot_table(index=["trial_id", "position"], columns="estimator",
                                   values="estimate")
    assert len(estimates) == 2 * 6
    exact = estimates["exact"].to_numpy()
    cg = estimates["pydvl_cg"].to_numpy()
    # Last-layer CG with w + λ = 0.02 meets the residual bound of test_estimators.py,
    # far inside this tolerance.
    assert np.abs(cg - exact).max() <= 1e-6 * np.abs(exact).max()


def test_cg_scores_are_stored(cg_run):
    run_dir, _ = cg_run
    with RunStore(run_dir) as store:
        scores = store.scores_frame()

    cg = scores[scores["estimator"] == "pydvl_cg"]
    assert sorted(set(cg["scorer"])) == ["pearson", "spearman"]
    assert len(cg) == 2 * 2
    assert np.isfinite(cg["value"]).all(), cg[["scorer", "value", "reason"]]
