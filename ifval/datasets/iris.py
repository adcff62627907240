"""Dataset ``iris``: scikit-learn's copy of Fisher's Iris data (150 × 4, 3 classes)."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.datasets.split import max_loo_loss_index, standardise_split
from ifval.errors import IfvalError
from ifval.kinds import Dataset, DataSplit

N_ROWS = 150
RowIndex = Annotated[int, Field(ge=0, lt=N_ROWS, strict=True)]


class IrisParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_point: RowIndex | Literal["max_loo_loss"] = Field(
        "max_loo_loss",
        description="Row held out as the test point, or `max_loo_loss` for the row with the "
        "largest leave-one-out loss under multinomial logistic regression (row 83).",
    )
    loo_c: float = Field(
        100.0, gt=0, description="Inverse L2 strength of the logistic regression behind "
        "`max_loo_loss`."
    )


@lru_cache(maxsize=4)
def _max_loo_index(inverse_regularisation: float) -> int:
    x, y = _load_arrays()
    return max_loo_loss_index(x, y, inverse_regularisation)


def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


class Iris(Dataset):
    name = "iris"
    description = "Fisher's Iris (scikit-learn copy); one held-out test point, standardised."
    Params = IrisParams

    def load(self, params: IrisParams) -> DataSplit:  # type: ignore[override]
        x, y = _load_arrays()
        if params.test_point == "max_loo_loss":
            index = _max_loo_index(params.loo_c)
        else:
            index = params.test_point
            if not 0 <= index < N_ROWS:
                msg = f"dataset.test_point: row {index} is out of range; Iris has rows 0 to 149"
                raise IfvalError(msg)
        info = {"test_point": index, "test_point_rule": str(params.test_point)}
        return standardise_split(x, y, np.array([index]), n_classes=3, info=info)


@ifval.hookimpl
def ifval_datasets() -> list[Dataset]:
    return [Iris()]
