"""Top-k scorers: ``topk_overlap`` and ``sign_agreement``.

Both look only at the k points with the largest magnitude, which is what a
user of influence estimates usually acts on. k is either a whole number of
points or, below 1, a fraction of the checked points (``k: 0.25`` is the top
quarter, rounded to the nearest whole number and at least 1).

Ties at the boundary of a top-k set make the set ambiguous. Breaking them by
position would make the score depend on the order of the points, so each
tied point counts as a fractional member instead. When b points share the
k-th largest magnitude and a points are strictly larger, each of the b gets
membership (k − a) / b. The scores below are then the expected scores when
the ties are broken uniformly at random, independently for the estimate and
the truth. Without ties they are the plain set definitions.

Besides the shared policy of :mod:`ifval.scorers.policy`, a score is NaN
when k exceeds the number of points, or when the magnitudes the scorer ranks
are all equal (the top k then carries no information).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

import ifval
from ifval.kinds import Score, Scorer
from ifval.scorers.policy import as_vectors, check_pair


class TopKParams(BaseModel):
    """Settings of the top-k scorers."""

    model_config = ConfigDict(extra="forbid")

    k: int | float = Field(
        10,
        gt=0,
        description="Size of the top set: a whole number of points, or a fraction of the "
        "checked points below 1 (rounded to the nearest whole number, at least 1).",
    )

    @field_validator("k", mode="before")
    @classmethod
    def _reject_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            raise PydanticCustomError("k_type", "k must be a number, not true or false")
        return value

    @field_validator("k")
    @classmethod
    def _whole_count(cls, value: int | float) -> int | float:
        if value < 1:
            return float(value)
        if value != int(value):
            raise PydanticCustomError(
                "k_whole", "a count of points must be a whole number; give a whole number, or "
                "a fraction below 1 for a share of the points")
        return int(value)


def resolve_k(k: int | float, n_points: int) -> int:
    """Return the number of top points for a count, or for a fraction below 1, of ``n_points``."""
    if k < 1:
        return max(1, math.floor(k * n_points + 0.5))
    return int(k)


def top_k_membership(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Return each point's membership in the top k of ``magnitude``, in [0, 1], summing to k.

    Points strictly above the k-th largest value get 1, points below it get
    0, and the b points equal to it share the remaining places equally.
    """
    threshold = np.sort(magnitude)[::-1][k - 1]
    above = magnitude > threshold
    tied = magnitude == threshold
    membership = above.astype(float)
    membership[tied] = (k - above.sum()) / tied.sum()
    return membership


def _top_k_problem(k_setting: int | float, n_points: int,
                   magnitudes: dict[str, np.ndarray]) -> tuple[int, str | None]:
    """Return k for this pair and why the pair cannot be scored, or None when it can."""
    k = resolve_k(k_setting, n_points)
    if k > n_points:
        return k, f"k = {k} exceeds the number of points ({n_points})"
    for label, magnitude in magnitudes.items():
        if np.ptp(magnitude) == 0:
            return k, f"{label} magnitudes are all equal, so the top k is undefined"
    return k, None


def topk_overlap_score(estimate: np.ndarray, truth: np.ndarray, k: int | float = 10) -> Score:
    """Compute |top_k(|e|) ∩ top_k(|t|)| / k, with tied points counted fractionally."""
    estimate, truth = as_vectors(estimate, truth)
    reason = check_pair(estimate, truth)
    if reason:
        return Score(float("nan"), reason)

    magnitudes = {"estimate": np.abs(estimate), "truth": np.abs(truth)}
    count, reason = _top_k_problem(k, estimate.size, magnitudes)
    if reason:
        return Score(float("nan"), reason)
    shared = top_k_membership(magnitudes["estimate"], count) @ top_k_membership(
        magnitudes["truth"], count)
    return Score(min(1.0, max(0.0, float(shared / count))))


def sign_agreement_score(estimate: np.ndarray, truth: np.ndarray, k: int | float = 10) -> Score:
    """Compute the share of the top k points by |t| where e and t have the same sign.

    Signs compare with ``numpy.sign``, so a zero matches only a zero. Tied
    points at the boundary count fractionally, as in the module docstring.
    """
    estimate, truth = as_vectors(estimate, truth)
    reason = check_pair(estimate, truth)
    if reason:
        return Score(float("nan"), reason)

    magnitude = np.abs(truth)
    count, reason = _top_k_problem(k, estimate.size, {"truth": magnitude})
    if reason:
        return Score(float("nan"), reason)
    agree = np.sign(estimate) == np.sign(truth)
    share = top_k_membership(magnitude, count) @ agree / count
    return Score(min(1.0, max(0.0, float(share))))


class TopKOverlap(Scorer):
    name = "topk_overlap"
    description = "Share of the top k points by |estimate| that are also top k by |truth|."
    Params = TopKParams
    higher_is_better = True
    value_range = (0.0, 1.0)
    scale_invariant = True

    def score(self, params: BaseModel, estimate: np.ndarray, truth: np.ndarray) -> Score:
        return topk_overlap_score(estimate, truth, params.k)  # type: ignore[attr-defined]


class SignAgreement(Scorer):
    name = "sign_agreement"
    description = "Share of the top k points by |truth| whose estimate has the true sign."
    Params = TopKParams
    higher_is_better = True
    value_range = (0.0, 1.0)
    scale_invariant = True

    def score(self, params: BaseModel, estimate: np.ndarray, truth: np.ndarray) -> Score:
        return sign_agreement_score(estimate, truth, params.k)  # type: ignore[attr-defined]


@ifval.hookimpl
def ifval_scorers() -> list[Scorer]:
    return [TopKOverlap(), SignAgreement()]
