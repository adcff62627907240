"""Removing groups of points: selection, the ground truths and estimators, and the run store."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import linear_batch, solve_logistic, test_loss_numpy

from ifval.errors import IfvalError
from ifval.estimators.exact import Exact, ExactParams
from ifval.ground_truths.exact_optimum import ExactOptimum, ExactOptimumParams
from ifval.ground_truths.retrain import RetrainFromOptimum, RetrainParams
from ifval.kinds import Estimator
from ifval.protocol import Groups, Points, parse_protocol
from ifval.runner import _check_groups, run_protocol
from ifval.trial import select_groups

DECAY = 0.02
POINTS = np.array([[3, 40, 77, 110, 141]])


@pytest.fixture(scope="module")
def convex(iris_split):
    n = len(iris_split.y_train)
    full = solve_logistic(iris_split.x_train, iris_split.y_train, np.full(n, 1 / n), DECAY, 3)
    return full, linear_batch(iris_split, full, DECAY)


@pytest.mark.parametrize("normalisation", ["original_n", "remaining"])
def test_group_of_one_equals_single_point(convex, normalisation):
    _, batch = convex
    groups = POINTS[..., None]
    exact = ExactParams()
    np.testing.assert_array_equal(
        Exact().estimate_groups(exact, batch, groups, normalisation).values,
        Exact().estimate(exact, batch, POINTS, normalisation).values)
    optimum = ExactOptimumParams(normalisation=normalisation)
    np.testing.assert_array_equal(
        ExactOptimum().measure_groups(optimum, batch, groups).values,
        ExactOptimum().measure(optimum, batch, POINTS).values)
    retrain = RetrainParams(epochs=100, lr=0.01, normalisation=normalisation)
    np.testing.assert_array_equal(
        RetrainFromOptimum().measure_groups(retrain, batch, groups).values,
        RetrainFromOptimum().measure(retrain, batch, POINTS).values)


@pytest.mark.parametrize("normalisation", ["original_n", "remaining"])
def test_exact_optimum_group_removal_matches_scipy(iris_split, convex, normalisation):
    full, batch = convex
    x, y = iris_split.x_train, iris_split.y_train
    n = len(y)
    groups = np.array([[[1, 2, 50, 90, 130, 140], [10, 11, 12, 13, 14, 15]]])
    measured = ExactOptimum().measure_groups(ExactOptimumParams(normalisation=normalisation),
                                             batch, groups).values
    base = test_loss_numpy(full, iris_split.x_test, iris_split.y_test, 3)
    for j, rows in enumerate(groups[0]):
        weights = np.full(n, 1 / (n if normalisation == "original_n" else n - len(rows)))
        weights[rows] = 0.0
        theta = solve_logistic(x, y, weights, DECAY, 3, start=full)
        expected = test_loss_numpy(theta, iris_split.x_test, iris_split.y_test, 3) - base
        # L-BFGS stops about 5e-9 short of Newton's optimum in test loss.
        assert measured[0, j] == pytest.approx(expected, rel=1e-6, abs=2e-8)


def test_first_order_group_estimate_sums_members(convex):
    _, batch = convex
    groups = np.array([[[3, 40, 77], [110, 141, 5]]])
    singles = Exact().estimate(ExactParams(), batch, groups.reshape(1, -1), "original_n").values
    summed = Exact().estimate_groups(ExactParams(), batch, groups, "original_n").values
    np.testing.assert_allclose(summed, singles.reshape(1, 2, 3).sum(axis=2), rtol=1e-12)


def test_random_groups_are_distinct_and_seeded():
    y = np.repeat([0, 1, 2], 50)
    settings = Points(k=12, groups=Groups(size=0.1))
    groups = select_groups(settings, y, (7, 8))
    assert groups.shape == (2, 12, 15)
    for trial in groups:
        for members in trial:
            assert len(set(members.tolist())) == 15
    np.testing.assert_array_equal(groups, select_groups(settings, y, (7, 8)))
    assert not np.array_equal(groups[0], groups[1])


def test_same_class_groups_cycle_classes():
    y = np.repeat([0, 1, 2], [30, 20, 25])
    settings = Points(k=6, groups=Groups(size=4, kind="same_class"))
    groups = select_groups(settings, y, (0,))[0]
    classes = [set(y[members].tolist()) for members in groups]
    assert classes == [{0}, {1}, {2}, {0}, {1}, {2}]


def test_same_class_group_too_large_rejected():
    y = np.repeat([0, 1, 2], [30, 5, 25])
    settings = Points(k=3, groups=Groups(size=6, kind="same_class"))
    with pytest.raises(IfvalError, match="smallest class has 5"):
        select_groups(settings, y, (0,))


def test_group_size_validation():
    with pytest.raises(ValueError, match="at least 2 points"):
        Groups(size=1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Groups(size=1.5)
    assert Groups(size=0.05).members(149) == 7


class PointsOnly(Estimator):
    name = "points_only"


def test_plugin_without_groups_rejected_before_training():
    resolved = SimpleNamespace(points=Points(k=3, groups=Groups(size=3)),
                               estimators=[("points_only", PointsOnly(), None)],
                               ground_truths=[])
    with pytest.raises(IfvalError, match="estimator 'points_only' does not support groups"):
        _check_groups(resolved, 149, "condition default")


GROUP_PROTOCOL = """
name: groups
dataset: {name: iris, test_point: max_loo_loss}
model: {name: mlp, depth: 1, width: 4}
training: {lr: 0.01, epochs: 100, weight_decay: 0.01}
points: {k: 5, groups: {size: 6, kind: same_class}}
estimators: [exact]
ground_truths: [{name: retrain_from_optimum, epochs: 30}]
scorers: [pearson]
repetitions: 2
"""


def test_group_run_stores_members(tmp_path):
    protocol = parse_protocol(GROUP_PROTOCOL)
    run_protocol(protocol, GROUP_PROTOCOL, tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "ifval.sqlite") as connection:
        members = connection.execute("SELECT COUNT(*) FROM group_members").fetchone()[0]
        rows = connection.execute("SELECT DISTINCT train_row FROM points").fetchall()
        labels = connection.execute("SELECT label FROM points ORDER BY trial_id, position")
        labels = [label for (label,) in labels.fetchall()]
    assert members == 2 * 5 * 6
    assert rows == [(-1,)]
    assert labels == [0, 1, 2, 0, 1] * 2


def test_most_influential_groups_follow_estimates(iris_split, convex):
    from ifval.trial import influential_groups

    _, batch = convex
    resolved = SimpleNamespace(
        points=Points(k=3, groups=Groups(size=4, kind="most_influential")),
        estimators=[("exact", Exact(), ExactParams())],
        ground_truths=[("exact_optimum", ExactOptimum(), ExactOptimumParams())])
    groups = influential_groups(resolved, batch)
    every = np.arange(len(iris_split.y_train))[None]
    values = np.abs(Exact().estimate(ExactParams(), batch, every, "original_n").values[0])
    assert groups.shape == (1, 3, 4)
    ranked = values[groups[0]]
    # Each group's smallest estimate is at least the next group's largest.
    assert ranked[0].min() >= ranked[1].max()
    assert ranked[1].min() >= ranked[2].max()
    assert ranked[0].max() == values.max()
