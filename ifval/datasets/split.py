"""Helpers shared by tabular datasets: test point choice and standardisation."""

from __future__ import annotations

import numpy as np

from ifval.errors import IfvalError
from ifval.kinds import DataSplit


def standardise_split(
    x: np.ndarray, y: np.ndarray, test_ids: np.ndarray, n_classes: int, info: dict
) -> DataSplit:
    """Hold out ``test_ids`` and standardise every feature with training-set statistics."""
    test_mask = np.zeros(len(x), dtype=bool)
    test_mask[test_ids] = True
    x_train, y_train = x[~test_mask], y[~test_mask]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    constant = np.flatnonzero(std == 0)
    if constant.size:
        msg = f"features {constant.tolist()} are constant on the training set; drop them"
        raise IfvalError(msg)
    return DataSplit(
        x_train=(x_train - mean) / std,
        y_train=y_train.astype(np.int64),
        x_test=(x[test_mask] - mean) / std,
        y_test=y[test_mask].astype(np.int64),
        train_ids=np.flatnonzero(~test_mask),
        test_ids=np.flatnonzero(test_mask),
        n_classes=n_classes,
        info=info,
    )


def max_loo_loss_index(x: np.ndarray, y: np.ndarray, inverse_regularisation: float) -> int:
    """Index of the point with the largest leave-one-out cross-entropy.

    Each point is held out in turn, the other points are standardised with
    their own statistics, and an L2-regularised multinomial logistic
    regression (scikit-learn, ``C=inverse_regularisation``) is fitted to them.
    The model is a fixed, cheap stand-in for the network; on Iris with
    ``C=100`` it picks row 83, the test point of Epifano et al.
    """
    from sklearn.linear_model import LogisticRegression

    losses = np.empty(len(x))
    for index in range(len(x)):
        keep = np.ones(len(x), dtype=bool)
        keep[index] = False
        mean, std = x[keep].mean(axis=0), x[keep].std(axis=0)
        classifier = LogisticRegression(C=inverse_regularisation, max_iter=5000)
        classifier.fit((x[keep] - mean) / std, y[keep])
        probabilities = classifier.predict_proba(((x[index] - mean) / std)[None])[0]
        column = int(np.flatnonzero(classifier.classes_ == y[index])[0])
        losses[index] = -np.log(max(probabilities[column], 1e-300))
    return int(np.argmax(losses))
