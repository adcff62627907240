"""The example plugin package in plugins/ifval-example-scorer and its scorer ``scaled_r2``.

The module is imported from the checkout, not from an installed copy, and
registered into a fresh plugin manager. Expected values come from
``numpy.linalg.lstsq`` and from a case worked by hand.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ifval.kinds import NoParams
from ifval.plugins import DISABLE_ENV, Catalog, get_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "plugins" / "ifval-example-scorer"
PACKAGE = "ifval_example_scorer"
ENTRY_POINT = "scaled_r2"
"""The package's entry-point name, which also disables an installed copy."""


@pytest.fixture
def example_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Import the plugin module from the checkout, restoring sys.path and sys.modules after."""
    monkeypatch.syspath_prepend(str(PACKAGE_DIR / "src"))
    saved = {name: module for name, module in sys.modules.items()
             if name == PACKAGE or name.startswith(f"{PACKAGE}.")}
    for name in saved:
        del sys.modules[name]

    yield importlib.import_module(f"{PACKAGE}.scaled_r2")

    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def lstsq_scaled_r2(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Compute 1 − ‖t − αe‖²/‖t‖² with α from numpy's least-squares solver."""
    solution, *_ = np.linalg.lstsq(estimate[:, None], truth, rcond=None)
    residual = truth - solution[0] * estimate
    return float(1.0 - residual @ residual / (truth @ truth))


def cases() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    estimate = rng.normal(size=40)
    yield "noisy", estimate, 0.3 * estimate + rng.normal(scale=0.5, size=40)
    yield "opposite sign", estimate, -2.0 * estimate + rng.normal(scale=0.1, size=40)
    yield "unrelated", rng.normal(size=25), rng.normal(size=25)
    yield "three points", np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.0, 3.0])
    yield "heavy tail", rng.standard_cauchy(30), rng.standard_cauchy(30)


# ------------------------------------------------------------------- registration


def test_catalog_lists_scaled_r2(example_module: ModuleType) -> None:
    manager = get_plugin_manager(disabled=[ENTRY_POINT])
    manager.register(example_module, name="example_scorer_under_test")

    catalog = Catalog(manager)

    assert "scaled_r2" in catalog.registries["scorer"]
    entries = {entry.plugin.name: entry for _, entry in catalog.entries()}
    assert entries["scaled_r2"].module == f"{PACKAGE}.scaled_r2"


def test_scorer_metadata(example_module: ModuleType) -> None:
    scorer = example_module.ScaledR2()

    assert scorer.higher_is_better is True
    assert scorer.value_range == (0.0, 1.0)
    assert scorer.scale_invariant is True
    assert scorer.Params is NoParams


# ------------------------------------------------------------------------- values


@pytest.mark.parametrize("case", list(cases()), ids=lambda case: case[0])
def test_value_matches_lstsq(example_module: ModuleType, case: tuple) -> None:
    _, estimate, truth = case
    scorer = example_module.ScaledR2()

    score = scorer.score(NoParams(), estimate, truth)

    assert score.reason is None
    assert score.value == pytest.approx(lstsq_scaled_r2(estimate, truth), abs=1e-12)


def test_value_worked_by_hand(example_module: ModuleType) -> None:
    # eᵀt = 29, eᵀe = 14, tᵀt = 62, so α = 29/14 and
    # 1 − (62 − 29²/14)/62 = 29²/(14·62) = 841/868.
    estimate, truth = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 7.0])

    score = example_module.scaled_r2_score(estimate, truth)

    assert score.value == pytest.approx(0.9688940092165899, abs=1e-15)


def test_sign_of_estimate_ignored(example_module: ModuleType) -> None:
    truth = np.array([0.2, -1.0, 3.0, 0.7])

    score = example_module.scaled_r2_score(-truth, truth)

    assert score.value == pytest.approx(1.0, abs=1e-15)


def test_orthogonal_estimate_scores_zero(example_module: ModuleType) -> None:
    score = example_module.scaled_r2_score(np.array([1.0, 0.0, 0.0]), np.array([0.0, 2.0, 5.0]))

    assert score.value == 0.0
    assert score.reason is None


def test_constant_estimate_scored(example_module: ModuleType) -> None:
    # eᵀt = 6, eᵀe = 3, tᵀt = 14, so the score is 6²/(3·14) = 6/7.
    score = example_module.scaled_r2_score(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0]))

    assert score.reason is None
    assert score.value == pytest.approx(0.8571428571428571, abs=1e-15)


@pytest.mark.parametrize("factor", [1e-200, 1e-3, 7.0, 1e200])
def test_value_unchanged_by_scale(example_module: ModuleType, factor: float) -> None:
    estimate, truth = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 7.0])

    score = example_module.scaled_r2_score(factor * estimate, truth)

    assert score.value == pytest.approx(841 / 868, rel=1e-12)


# ---------------------------------------------------------------------- NaN cases


@pytest.mark.parametrize(
    ("estimate", "truth", "reason"),
    [
        ([0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0], "estimate is all zeros"),
        ([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], "truth is all zeros"),
        ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], "estimate has 1 non-finite values"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, np.inf, 3.0, -np.inf], "truth has 2 non-finite values"),
        ([1.0, 2.0], [2.0, 1.0], "fewer than 3 points (2)"),
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0],
         "estimate and truth must be vectors of one length, got (3,) and (4,)"),
        ([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]],
         "estimate and truth must be vectors of one length, got (1, 3) and (1, 3)"),
    ],
)
def test_unscorable_pair_gives_nan_and_reason(
    example_module: ModuleType, estimate: list, truth: list, reason: str
) -> None:
    scorer = example_module.ScaledR2()

    score = scorer.score(NoParams(), np.array(estimate), np.array(truth))

    assert np.isnan(score.value)
    assert score.reason == reason


# ---------------------------------------------------------------------- installed


@pytest.mark.skipif(not os.environ.get("CI"),
                    reason="needs the package installed, which .ci/run does; runs when CI is set")
def test_installed_plugin_listed() -> None:
    environment = {key: value for key, value in os.environ.items() if key != DISABLE_ENV}

    completed = subprocess.run(
        [sys.executable, "-c", "from ifval.cli import main; main()", "plugins"],
        capture_output=True, text=True, env=environment, check=False,
    )

    assert completed.returncode == 0, completed.stderr
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in completed.stdout.splitlines() if line.startswith("│")]
    assert ["scorer", "scaled_r2", "ifval-example-scorer"] in [row[:3] for row in rows], (
        "`ifval plugins` does not list scaled_r2 from ifval-example-scorer; install it with "
        "`python -m pip install ./plugins/ifval-example-scorer`, as .ci/run does:\n"
        + completed.stdout
    )
