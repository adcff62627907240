"""`ifval validate` on malformed protocols: the exact message and exit code 2.

Every malformed protocol is the valid ``BASE`` below with one defect, written
to a temporary file and checked through the click command.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from ifval.cli import cli
from ifval.plugins import default_catalog

BASE: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "iris"},
    "model": {"name": "mlp", "depth": 1, "width": 8, "activation": "selu"},
    "training": {"lr": 0.01, "epochs": 10},
    "grid": {"model.width": [4, 8]},
    "variants": {"plain": {}, "decay": {"training.weight_decay": 0.005}},
    "estimators": [{"name": "exact", "damping": 0.001}],
    "ground_truths": [{"name": "retrain_from_optimum", "epochs": 5}],
    "scorers": ["spearman", "pearson"],
    "repetitions": 2,
}
"""A valid protocol: 2 widths × 2 variants = 4 conditions, 8 trials."""


def changed(*keys: str | int, value: Any) -> dict[str, Any]:
    """Return a copy of ``BASE`` with ``value`` written at the given keys."""
    protocol = copy.deepcopy(BASE)
    *parents, last = keys
    node: Any = protocol
    for key in parents:
        node = node[key]
    node[last] = value
    return protocol


def removed(*keys: str) -> dict[str, Any]:
    """Return a copy of ``BASE`` without the field at the given keys."""
    protocol = copy.deepcopy(BASE)
    *parents, last = keys
    node: Any = protocol
    for key in parents:
        node = node[key]
    del node[last]
    return protocol


def renamed(old: str, new: str) -> dict[str, Any]:
    """Return a copy of ``BASE`` with the top-level field ``old`` written as ``new``."""
    protocol = copy.deepcopy(BASE)
    protocol[new] = protocol.pop(old)
    return protocol


def validate_file(path: Path) -> Result:
    return CliRunner().invoke(cli, ["validate", str(path)])


def validate_text(tmp_path: Path, text: str) -> tuple[Result, Path]:
    path = tmp_path / "protocol.yaml"
    path.write_text(text, encoding="utf-8")
    return validate_file(path), path


def validate_dict(tmp_path: Path, protocol: dict[str, Any]) -> tuple[Result, Path]:
    return validate_text(tmp_path, yaml.safe_dump(protocol, sort_keys=False))


MALFORMED = [
    pytest.param(
        changed("estimators", 0, "name", value="exakt"),
        "estimators[0].name: unknown estimator 'exakt'; known estimators: exact, group, lissa, "
        "second_order. Did you mean 'exact'?",
        id="unknown-estimator",
    ),
    pytest.param(
        changed("scorers", value=["spearman", "brier"]),
        "scorers[1].name: unknown scorer 'brier'; known scorers: "
        + ", ".join(default_catalog().registries["scorer"].names()),
        id="unknown-scorer",
    ),
    pytest.param(
        changed("dataset", "name", value="mnist"),
        "dataset.name: unknown dataset 'mnist'; known datasets: iris",
        id="unknown-dataset",
    ),
    pytest.param(
        changed("executor", value="slurm"),
        "executor.name: unknown executor 'slurm'; known executors: local",
        id="unknown-executor",
    ),
    pytest.param(
        changed("training", "epochs", value="ten"),
        "training.epochs: input should be a valid integer (found 'ten')",
        id="epochs-not-a-number",
    ),
    pytest.param(
        changed("training", "epochs", value=True),
        "training.epochs: input should be a valid integer (found True)",
        id="epochs-boolean",
    ),
    pytest.param(
        changed("training", "lr", value=True),
        "training.lr: input should be a valid number (found True)",
        id="lr-boolean",
    ),
    pytest.param(
        changed("repetitions", value="3"),
        "repetitions: input should be a valid integer (found '3'); a number in quotes is a "
        "string, so remove the quotes",
        id="repetitions-quoted",
    ),
    pytest.param(
        changed("repetitions", value=-1),
        "repetitions: input should be greater than or equal to 1 (found -1)",
        id="repetitions-negative",
    ),
    pytest.param(
        changed("repetitions", value=0),
        "repetitions: input should be greater than or equal to 1 (found 0)",
        id="repetitions-zero",
    ),
    pytest.param(
        removed("dataset"),
        "dataset: required field is missing",
        id="dataset-missing",
    ),
    pytest.param(
        removed("training", "epochs"),
        "training.epochs: required field is missing",
        id="epochs-missing",
    ),
    pytest.param(
        changed("repetitons", value=2),
        "repetitons: unknown field (found 'repetitons'); allowed fields: name, description, "
        "dataset, model, training, grid, variants, points, hessian, estimators, ground_truths, "
        "scorers, repetitions, seed, batch_size, statistics, output, executor. "
        "Did you mean 'repetitions'?",
        id="top-level-typo",
    ),
    pytest.param(
        changed("model", "widht", value=8),
        "model.widht: unknown field (found 'widht'); allowed fields: name, label, depth, width, "
        "activation. Did you mean 'width'?",
        id="plugin-setting-typo",
    ),
    pytest.param(
        changed("model", "activation", value="gelu"),
        "model.activation: input should be 'selu', 'tanh' or 'relu' (found 'gelu')",
        id="activation-not-allowed",
    ),
    pytest.param(
        changed("model", "depth", value=-1),
        "model.depth: input should be greater than or equal to 0 (found -1)",
        id="depth-negative",
    ),
    pytest.param(
        changed("dataset", "test_point", value="last"),
        "dataset.test_point: input should be a valid integer or 'max_loo_loss' (found 'last')",
        id="union-setting-invalid",
    ),
    pytest.param(
        changed("estimators", value=[3]),
        "estimators[0]: expected a plugin name or a mapping with `name` and the plugin's "
        "settings (found 3)",
        id="estimator-not-a-mapping",
    ),
    pytest.param(
        changed("scorers", value="spearman"),
        "scorers: input should be a valid list (found 'spearman')",
        id="scorers-not-a-list",
    ),
    pytest.param(
        changed("training", value=None),
        "training: expected a mapping (found None)",
        id="training-null",
    ),
    pytest.param(
        changed("grid", value={"model": [4, 8]}),
        "grid.model: invalid dotted path 'model': name a setting inside the section, such as "
        "model.depth",
        id="grid-path-without-setting",
    ),
    pytest.param(
        changed("grid", value={"foo.bar": [1, 2]}),
        "grid.foo.bar: invalid dotted path 'foo.bar': it must start with a section that may "
        "differ between conditions: dataset, model, training, points, estimators, "
        "ground_truths, scorers, hessian",
        id="grid-path-unknown-section",
    ),
    pytest.param(
        changed("grid", value={"modle.width": [4, 8]}),
        "grid.modle.width: invalid dotted path 'modle.width': it must start with a section "
        "that may differ between conditions: dataset, model, training, points, estimators, "
        "ground_truths, scorers, hessian. Did you mean 'model'?",
        id="grid-path-section-typo",
    ),
    pytest.param(
        changed("grid", value={"training.nonexistent.x": [1, 2]}),
        "grid.training.nonexistent.x: invalid dotted path 'training.nonexistent.x': training "
        "has no field 'nonexistent'; fields present: optimizer, lr, epochs, weight_decay, "
        "betas, eps, plateau, swa, dtype",
        id="grid-path-through-unknown-field",
    ),
    pytest.param(
        changed("grid", value={"training.nonexistent": [1, 2]}),
        "grid.training.nonexistent: unknown field (found 'nonexistent'); allowed fields: "
        "optimizer, lr, epochs, weight_decay, betas, eps, plateau, swa, dtype",
        id="grid-path-unknown-field",
    ),
    pytest.param(
        changed("grid", value={"training.plateau.factor": [0.1, 0.5]}),
        "grid.training.plateau.factor: invalid dotted path 'training.plateau.factor': "
        "training.plateau is null, so it has no settings; give it a mapping first",
        id="grid-path-through-null",
    ),
    pytest.param(
        changed("grid", value={"estimators.1.damping": [0.0, 0.1]}),
        "grid.estimators.1.damping: invalid dotted path 'estimators.1.damping': estimators has "
        "1 item, so '1' must be an index from 0 to 0",
        id="grid-path-index-out-of-range",
    ),
    pytest.param(
        changed("grid", value={"model.width": []}),
        "grid.model.width: the list of values is empty; give at least one value",
        id="grid-list-empty",
    ),
    pytest.param(
        changed("grid", value={"model.width": [4, 4]}),
        "grid.model.width[1]: duplicate value (found 4, also at index 0); list each value once",
        id="grid-value-duplicate",
    ),
    pytest.param(
        changed("grid", value={"model.width": [8, -3]}),
        "grid.model.width[1]: input should be greater than or equal to 1 (found -3) "
        "(in 2 of 4 conditions, first: model.width=-3, variant=plain)",
        id="grid-value-invalid",
    ),
    pytest.param(
        changed("variants", "wide", value={"model.width": 20}),
        "variants.wide.model.width: the grid also sweeps this path; a setting may be swept by "
        "the grid or set by a variant, not both",
        id="variant-sets-swept-path",
    ),
    pytest.param(
        changed("variants", "decay", "training.weight_decay", value=-0.1),
        "variants.decay.training.weight_decay: input should be greater than or equal to 0 "
        "(found -0.1) (in 2 of 4 conditions, first: model.width=4, variant=decay)",
        id="variant-value-invalid",
    ),
    pytest.param(
        changed("variants", "none", value={"training.weight_decay": 0.0}),
        "variants.none: gives the same configuration as variant 'plain'; make the two differ "
        "or remove one (in 2 of 6 conditions, first: model.width=4, variant=none)",
        id="variant-duplicates-another",
    ),
    pytest.param(
        changed("estimators", value=[{"name": "exact"}, {"name": "exact", "damping": 0.1}]),
        "estimators[1].name: duplicate label 'exact' (also estimators[0]); give one of them a "
        "distinct `label`",
        id="estimator-labels-duplicate",
    ),
    pytest.param(
        changed("statistics", value={"factors": ["model.depth"]}),
        "statistics.factors[0]: 'model.depth' is not a grid path, `variant`, `estimator` or "
        "`ground_truth`; allowed: model.width, variant, estimator, ground_truth",
        id="statistics-factor-unknown",
    ),
    pytest.param(
        changed("statistics", value={"scores": ["kendall"]}),
        "statistics.scores[0]: 'kendall' is not a scorer label of this protocol; allowed: "
        "spearman, pearson",
        id="statistics-score-unknown",
    ),
]


@pytest.mark.parametrize(("protocol", "problem"), MALFORMED)
def test_malformed_protocol_rejected(tmp_path: Path, protocol: dict[str, Any],
                                     problem: str) -> None:
    result, path = validate_dict(tmp_path, protocol)

    assert result.exit_code == 2
    assert result.stderr == f"Error: {path}: invalid protocol: {problem}\n"


def test_base_protocol_valid(tmp_path: Path) -> None:
    result, path = validate_dict(tmp_path, BASE)

    assert result.exit_code == 0
    assert result.stdout == f"{path}: valid; 4 conditions × 2 repetitions = 8 trials\n"


def test_renamed_field_lists_both_problems(tmp_path: Path) -> None:
    result, path = validate_dict(tmp_path, renamed("repetitions", "repetitons"))

    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {path}: invalid protocol (2 problems):\n"
        "  - repetitions: required field is missing\n"
        "  - repetitons: unknown field (found 'repetitons'); allowed fields: name, description, "
        "dataset, model, training, grid, variants, points, hessian, estimators, ground_truths, "
        "scorers, repetitions, seed, batch_size, statistics, output, executor. "
        "Did you mean 'repetitions'?\n"
    )


TEXT_PROBLEMS = [
    pytest.param(
        "name: tiny\ndataset: [iris\nmodel: mlp\n",
        "YAML syntax error at line 3, column 6: expected ',' or ']', but got ':'",
        id="syntax-error",
    ),
    pytest.param(
        "name: tiny\nrepetitions: 2\nname: other\n",
        "YAML syntax error at line 3, column 1: duplicate key 'name' (first at line 1); "
        "keep one of them",
        id="duplicate-key",
    ),
    pytest.param(
        "- name: tiny\n- repetitions: 2\n",
        "top level: expected a mapping of sections such as name and dataset (found a list)",
        id="list-not-mapping",
    ),
    pytest.param(
        "",
        "top level: expected a mapping of sections such as name and dataset "
        "(found an empty file)",
        id="empty-file",
    ),
    pytest.param(
        "# only a comment\n",
        "top level: expected a mapping of sections such as name and dataset "
        "(found an empty file)",
        id="comment-only",
    ),
]


@pytest.mark.parametrize(("text", "problem"), TEXT_PROBLEMS)
def test_unparsable_file_rejected(tmp_path: Path, text: str, problem: str) -> None:
    result, path = validate_text(tmp_path, text)

    assert result.exit_code == 2
    assert result.stderr == f"Error: {path}: invalid protocol: {problem}\n"


def test_exponent_without_dot_accepted(tmp_path: Path) -> None:
    # PyYAML reads 1e-3 as a string because YAML 1.1 floats need a dot.
    text = yaml.safe_dump(BASE, sort_keys=False).replace("lr: 0.01", "lr: 1e-3")
    result, path = validate_text(tmp_path, text)

    assert "lr: 1e-3" in text
    assert result.exit_code == 0
    assert result.stdout == f"{path}: valid; 4 conditions × 2 repetitions = 8 trials\n"


def test_merge_key_may_override(tmp_path: Path) -> None:
    text = yaml.safe_dump(removed("model"), sort_keys=False)
    text += "model:\n  <<: {name: mlp, width: 3}\n  width: 5\n"
    result, path = validate_text(tmp_path, text)

    assert result.exit_code == 0
    assert result.stdout == f"{path}: valid; 4 conditions × 2 repetitions = 8 trials\n"


def test_non_utf8_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "protocol.yaml"
    path.write_bytes(b"name: tiny\ndescription: caf\xe9\n")
    result = validate_file(path)

    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {path}: invalid protocol: the file is not UTF-8 text (byte 0xe9 on line 2); "
        "save it as UTF-8\n"
    )


def test_missing_file_exits_one(tmp_path: Path) -> None:
    # A file that cannot be read is an environment error (exit 1), kept apart
    # from a protocol that was read and found invalid (exit 2).
    path = tmp_path / "absent.yaml"
    result = validate_file(path)

    assert result.exit_code == 1
    assert result.stderr == f"Error: protocol file not found: {path}\n"


def test_directory_is_usage_error(tmp_path: Path) -> None:
    result = validate_file(tmp_path)

    assert result.exit_code == 2
    assert f"Error: Invalid value for 'PROTOCOL_FILE': File '{tmp_path}' is a directory." in (
        result.stderr)


def test_example_protocol_valid() -> None:
    path = Path(__file__).parents[1] / "protocols" / "iris_quick.yaml"
    result = validate_file(path)

    assert result.exit_code == 0
    assert result.stdout == f"{path}: valid; 15 conditions × 8 repetitions = 120 trials\n"
