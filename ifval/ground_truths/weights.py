"""Per-sample weights of leave-one-out retrains, shared by the ground truths."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ifval.kinds import Normalisation

if TYPE_CHECKING:
    import torch


def removal_weights(points: np.ndarray, n: int, normalisation: Normalisation,
                    dtype: torch.dtype) -> torch.Tensor:
    """Build the data-term weights a_ji of each retrain, shape ``(B, k + 1, n)``.

    ``points`` is ``(B, k)`` (one point per retrain) or ``(B, k, m)`` (a group
    of m distinct points per retrain). Row j < k of model b removes
    ``points[b, j]`` and weights the other points by 1/n (``original_n``) or
    1/(n − m) (``remaining``). Row k removes nothing and weights every point
    by 1/n, the full-data objective.
    """
    import torch

    groups = points if points.ndim == 3 else points[..., None]
    size, k, members = groups.shape
    weights = torch.ones(size, k + 1, n, dtype=dtype)
    weights[:, :k].scatter_(2, torch.as_tensor(groups, dtype=torch.long), 0.0)
    weights[:, :k] /= float(n if normalisation == "original_n" else n - members)
    weights[:, k] /= float(n)
    return weights
