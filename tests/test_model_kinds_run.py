"""A small protocol with every model kind, the Hessian spectrum and two ground truths."""

from __future__ import annotations

import pandas as pd
import pytest

from ifval.plugins import default_catalog
from ifval.protocol import parse_protocol
from ifval.report.build import build_report
from ifval.runner import run_protocol
from ifval.store import RunStore

PROTOCOL = """
name: kinds
dataset: {name: iris, test_point: max_loo_loss}
model: {name: mlp, depth: 1, width: 6, activation: selu}
training: {lr: 0.01, epochs: 200}
grid:
  model.width: [4, 6]
variants:
  plain: {}
  plain_swa: {training.swa: {start: 0.5, lr: 0.005}}
  weight_decay: {training.weight_decay: 0.005}
  bnn: {model.name: vdp, model.activation: tanh}
points: {strategy: top_loss, k: 6}
hessian: {max_iter: 100, tol: 1.0e-4}
estimators: [{name: exact, damping: 5.0}]  # the 200-epoch VDP is far from a minimum
ground_truths:
  - {name: retrain_from_optimum, epochs: 50, lr: 0.001}
  - {name: retrain_from_scratch, seeds: 2, epochs: 100}
scorers: [spearman, pearson]
statistics: {measures: [training.top_eigenvalue]}
repetitions: 2
"""


@pytest.fixture(scope="module")
def kinds_run(tmp_path_factory):
    if "vdp" not in default_catalog().registries["model"].names():
        pytest.fail("the built-in model 'vdp' is not registered")
    protocol = parse_protocol(PROTOCOL)
    run_dir = tmp_path_factory.mktemp("kinds") / "run"
    run_protocol(protocol, PROTOCOL, run_dir)
    return run_dir


def test_every_kind_records_spectrum_and_swa(kinds_run):
    with RunStore(kinds_run) as store:
        trials = store.trials_frame()
    assert len(trials) == 2 * 4 * 2
    assert trials["training.top_eigenvalue"].notna().all()
    assert (trials["training.eigen_iterations"] >= 1).all()
    snapshots = trials.groupby("variant")["training.swa_snapshots"].max()
    assert snapshots["plain_swa"] == 100
    assert snapshots["plain"] == 0
    assert snapshots["bnn"] == 0


def test_report_covers_kinds_truths_and_measures(kinds_run):
    report = build_report(kinds_run)
    cells = report.cells
    assert set(cells["variant"]) == {"plain", "plain_swa", "weight_decay", "bnn"}
    assert set(cells["ground_truth"]) == {"retrain_from_optimum", "retrain_from_scratch"}
    assert report.measures is not None
    assert set(report.measures.cells["measure"]) == {"training.top_eigenvalue"}
    names = {path.name for path in report.files}
    assert {"scores.png", "measures.png", "retraining.png"} <= names
    anova = report.anova
    per_kind = anova[(anova["factor"] == "model.width") & (anova["scorer"] == "spearman")]
    assert len(per_kind) == 2 * 4
    across_kinds = anova[(anova["factor"] == "variant") & (anova["scorer"] == "spearman")]
    assert len(across_kinds) == 2 * 2


def test_scratch_truth_records_seed_spread(kinds_run):
    with RunStore(kinds_run) as store:
        truths = store.truths_frame()
    scratch = truths[truths["ground_truth"] == "retrain_from_scratch"]
    spreads = pd.Series([d["seed_std"] for d in scratch["diagnostics"]])
    assert len(scratch) == 16 * 6
    assert spreads.notna().all()
    assert (spreads > 0).any()
