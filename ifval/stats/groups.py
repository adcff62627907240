"""Grouping of long result tables: key columns and level combinations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd

RESULT_KEYS = ["estimator", "ground_truth", "scorer"]
"""Columns that identify which comparison a stored score belongs to."""


def present_keys(frame: pd.DataFrame, keys: list[str] | None,
                 exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Return the key columns that ``frame`` has and that are not in ``exclude``.

    ``None`` stands for :data:`RESULT_KEYS`.
    """
    keys = RESULT_KEYS if keys is None else keys
    return [key for key in keys if key in frame.columns and key not in exclude]


def iter_groups(frame: pd.DataFrame,
                columns: list[str]) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    """Yield each level combination of ``columns`` as a dict, with its rows.

    Combinations come in order of first appearance. Without columns the
    whole frame is yielded once.
    """
    if not columns:
        yield {}, frame
        return
    for levels, group in frame.groupby(columns, sort=False, dropna=False):
        levels = levels if isinstance(levels, tuple) else (levels,)
        yield dict(zip(columns, levels, strict=True)), group
