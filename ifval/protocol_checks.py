"""Checks of a parsed protocol that its schema alone cannot express.

Grid and variant paths must exist and not overlap, every condition must name
known plugins with valid settings, and the statistics section must name
factors and scorers the protocol has.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ifval.errors import UnknownPluginError
from ifval.plugins import Catalog
from ifval.protocol import (
    CONDITION_SECTIONS,
    MEASURE_PREFIXES,
    PLUGIN_LIST_SECTIONS,
    VARIANT_FACTOR,
    Condition,
    Overlay,
    PluginSpec,
    Points,
    Protocol,
    Training,
    analysis_factors,
    iter_conditions,
    plugin_lists_as_dicts,
)
from ifval.protocol_messages import (
    PLUGIN_SPEC_TEXT,
    Problem,
    did_you_mean,
    extend_location,
    pydantic_problems,
    render_loc,
    show_value,
)

# ------------------------------------------------------------ grid and variant paths


def check_overlays(protocol: Protocol) -> list[str]:
    """Check every grid and variant path and the grid's lists of values."""
    base = protocol.model_dump(include=set(CONDITION_SECTIONS))
    base = {key: plugin_lists_as_dicts(value) for key, value in base.items()}
    grid_paths = list(protocol.grid)
    problems = []

    for position, path in enumerate(grid_paths):
        location = f"grid.{path}"
        problem = _path_problem(base, path)
        if problem:
            problems.append(f"{location}: {problem}")
        values = protocol.grid[path]
        if not values:
            problems.append(f"{location}: the list of values is empty; give at least one value")
        problems.extend(_duplicate_values(location, values))
        for other in grid_paths[:position]:
            if _paths_overlap(path, other):
                problems.append(f"{location}: overlaps the grid path {other!r}; sweep only one")

    for variant, overlay in protocol.variants.items():
        paths = list(overlay)
        for position, path in enumerate(paths):
            location = f"variants.{variant}.{path}"
            problem = _path_problem(base, path)
            if problem:
                problems.append(f"{location}: {problem}")
            for other in grid_paths:
                if _paths_overlap(path, other):
                    swept = "this path" if path == other else f"{other!r}, which overlaps it"
                    problems.append(
                        f"{location}: the grid also sweeps {swept}; a setting may be swept by "
                        "the grid or set by a variant, not both"
                    )
            for other in paths[:position]:
                if _paths_overlap(path, other):
                    problems.append(f"{location}: overlaps {other!r} in the same variant; "
                                    "set only one")
    return problems


def _path_problem(base: dict[str, Any], path: str) -> str | None:
    """Return why a dotted path cannot be written in the configuration, or None when it can."""
    tokens = path.split(".")
    invalid = f"invalid dotted path {path!r}"
    if "" in tokens:
        return f"{invalid}: a part between dots is empty; write it like model.width"
    section = tokens[0]
    if section not in CONDITION_SECTIONS:
        allowed = ", ".join(CONDITION_SECTIONS)
        return (f"{invalid}: it must start with a section that may differ between conditions: "
                f"{allowed}{did_you_mean(section, CONDITION_SECTIONS)}")
    if len(tokens) == 1:
        example = _example_path(base, section)
        return f"{invalid}: name a setting inside the section, such as {example}"

    node: Any = base
    for depth, token in enumerate(tokens):
        parent = ".".join(tokens[:depth])
        last = depth == len(tokens) - 1
        if isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                items = "1 item" if len(node) == 1 else f"{len(node)} items"
                return (f"{invalid}: {parent} has {items}, so {token!r} must be an index from "
                        f"0 to {len(node) - 1}")
            node = node[int(token)]
        elif isinstance(node, dict):
            if last:
                return None
            if token not in node:
                fields = ", ".join(str(key) for key in node)
                return f"{invalid}: {parent} has no field {token!r}; fields present: {fields}"
            node = node[token]
        elif node is None:
            return f"{invalid}: {parent} is null, so it has no settings; give it a mapping first"
        else:
            return (f"{invalid}: {parent} is a single value (found {show_value(node)}), "
                    "not a section with settings")
    return None


def _example_path(base: dict[str, Any], section: str) -> str:
    content = base.get(section)
    if isinstance(content, list):
        return f"{section}.0.name"
    settings = [key for key in content or {} if key not in ("name", "label")]
    return f"{section}.{settings[0] if settings else 'name'}"


def _paths_overlap(first: str, second: str) -> bool:
    """Return True when one dotted path equals the other or lies inside it."""
    first_tokens, second_tokens = first.split("."), second.split(".")
    shared = min(len(first_tokens), len(second_tokens))
    return first_tokens[:shared] == second_tokens[:shared]


def _duplicate_values(location: str, values: list[Any]) -> list[str]:
    """Report grid values equal to an earlier one: they would give two identical conditions."""
    problems = []
    first_index: dict[str, int] = {}
    for index, value in enumerate(values):
        canonical = json.dumps(value, sort_keys=True, default=str)
        first = first_index.setdefault(canonical, index)
        if first != index:
            found = show_value(value)
            problems.append(f"{location}[{index}]: duplicate value (found {found}, also "
                            f"at index {first}); list each value once")
    return problems


# ---------------------------------------------------------------- condition checks


