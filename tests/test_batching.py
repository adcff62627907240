"""Models stacked in one batch get the results they get when run alone."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from ifval.models.mlp import MLP, MLPParams
from ifval.protocol import expand_conditions, validate_protocol
from ifval.settings import SWA
from ifval.training.fit import FitSettings, fit
from ifval.trial import BatchTask, repetition_seed, run_batch

# Both sides run the same float64 code, and only the batch size differs. The
# batch size changes how the batched matrix products split their sums, so
# results differ by rounding, and Adam's division by √v magnifies that
# rounding in coordinates whose gradient is near zero. Measured on x86-64 with
# torch 2.14.1, the largest differences are 2.7e-14 for estimates, 2.2e-14
# for truths and 6.8e-15 for scores from run_batch, and 2.2e-15 for the fits.
# Different models differ by 1e-3 or more, so a swapped model fails by eight
# orders of magnitude.
TOLERANCE = 1e-11

PROTOCOL = {
    "name": "batching",
    "dataset": {"name": "iris", "test_point": 83},
    "model": {"name": "mlp", "depth": 1, "width": 8, "activation": "selu"},
    # The plateau cuts the three repetitions' rates 0, 10 and 11 times
    # (measured), so each model follows its own schedule.
    "training": {"lr": 0.01, "epochs": 500,
                 "plateau": {"factor": 0.5, "patience": 5, "threshold": 0.01}},
    "points": {"strategy": "top_loss", "k": 8},
    "estimators": [{"name": "exact", "scope": "last_layer", "damping": 0.001}],
    "ground_truths": [{"name": "retrain_from_optimum", "layers": "last", "epochs": 300,
                       "lr": 0.001}],
    "scorers": ["spearman", "pearson"],
    "repetitions": 3,
}
REPETITIONS = (0, 1, 2)


@pytest.fixture(scope="module")
def trials():
    """Records of three repetitions run as one batch, and of each one run alone."""
    protocol = validate_protocol(PROTOCOL)
    condition = expand_conditions(protocol)[0]
    seeds = tuple(repetition_seed(protocol.seed, r) for r in REPETITIONS)
    together = run_batch(BatchTask(condition.id, condition.config, REPETITIONS, seeds))
    alone = [run_batch(BatchTask(condition.id, condition.config, (r,), (seed,)))[0]
             for r, seed in zip(REPETITIONS, seeds, strict=True)]
    return together, alone


def values(record, section):
    return np.array(record[section][0]["values"])


def test_batch_keeps_trial_order(trials):
    together, alone = trials
    assert [r["trial_id"] for r in together] == [r["trial_id"] for r in alone]
    assert [r["seed"] for r in together] == [r["seed"] for r in alone]


def test_batch_checks_same_points(trials):
    together, alone = trials
    for batched, single in zip(together, alone, strict=True):
        rows = [p["train_row"] for p in batched["points"]]
        assert rows == [p["train_row"] for p in single["points"]], batched["trial_id"]


def test_batch_keeps_plateau_per_model(trials):
    together, alone = trials
    reductions = [r["training"]["lr_reductions"] for r in together]
    assert reductions == [r["training"]["lr_reductions"] for r in alone]
    assert [r["training"]["final_lr"] for r in together] == \
        [r["training"]["final_lr"] for r in alone]
    assert len(set(reductions)) > 1, "the plateau should cut the models' rates differently"


@pytest.mark.parametrize("section", ["estimates", "truths"])
def test_batch_values_match_alone(trials, section):
    together, alone = trials
    for batched, single in zip(together, alone, strict=True):
        np.testing.assert_allclose(values(batched, section), values(single, section),
                                   rtol=0, atol=TOLERANCE, err_msg=batched["trial_id"])


def test_batch_scores_match_alone(trials):
    together, alone = trials
    for batched, single in zip(together, alone, strict=True):
        for score, expected in zip(batched["scores"], single["scores"], strict=True):
            assert score["scorer"] == expected["scorer"]
            assert score["value"] == pytest.approx(expected["value"], rel=0, abs=TOLERANCE)


@pytest.mark.parametrize("section", ["estimates", "truths"])
def test_models_differ_beyond_tolerance(trials, section):
    """Different models differ by far more than TOLERANCE, so a swap in the batch fails."""
    together, _ = trials
    for first, second in pairwise(together):
        gap = np.abs(values(first, section) - values(second, section)).max()
        assert gap > 1e6 * TOLERANCE, (first["trial_id"], second["trial_id"], gap)


# ------------------------------------------------------------------ fit level


def stacked_initial(seeds, params):
    initial = [MLP().init(params, 4, 3, torch.Generator().manual_seed(s)) for s in seeds]
    return {name: torch.stack([w[name] for w in initial]) for name in initial[0]}


def mean_loss(params, split, size):
    x = torch.tensor(split.x_train)
    y = torch.tensor(split.y_train)
    return MLP().objective(params, x, y, torch.full((size, len(y)), 1 / len(y),
                                                    dtype=torch.float64))


def plateau_settings(decay, swa=None):
    # Patience 20 and threshold 0.01 cut the rate of the weight-decay model
    # 16 times in 400 epochs (8 times before SWA starts at epoch 240) and
    # never cut the rate of the model without decay.
    return FitSettings(epochs=400, lr=0.05, weight_decay=decay, plateau_factor=0.5,
                       plateau_patience=20, plateau_threshold=0.01, swa=swa)


DECAYS = torch.tensor([0.0, 0.005], dtype=torch.float64)
FIT_SEEDS = (5, 6)


@pytest.mark.parametrize("swa", [None, SWA(start=0.6, lr=0.002, anneal_epochs=20, frequency=3)],
                         ids=["plateau", "plateau_then_swa"])
def test_mixed_decay_fit_matches_alone(iris_split, swa):
    """Weight decay, plateau cuts and the SWA start rate stay with their own model."""
    params = MLPParams(depth=1, width=6)
    together = fit(stacked_initial(FIT_SEEDS, params), mean_loss(params, iris_split, 2),
                   plateau_settings(DECAYS, swa))
    assert together.lr_reductions.tolist()[0] != together.lr_reductions.tolist()[1]

    for b, seed in enumerate(FIT_SEEDS):
        alone = fit(stacked_initial([seed], params), mean_loss(params, iris_split, 1),
                    plateau_settings(DECAYS[b : b + 1], swa))
        assert int(together.lr_reductions[b]) == int(alone.lr_reductions[0])
        assert float(together.final_lr[b]) == float(alone.final_lr[0])
        assert together.swa_snapshots == alone.swa_snapshots
        for name, weight in alone.weights.items():
            torch.testing.assert_close(together.weights[name][b], weight[0], rtol=0,
                                       atol=TOLERANCE)
