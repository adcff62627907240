"""The iris dataset plugin: test point choice and standardisation."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.datasets import load_iris

from ifval.datasets.iris import Iris, IrisParams
from ifval.errors import IfvalError


def test_max_loo_loss_picks_row_83():
    """Row 83 is the test point Epifano et al. report for Iris."""
    split = Iris().load(IrisParams(test_point="max_loo_loss"))
    assert split.test_ids.tolist() == [83]


def test_standardised_with_training_statistics():
    split = Iris().load(IrisParams(test_point=10))
    raw = load_iris().data
    train = np.delete(raw, 10, axis=0)
    expected_test = (raw[10] - train.mean(axis=0)) / train.std(axis=0)

    assert split.x_train.shape == (149, 4)
    np.testing.assert_allclose(split.x_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(split.x_train.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(split.x_test[0], expected_test, rtol=1e-12)
    assert 10 not in split.train_ids


def test_out_of_range_row_rejected():
    with pytest.raises(ValidationError, match=r"Input should be less than 150"):
        Iris().parse_params({"test_point": 150})


def test_out_of_range_row_rejected_at_load():
    """A row built without validation still fails with a message, not an IndexError."""
    params = IrisParams.model_construct(test_point=-1, loo_c=100.0)
    with pytest.raises(IfvalError, match=r"row -1 is out of range; Iris has rows 0 to 149"):
        Iris().load(params)