def check_conditions(protocol: Protocol, catalog: Catalog) -> list[str]:
    """Check every condition and report each problem once, at the YAML path that caused it."""
    labels_by_problem: dict[str, list[str]] = {}
    first_by_id: dict[str, Condition] = {}
    count = 0
    for condition, overlays in iter_conditions(protocol):
        count += 1
        found = [f"{_locate(problem, overlays)}: {problem.text}"
                 for problem in _check_condition(condition.config, catalog)]
        first = first_by_id.setdefault(condition.id, condition)
        if first is not condition:
            found.append(_same_configuration(first, condition))
        for problem in found:
            labels_by_problem.setdefault(problem, []).append(condition.label)
    return [problem + _condition_note(labels, count)
            for problem, labels in labels_by_problem.items()]


def _check_condition(config: dict[str, Any], catalog: Catalog) -> list[Problem]:
    problems = []
    for section in ("dataset", "model"):
        problems.extend(check_plugin(catalog, section, (section,), config[section]))
    for kind, section in PLUGIN_LIST_SECTIONS:
        first_index: dict[str, int] = {}
        for index, spec in enumerate(config[section]):
            problems.extend(check_plugin(catalog, kind, (section, index), spec))
            if not isinstance(spec, dict):
                continue
            field = "label" if spec.get("label") is not None else "name"
            label = spec.get(field)
            if not isinstance(label, str):
                continue
            first = first_index.setdefault(label, index)
            if first != index:
                text = (f"duplicate label {label!r} (also {section}[{first}]); "
                        "give one of them a distinct `label`")
                problems.append(Problem((section, index, field), text))
    for section, schema in (("training", Training), ("points", Points)):
        try:
            schema.model_validate(config[section])
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, schema, (section,)))
    return problems


def check_plugin(catalog: Catalog, kind: str, loc: tuple[str | int, ...],
                  spec: Any) -> list[Problem]:
    """Check a plugin's name and its settings against the plugin's ``Params``."""
    if not isinstance(spec, dict):
        return [Problem(loc, f"expected {PLUGIN_SPEC_TEXT} (found {show_value(spec)})")]
    try:
        PluginSpec.model_validate(spec)
    except ValidationError as exc:
        return pydantic_problems(exc, PluginSpec, loc)
    try:
        plugin = catalog.get(kind, spec["name"])
    except UnknownPluginError as exc:
        return [Problem((*loc, "name"), str(exc))]
    settings = {key: value for key, value in spec.items() if key not in ("name", "label")}
    try:
        plugin.parse_params(settings)
    except ValidationError as exc:
        return pydantic_problems(exc, plugin.Params, loc, also_allowed=("name", "label"))
    return []


def _locate(problem: Problem, overlays: list[Overlay]) -> str:
    """Return the YAML path to blame, which is the grid value or variant entry that wrote it."""
    loc = tuple(str(part) for part in problem.loc)
    for overlay in overlays:
        size = len(overlay.tokens)
        if loc[:size] != overlay.tokens:
            continue
        if problem.about_key and size == len(loc):
            return overlay.key_location
        return extend_location(overlay.value_location, problem.loc[size:])
    return render_loc(problem.loc)


def _same_configuration(first: Condition, second: Condition) -> str:
    first_variant = first.factors.get(VARIANT_FACTOR)
    second_variant = second.factors.get(VARIANT_FACTOR)
    grid_values = {key: value for key, value in first.factors.items() if key != VARIANT_FACTOR}
    if first_variant != second_variant and grid_values == {
        key: value for key, value in second.factors.items() if key != VARIANT_FACTOR
    }:
        return (f"variants.{second_variant}: gives the same configuration as variant "
                f"{first_variant!r}; make the two differ or remove one")
    return (f"grid: conditions {first.label!r} and {second.label!r} have the same "
            "configuration; remove one of the values")


def _condition_note(labels: list[str], count: int) -> str:
    if len(labels) == count:
        return ""
    if len(labels) == 1:
        return f" (in condition {labels[0]})"
    return f" (in {len(labels)} of {count} conditions, first: {labels[0]})"


def check_statistics(protocol: Protocol) -> list[str]:
    statistics = protocol.statistics
    problems = []
    labels = [spec.key for spec in protocol.scorers]
    for index, score in enumerate(statistics.scores or []):
        if score not in labels:
            problems.append(
                f"statistics.scores[{index}]: {score!r} is not a scorer label of this protocol; "
                f"allowed: {', '.join(labels)}"
            )
    for index, measure in enumerate(statistics.measures):
        if not measure.startswith(MEASURE_PREFIXES) or measure in MEASURE_PREFIXES:
            problems.append(
                f"statistics.measures[{index}]: {measure!r} is not a trial measure; name a "
                "column of the exported trials table, such as training.test_loss"
            )
    allowed = analysis_factors(protocol)
    for index, factor in enumerate(statistics.factors or []):
        if factor not in allowed:
            problems.append(
                f"statistics.factors[{index}]: {factor!r} is not a grid path, `variant`, "
                f"`estimator` or `ground_truth`; allowed: {', '.join(allowed)}"
            )
    for index, pair in enumerate(statistics.two_way or []):
        for position, factor in enumerate(pair):
            if factor not in allowed:
                problems.append(
                    f"statistics.two_way[{index}][{position}]: {factor!r} is not a grid path, "
                    f"`variant`, `estimator` or `ground_truth`; allowed: {', '.join(allowed)}"
                )
        if pair[0] == pair[1]:
            problems.append(f"statistics.two_way[{index}]: names {pair[0]!r} twice; a two-way "
                            "ANOVA needs two different factors")
    scorer = statistics.trial_plots.scorer
    if scorer is not None and scorer not in labels:
        problems.append(
            f"statistics.trial_plots.scorer: {scorer!r} is not a scorer label of this protocol; "
            f"allowed: {', '.join(labels)}"
        )
    return problems


