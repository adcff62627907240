"""Read per-repetition results produced outside ifval, for ``ifval stats``.

Two layouts are read into one long table (one row per repetition):

- a CSV or Parquet table with one row per repetition, factor columns and one
  or more value columns;
- a folder of ``.npy`` files, each a 1-D array with one value per
  repetition of one condition. A file-name template maps the names to factor
  levels: ``spearman_width{width}.npy`` reads ``spearman_width8.npy`` as
  width 8. The field ``{measure}`` names the quantity a file holds, so
  ``{measure}_width{width}.npy`` analyses Spearman and Pearson files side by
  side instead of as a factor. ``*`` matches any text that is not part of a
  field, and ``/`` separates folders.

Levels that all read as numbers become numbers, so widths sort numerically.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ifval.errors import IfvalError

logger = logging.getLogger(__name__)

MEASURE = "measure"
"""Key column (and template field) that names the quantity a value measures."""

VALUE = "value"
"""Column of the long table that contains the values."""

DEFAULT_PATTERN = "{condition}.npy"
"""Template used when none is given: the file name without ``.npy`` is the condition."""

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}

_FIELD = re.compile(r"\{([^{}]*)\}")
_RESERVED = ("value", "repetition", "file")


@dataclass
class Results:
    """Per-repetition results read for re-analysis.

    ``frame`` has the factor columns, the ``measure`` column when the input
    names several measures, a ``value`` column and, for an ``.npy`` folder,
    ``file`` and ``repetition`` columns.
    """

    frame: pd.DataFrame
    factors: list[str]
    keys: list[str]
    value_name: str
    source: Path
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_results(path: str | Path, pattern: str | None = None, values: tuple[str, ...] = (),
                 factors: tuple[str, ...] = ()) -> Results:
    """Read a results table or a folder of ``.npy`` files.

    ``pattern`` applies to a folder only, ``values`` to a table only;
    ``factors`` restricts the analysed factors in both cases.
    """
    path = Path(path)
    if path.is_dir():
        if values:
            raise IfvalError(f"--value applies to a table; {path} is a folder, where each .npy "
                             "file contains the values")
        results = read_npy_folder(path, pattern or DEFAULT_PATTERN)
    elif path.is_file():
        if pattern is not None:
            raise IfvalError(f"--pattern applies to a folder of .npy files; {path} is a file")
        results = read_table(path, values, factors)
    else:
        raise IfvalError(f"results not found: {path}; give a CSV or Parquet table, or a folder "
                         "of .npy files")
    if factors:
        _select_factors(results, factors)
    return results


# ------------------------------------------------------------------------ tables


def read_table(path: Path, values: tuple[str, ...], factors: tuple[str, ...]) -> Results:
    """Read a CSV, TSV or Parquet table with one row per repetition into a long table.

    ``values`` name the value columns. The factors are ``factors`` or, when
    none are given, every other column.
    """
    frame = _load_table(path)
    columns = [str(column) for column in frame.columns]
    frame.columns = columns
    numeric = [c for c in columns if pd.api.types.is_numeric_dtype(frame[c])]
    if not values:
        msg = (f"{path}: name the value column(s) with --value; numeric columns: "
               f"{', '.join(numeric) or 'none'}; all columns: {', '.join(columns)}")
        raise IfvalError(msg)
    for name in (*values, *factors):
        if name not in columns:
            raise IfvalError(f"{path}: no column {name!r}; columns: {', '.join(columns)}")
    for name in values:
        if name not in numeric:
            raise IfvalError(f"{path}: value column {name!r} is not numeric "
                             f"(found dtype {frame[name].dtype}); numeric columns: "
                             f"{', '.join(numeric) or 'none'}")
    factor_names = list(factors) or [c for c in columns if c not in values]
    for name in factor_names:
        if name in values:
            raise IfvalError(f"{path}: column {name!r} is given as both a value and a factor; "
                             "drop one of the two options")
        if name == VALUE or (name == MEASURE and len(values) > 1):
            raise IfvalError(f"{path}: factor column {name!r} has the name of a column ifval "
                             "adds; rename it in the table")

    long = frame[factor_names + list(values)].melt(id_vars=factor_names, value_vars=list(values),
                                                   var_name=MEASURE, value_name=VALUE)
    keys = [MEASURE] if len(values) > 1 else []
    if not keys:
        long = long.drop(columns=MEASURE)
    value_name = values[0] if len(values) == 1 else "value"
    return Results(long, factor_names, keys, value_name, path)


def _load_table(path: Path) -> pd.DataFrame:
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise IfvalError(f"{path}: unknown table format {path.suffix!r}; use "
                         f"{', '.join(TABLE_SUFFIXES)}, or give a folder of .npy files")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if kind == "tsv" else ",")
    except ImportError as exc:
        raise IfvalError("reading Parquet needs pyarrow: pip install 'ifval[parquet]'") from exc
    except (ValueError, OSError) as exc:
        raise IfvalError(f"cannot read {path} as {kind}: {exc}") from exc


# --------------------------------------------------------------------- .npy folders


def compile_pattern(template: str) -> tuple[re.Pattern[str], list[str]]:
    """Turn a file-name template into a regular expression and its field names.

    A field ``{name}`` matches one or more characters other than ``/``, as
    few as the rest of the template allows. ``*`` matches any run of
    characters other than ``/``, and everything else matches literally.
    """
    names: list[str] = []
    parts = []
    position = 0
    for match in _FIELD.finditer(template):
        parts.append(_literal(template[position:match.start()]))
        name = match.group(1)
        if not name.isidentifier():
            raise IfvalError(f"--pattern {template!r}: field {{{name}}} is not a valid name; "
                             "use letters, digits and underscores, such as {width}")
        if name in names:
            raise IfvalError(f"--pattern {template!r}: field {{{name}}} appears twice")
        if name in _RESERVED:
            raise IfvalError(f"--pattern {template!r}: {{{name}}} is reserved for a column "
                             f"ifval adds; reserved names: {', '.join(_RESERVED)}")
        names.append(name)
        parts.append(f"(?P<{name}>[^/]+?)")
        position = match.end()
    tail = template[position:]
    if "{" in tail or "}" in tail:
        raise IfvalError(f"--pattern {template!r}: unbalanced brace; write fields as {{name}}")
    parts.append(_literal(tail))
    if not names:
        raise IfvalError(f"--pattern {template!r} has no field; mark the part of the file name "
                         "that gives a factor level, such as spearman_width{width}.npy")
    return re.compile("".join(parts)), names


def _literal(text: str) -> str:
    if "{" in text or "}" in text:
        raise IfvalError(f"unbalanced brace in pattern text {text!r}; write fields as {{name}}")
    return "[^/]*".join(re.escape(piece) for piece in text.split("*"))


def read_npy_folder(folder: Path, pattern: str = DEFAULT_PATTERN) -> Results:
    """Read every ``.npy`` file under ``folder`` whose relative path matches ``pattern``."""
    regex, names = compile_pattern(pattern)
    candidates = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.npy"))
    matched: dict[str, dict[str, str]] = {}
    skipped = []
    for relative in candidates:
        match = regex.fullmatch(relative)
        if match:
            matched[relative] = match.groupdict()
        else:
            skipped.append(relative)
    if not matched:
        found = ", ".join(candidates[:5]) + (" ..." if len(candidates) > 5 else "")
        raise IfvalError(f"no .npy file in {folder} matches --pattern {pattern!r}; "
                         f"files found: {found or 'none'}")
    if skipped:
        logger.warning("%d .npy file(s) in %s do not match %r and are left out: %s",
                       len(skipped), folder, pattern, ", ".join(skipped[:5]))

    levels = _typed_levels(matched, names)
    _reject_duplicates(levels)
    rows = []
    for relative, fields in levels.items():
        array = _load_array(folder / relative)
        for repetition, value in enumerate(array):
            rows.append({**fields, "file": relative, "repetition": repetition, VALUE: value})
    factors = [name for name in names if name != MEASURE]
    keys = [MEASURE] if MEASURE in names else []
    frame = pd.DataFrame(rows).sort_values([*factors, *keys], kind="stable")
    return Results(frame.reset_index(drop=True), factors, keys, "value", folder, list(levels),
                   skipped)


def _typed_levels(matched: dict[str, dict[str, str]],
                  names: list[str]) -> dict[str, dict[str, Any]]:
    """Convert each field's levels to numbers when every level of that field is one."""
    typed: dict[str, dict[str, Any]] = {relative: {} for relative in matched}
    for name in names:
        texts = [fields[name] for fields in matched.values()]
        converted = _as_numbers(texts)
        for relative, level in zip(matched, converted, strict=True):
            typed[relative][name] = level
    return typed


