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

    Row j < k of model b removes ``points[b, j]`` and weights the other points
    by 1/n (``original_n``) or 1/(n − 1) (``remaining``). Row k removes
    nothing and weights every point by 1/n, the full-data objective.
    """
    import torch

    size, k = points.shape
    weights = torch.ones(size, k + 1, n, dtype=dtype)
    weights[:, :k].scatter_(2, torch.as_tensor(points, dtype=torch.long)[..., None], 0.0)
    weights[:, :k] /= float(n if normalisation == "original_n" else n - 1)
    weights[:, k] /= float(n)
    return weights
