"""The quick protocol through the real command line, then report and export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCORERS = 6
"""Scorers listed in protocols/iris_quick.yaml."""


def ifval(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from ifval.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quick") / "run"
    result = ifval("run", "protocols/iris_quick.yaml", "-o", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir, result


@pytest.mark.slow
def test_quick_protocol_prints_table(quick_run):
    _, result = quick_run
    assert "120 trials computed, 0 already stored" in result.stderr
    assert "iris_quick: mean score and 95% interval per cell" in result.stdout
    assert "One-way ANOVA across each factor" in result.stdout


@pytest.mark.slow
def test_quick_protocol_writes_report(quick_run):
    run_dir, _ = quick_run
    for name in ("cells.csv", "anova.csv", "summary.json", "summary.md", "scores.png",
                 "scores.svg"):
        assert (run_dir / "report" / name).is_file(), name
    cells = pd.read_csv(run_dir / "report" / "cells.csv")
    assert len(cells) == 3 * 5 * SCORERS
    assert (cells["n"] + cells["n_nan"]).eq(8).all()


@pytest.mark.slow
def test_report_rebuilds_from_store(quick_run):
    run_dir, first = quick_run
    (run_dir / "report" / "cells.csv").unlink()
    result = ifval("report", str(run_dir))

    assert result.returncode == 0, result.stderr
    assert (run_dir / "report" / "cells.csv").is_file()
    table = first.stdout[first.stdout.index("iris_quick"):]
    assert table in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_tables(quick_run, fmt):
    run_dir, _ = quick_run
    out = run_dir.parent / f"export-{fmt}"
    result = ifval("export", str(run_dir), "--format", fmt, "-o", str(out))

    assert result.returncode == 0, result.stderr
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    scores = read(out / f"scores.{fmt}")
    points = read(out / f"points.{fmt}")
    trials = read(out / f"trials.{fmt}")
    assert len(scores) == 120 * SCORERS
    assert len(points) == 120 * 20
    assert len(trials) == 120
    assert {"model.width", "variant", "estimator", "ground_truth", "scorer", "value"} <= set(scores)
    assert {"estimate", "truth", "dataset_row", "training_loss"} <= set(points)


def test_report_of_missing_run_fails_cleanly(tmp_path):
    result = ifval("report", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no ifval run store in")
    assert "Traceback" not in result.stderr


def test_too_many_points_rejected_before_training(tmp_path):
    protocol = (ROOT / "protocols" / "iris_quick.yaml").read_text()
    protocol = protocol.replace("k: 20", "k: 500")
    path = tmp_path / "too_many.yaml"
    path.write_text(protocol)
    result = ifval("run", str(path), "-o", str(tmp_path / "run"))

    assert result.returncode == 1
    assert ("Error: points.k: 500 points requested but dataset 'iris' has 149 training points "
            "(condition model.width=8, variant=plain); lower k or use strategy 'all'"
            in result.stderr)
    assert not (tmp_path / "run" / "ifval.sqlite").exists()


TINY = """
name: tiny
dataset: {name: iris, test_point: 83}
model: {name: mlp, depth: 1, width: 4}
training: {lr: 0.01, epochs: 50}
grid: {model.width: [4]}
points: {strategy: top_loss, k: 5}
estimators: [{name: exact, label: undamped, damping: 0.0}]
ground_truths: [{name: retrain_from_optimum, epochs: 5}]
scorers: [spearman]
repetitions: 1
"""


def test_estimator_error_names_condition_and_label(tmp_path):
    """Without decay or damping the last-layer Hessian is singular, and the error names where."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    result = ifval("run", str(path), "-o", str(tmp_path / "run"))

    assert result.returncode == 1
    assert result.stderr.startswith(
        "Error: condition model.width=4, estimator 'undamped': estimator 'exact' (scope "
        "last_layer, seed ")
    assert "set the estimator's `damping` to at least" in result.stderr


def test_changed_protocol_accepted_while_store_empty(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    run_dir = tmp_path / "run"
    first = ifval("run", str(path), "-o", str(run_dir))
    assert first.returncode == 1

    path.write_text(TINY.replace("damping: 0.0", "damping: 0.01"))
    second = ifval("run", str(path), "-o", str(run_dir), "--no-report")
    assert second.returncode == 0, second.stderr
    assert "1 trials computed, 0 already stored" in second.stderr

    path.write_text(TINY.replace("damping: 0.0", "damping: 0.1"))
    third = ifval("run", str(path), "-o", str(run_dir), "--no-report")
    assert third.returncode == 1
    assert "holds results of a different protocol (changed: estimators;" in third.stderr


@pytest.mark.slow
def test_ground_truth_comparison_protocol(tmp_path):
    """Four ground truths of the same estimates, with an ANOVA over the ground-truth factor."""
    # Training from scratch dominates this protocol's time; fewer seeds and
    # epochs keep the test short and exercise the same path.
    protocol = (ROOT / "protocols" / "iris_ground_truths.yaml").read_text()
    scratch = "  - name: retrain_from_scratch\n    seeds: 3\n"
    assert scratch in protocol
    protocol = protocol.replace(scratch, "  - name: retrain_from_scratch\n    seeds: 2\n"
                                         "    epochs: 300\n")
    path = tmp_path / "ground_truths.yaml"
    path.write_text(protocol)
    run_dir = tmp_path / "run"
    result = ifval("run", str(path), "-o", str(run_dir))

    assert result.returncode == 0, result.stderr
    anova = pd.read_csv(run_dir / "report" / "anova.csv")
    across_truths = anova[anova["factor"] == "ground_truth"]
    assert len(across_truths) == 3 * 4
    assert across_truths["levels"].eq(4).all()
    points = pd.read_csv(run_dir / "report" / "cells.csv")
    assert set(points["ground_truth"]) == {"retrain_paper", "retrain_drift_corrected",
                                           "retrain_from_scratch", "exact_optimum"}
