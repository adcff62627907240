"""``ifval stats``: re-analysis of per-repetition results written by another codebase."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from ifval.cli import P_ADJUST_CHOICES, POST_HOC_CHOICES, cli
from ifval.errors import IfvalError
from ifval.reanalysis import compile_pattern, read_results
from ifval.stats import P_ADJUST_METHODS, POST_HOC_METHODS

HAND_CHECKED = {8: [0.81, 0.82, 0.83], 14: [0.82, 0.83, 0.84], 20: [0.86, 0.87, 0.88]}
"""Per-repetition Spearman values of three widths, small enough to analyse by hand.

Subtracting 0.80 and scaling by 100 gives (1, 2, 3), (2, 3, 4), (6, 7, 8),
which leaves F unchanged: group means 2, 3, 7 around a grand mean of 4, so
SS_between = 3 · (4 + 1 + 9) = 42 and SS_within = 3 · 2 = 6, with 2 and 6
degrees of freedom. F = (42/2) / (6/6) = 21, η² = 42/48 = 0.875, and with two
numerator degrees of freedom p = (1 + 2F/6)^(−3) = 8^(−3) = 1/512.
"""


def write_npy_folder(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    for relative, values in arrays.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(values))
    return folder


def run_stats(*args: str):
    result = CliRunner().invoke(cli, ["stats", *map(str, args)])
    return result


@pytest.fixture
def hand_folder(tmp_path):
    return write_npy_folder(tmp_path / "sweep", {f"spearman_width{width}.npy": values
                                                 for width, values in HAND_CHECKED.items()})


def test_npy_folder_reproduces_hand_checked_anova(hand_folder, tmp_path):
    out = tmp_path / "result.json"
    result = run_stats(hand_folder, "--pattern", "spearman_width{width}.npy", "--json", out)

    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    [row] = summary["oneway_anova"]
    assert row["factor"] == "width"
    assert row["test"] == "anova"
    assert row["F"] == pytest.approx(21.0, rel=1e-9)
    assert row["df_between"] == 2
    assert row["df_within"] == 6
    assert row["p"] == pytest.approx(1 / 512, rel=1e-9)
    assert row["eta_squared"] == pytest.approx(0.875, rel=1e-9)
    assert "F(2, 6) = 21" in result.output
    assert "0.00195" in result.output


def test_npy_folder_cells_in_numeric_order(hand_folder, tmp_path):
    out = tmp_path / "result.json"
    run_stats(hand_folder, "--pattern", "spearman_width{width}.npy", "--json", out)

    cells = json.loads(out.read_text())["cells"]
    assert [cell["width"] for cell in cells] == [8, 14, 20]
    assert cells[0]["mean"] == pytest.approx(0.82)
    low, high = stats.t.interval(0.95, 2, loc=0.82, scale=stats.sem(HAND_CHECKED[8]))
    assert cells[0]["ci_low"] == pytest.approx(low)
    assert cells[0]["ci_high"] == pytest.approx(high)


def test_npy_sweep_matches_f_oneway(tmp_path):
    rng = np.random.default_rng(4)
    widths = [8, 14, 20, 30, 40, 50]
    arrays = {f"spearman_width{w}.npy": rng.normal(0.85 - 0.004 * i, 0.05, 50)
              for i, w in enumerate(widths)}
    folder = write_npy_folder(tmp_path / "sweep", arrays)
    out = tmp_path / "result.json"

    result = run_stats(folder, "--pattern", "spearman_width{width}.npy", "--json", out)
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["oneway_anova"]
    expected = stats.f_oneway(*(arrays[f"spearman_width{w}.npy"] for w in widths))
    assert row["F"] == pytest.approx(expected.statistic, rel=1e-10)
    assert row["p"] == pytest.approx(expected.pvalue, rel=1e-8)


def test_measure_field_side_by_side(tmp_path):
    rng = np.random.default_rng(6)
    arrays = {}
    for kind in ("NoWD", "WD"):
        for width in (8, 14, 20):
            for measure in ("spearman", "pearson"):
                arrays[f"{kind}/{measure}_{width}.npy"] = rng.normal(0.8, 0.05, 10)
    folder = write_npy_folder(tmp_path / "runs", arrays)
    out = tmp_path / "result.json"

    result = run_stats(folder, "--pattern", "{kind}/{measure}_{width}.npy", "--json", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["factors"] == ["kind", "width"]
    assert summary["keys"] == ["measure"]
    assert len(summary["cells"]) == 12
    assert {row["measure"] for row in summary["oneway_anova"]} == {"spearman", "pearson"}
    assert {row["source"] for row in summary["twoway_anova"]} == {
        "kind", "width", "kind × width", "residual"}
    assert "Every measure side by side" in result.output
    assert len(summary["files"]) == 12


def test_nan_values_counted(tmp_path):
    folder = write_npy_folder(tmp_path / "sweep", {
        "a.npy": [0.1, 0.2, np.nan, 0.3], "b.npy": [0.5, 0.6, 0.7, 0.8]})
    out = tmp_path / "result.json"

    result = run_stats(folder, "--json", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["nan_values"] == {"total": 1, "by_reason": {"missing value": 1}}
    assert [cell["n_nan"] for cell in summary["cells"]] == [1, 0]
    assert "1 NaN values are left out of every statistic above." in result.output


def test_output_folder_written(hand_folder, tmp_path):
    out = tmp_path / "report"
    result = run_stats(hand_folder, "--pattern", "spearman_width{width}.npy", "-o", out)

    assert result.exit_code == 0, result.output
    for name in ("cells.csv", "anova.csv", "anova_twoway.csv", "posthoc.csv", "summary.json",
                 "summary.md", "means.png", "means.svg"):
        assert (out / name).is_file(), name
    assert "F(2, 6) = 21" in (out / "summary.md").read_text()


def test_unmatched_files_are_reported(hand_folder):
    np.save(hand_folder / "notes.npy", np.zeros(3))
    result = run_stats(hand_folder, "--pattern", "spearman_width{width}.npy")

    assert result.exit_code == 0, result.output
    assert "left out 1 .npy files that do not match the pattern, first: notes.npy" in (
        result.output)


# --------------------------------------------------------------------- input errors


@pytest.mark.parametrize(("pattern", "message"), [
    ("spearman.npy", "--pattern 'spearman.npy' has no field; mark the part of the file name "
                     "that gives a factor level, such as spearman_width{width}.npy"),
    ("{1x}.npy", "--pattern '{1x}.npy': field {1x} is not a valid name; use letters, digits "
                 "and underscores, such as {width}"),
    ("{a}_{a}.npy", "--pattern '{a}_{a}.npy': field {a} appears twice"),
    ("{value}.npy", "--pattern '{value}.npy': {value} is reserved for a column ifval adds; "
                    "reserved names: value, repetition, file"),
    ("{a}}.npy", "--pattern '{a}}.npy': unbalanced brace; write fields as {name}"),
])
def test_bad_pattern_rejected(pattern, message):
    with pytest.raises(IfvalError) as caught:
        compile_pattern(pattern)
    assert str(caught.value) == message


def test_pattern_fields_and_wildcard():
    regex, names = compile_pattern("{kind}/run*_{measure}_w{width}.npy")

    match = regex.fullmatch("WD/run3_seed0_spearman_w14.npy")
    assert names == ["kind", "measure", "width"]
    assert match.groupdict() == {"kind": "WD", "measure": "spearman", "width": "14"}
    assert regex.fullmatch("WD/x/run3_spearman_w14.npy") is None


def test_no_matching_file(hand_folder):
    result = run_stats(hand_folder, "--pattern", "pearson_{width}.npy")

    assert result.exit_code == 1
    assert result.output == (
        f"Error: no .npy file in {hand_folder} matches --pattern 'pearson_{{width}}.npy'; "
        "files found: spearman_width14.npy, spearman_width20.npy, spearman_width8.npy\n")


def test_same_condition_twice(tmp_path):
    folder = write_npy_folder(tmp_path / "sweep", {"a_1_x.npy": [1.0, 2.0],
                                                   "a_1_y.npy": [1.0, 2.0]})
    with pytest.raises(IfvalError) as caught:
        read_results(folder, "{kind}_{width}_*.npy")
    assert str(caught.value) == ("a_1_x.npy and a_1_y.npy give the same condition (kind=a, "
                                 "width=1); make the pattern tell them apart")


def test_two_dimensional_array_rejected(tmp_path):
    folder = write_npy_folder(tmp_path / "sweep", {"w8.npy": np.zeros((5, 4))})
    with pytest.raises(IfvalError) as caught:
        read_results(folder, "w{width}.npy")
    assert str(caught.value) == (f"{folder / 'w8.npy'}: expected a 1-D array with one value per "
                                 "repetition, found shape (5, 4)")


def test_pickled_array_rejected(tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    np.save(folder / "w8.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IfvalError) as caught:
        read_results(folder, "w{width}.npy")
    assert str(caught.value).endswith("it stores Python objects (a pickle), which ifval does "
                                      "not load; save a numeric array with numpy.save")


def test_missing_path(tmp_path):
    result = run_stats(tmp_path / "nothing")
    assert result.exit_code == 1
    assert result.output == (f"Error: results not found: {tmp_path / 'nothing'}; give a CSV or "
                             "Parquet table, or a folder of .npy files\n")


# -------------------------------------------------------------------------- tables


def sweep_table():
    rng = np.random.default_rng(2)
    rows = []
    for kind in ("plain", "decay"):
        for width in (8, 14, 20):
            for repetition in range(8):
                rows.append({"kind": kind, "width": width, "repetition": repetition,
                             "spearman": rng.normal(0.8, 0.05),
                             "pearson": rng.normal(0.9, 0.03)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_table_matches_f_oneway(tmp_path, suffix):
    table = sweep_table()
    path = tmp_path / f"results.{suffix}"
    table.to_csv(path, index=False) if suffix == "csv" else table.to_parquet(path, index=False)
    out = tmp_path / "result.json"

    result = run_stats(path, "--value", "spearman", "--factor", "kind", "--factor", "width",
                       "--json", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    row = next(r for r in summary["oneway_anova"]
               if r["factor"] == "width" and r["fixed"] == "kind=plain")
    plain = table[table["kind"] == "plain"]
    expected = stats.f_oneway(*(plain.loc[plain["width"] == w, "spearman"] for w in (8, 14, 20)))
    assert row["F"] == pytest.approx(expected.statistic, rel=1e-10)
    assert f"{path.name}: mean spearman and 95% interval per cell" in result.output


def test_table_several_values(tmp_path):
    path = tmp_path / "results.csv"
    sweep_table().to_csv(path, index=False)
    out = tmp_path / "result.json"

    result = run_stats(path, "--value", "spearman", "--value", "pearson", "--factor", "kind",
                       "--factor", "width", "--json", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["keys"] == ["measure"]
    assert {cell["measure"] for cell in summary["cells"]} == {"spearman", "pearson"}


@pytest.mark.parametrize(("args", "message"), [
    ((), "name the value column(s) with --value; numeric columns: width, repetition, spearman, "
         "pearson; all columns: kind, width, repetition, spearman, pearson"),
    (("--value", "kendall"), "no column 'kendall'; columns: kind, width, repetition, spearman, "
                             "pearson"),
    (("--value", "kind"), "value column 'kind' is not numeric (found dtype {kind_dtype}); "
                          "numeric columns: width, repetition, spearman, pearson"),
])
def test_table_input_errors(tmp_path, args, message):
    path = tmp_path / "results.csv"
    sweep_table().to_csv(path, index=False)
    message = message.replace("{kind_dtype}", str(pd.read_csv(path)["kind"].dtype))

    result = run_stats(path, *args)
    assert result.exit_code == 1
    assert result.output == f"Error: {path}: {message}\n"


def test_two_way_names_checked(hand_folder):
    result = run_stats(hand_folder, "--pattern", "spearman_width{width}.npy", "--two-way",
                       "width", "depth")
    assert result.exit_code == 1
    assert result.output == ("Error: --two-way width depth: 'depth' is not a factor; "
                             "factors: width\n")


def test_cli_choices_match_stats():
    assert POST_HOC_CHOICES == POST_HOC_METHODS
    assert P_ADJUST_CHOICES == P_ADJUST_METHODS


def test_stats_imports_no_torch(hand_folder):
    code = ("import sys; from ifval.cli import cli; "
            f"cli(['stats', {str(hand_folder)!r}, '--pattern', 'spearman_width{{width}}.npy'], "
            "standalone_mode=False); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("False")


def test_column_both_value_and_factor(tmp_path):
    path = tmp_path / "results.csv"
    sweep_table().to_csv(path, index=False)

    result = run_stats(path, "--value", "spearman", "--factor", "spearman")
    assert result.exit_code == 1
    assert result.output == (f"Error: {path}: column 'spearman' is given as both a value and a "
                             "factor; drop one of the two options\n")