def _as_numbers(texts: list[str]) -> list[Any]:
    for kind in (int, float):
        try:
            return [kind(text) for text in texts]
        except ValueError:
            continue
    return texts


def _reject_duplicates(levels: dict[str, dict[str, Any]]) -> None:
    first: dict[tuple[Any, ...], str] = {}
    for relative, fields in levels.items():
        key = tuple(fields.values())
        if key in first:
            raise IfvalError(f"{first[key]} and {relative} give the same condition "
                             f"({_describe(fields)}); make the pattern tell them apart")
        first[key] = relative


def _describe(fields: dict[str, Any]) -> str:
    return ", ".join(f"{name}={level}" for name, level in fields.items())


def _load_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise IfvalError(f"cannot read {path}: it stores Python objects (a pickle), which ifval "
                         "does not load; save a numeric array with numpy.save") from exc
    except OSError as exc:
        raise IfvalError(f"cannot read {path} as a .npy file: {exc}") from exc
    if isinstance(array, np.lib.npyio.NpzFile):
        raise IfvalError(f"{path} is an .npz archive; save one array per file with numpy.save")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
            or array.dtype == np.bool_):
        raise IfvalError(f"{path}: expected real numbers, found dtype {array.dtype}")
    squeezed = np.atleast_1d(np.squeeze(array))
    if squeezed.ndim != 1:
        raise IfvalError(f"{path}: expected a 1-D array with one value per repetition, found "
                         f"shape {array.shape}")
    return squeezed.astype(float)


def _select_factors(results: Results, factors: tuple[str, ...]) -> None:
    available = results.factors
    for name in factors:
        if name not in available:
            raise IfvalError(f"--factor {name!r} is not a factor of {results.source}; "
                             f"factors: {', '.join(available) or 'none'}")
    results.factors = list(factors)
