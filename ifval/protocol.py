"""Protocol schema, YAML loading, validation and expansion into conditions.

A protocol names one dataset, one model, the training recipe, the checked
points, the estimators, ground truths and scorers, and how often to repeat.
``grid`` sweeps settings by dotted path (``model.width: [8, 14]``) and
``variants`` are named overlays (``weight_decay: {training.weight_decay:
0.005}``); every combination of grid values and variants is one condition.

Every problem is reported with the YAML path of the field, the value found
and what is allowed, before anything is trained.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import re
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ifval.errors import IfvalError, ProtocolError, UnknownPluginError
from ifval.plugins import Catalog, default_catalog
from ifval.settings import Plateau, Real

VARIANT_FACTOR = "variant"
"""Factor name under which a condition's variant is recorded."""

DEFAULT_VARIANT = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginSpec(BaseModel):
    """A plugin by name plus its own settings, validated against the plugin's ``Params``."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Registered plugin name (see `ifval plugins`).")
    label: str | None = Field(
        default=None,
        description="Name under which results are stored; defaults to `name`. "
        "Needed when one plugin is listed twice with different settings.",
    )

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def key(self) -> str:
        return self.label or self.name


class Training(_Strict):
    """How θ̂ is reached: full-batch Adam on (1/n) Σ ℓ_i + (w/2)‖θ‖²."""

    optimizer: Literal["adam"] = Field("adam", description="Optimizer; Adam is the one built in.")
    lr: Real = Field(1e-3, gt=0, description="Initial learning rate.")
    epochs: int = Field(..., ge=1, strict=True, description="Full-batch steps.")
    weight_decay: Real = Field(
        0.0, ge=0, description="w in the objective; Adam's L2 `weight_decay`, on all parameters."
    )
    betas: tuple[Real, Real] = Field((0.9, 0.999), description="Adam's β₁ and β₂.")
    eps: Real = Field(1e-8, gt=0, description="Adam's ε.")
    plateau: Plateau | None = Field(None, description="ReduceLROnPlateau settings; null for none.")
    dtype: Literal["float64", "float32"] = Field(
        "float64",
        description="Floating-point type of training and retraining. float64 keeps the "
        "rounding error far below the loss changes being measured.",
    )


class Points(_Strict):
    """Which training points are checked in each trial."""

    strategy: Literal["top_loss", "random", "all"] = Field(
        "top_loss",
        description="`top_loss`: the k points with the largest training loss at θ̂; "
        "`random`: k points drawn with the trial's seed; `all`: every training point.",
    )
    k: int | None = Field(
        40, ge=1, strict=True, description="Number of points; ignored by `all`."
    )


class TrialPlots(_Strict):
    """Selection of the trials plotted with estimated and true changes against rank."""

    trials: list[str] = Field(
        default_factory=list,
        description="Trial ids to plot (the `trial_id` column of `ifval export`).",
    )
    worst: int = Field(
        3, ge=0, strict=True,
        description="Also plot this many worst-scoring (trial, estimator, ground truth) "
        "combinations; 0 for none.",
    )
    scorer: str | None = Field(
        None, description="Scorer label that ranks the worst trials; default the first "
        "analysed scorer.",
    )


class Statistics(_Strict):
    """What the report computes."""

    scores: list[str] | None = Field(
        None, description="Scorer labels to analyse; default all scorers of the protocol."
    )
    measures: list[str] = Field(
        default_factory=list,
        description="Per-trial measures analysed like scores, named as columns of the "
        "exported trials table: `training.test_loss`, `training.final_train_loss`, "
        "`training.train_accuracy`, or a `time.` column.",
    )
    factors: list[str] | None = Field(
        None,
        description="Factors of the ANOVAs: grid paths, `variant`, `estimator` or "
        "`ground_truth`. Default: every grid path, plus `variant` when there are several "
        "variants.",
    )
    two_way: list[tuple[str, str]] | None = Field(
        None,
        description="Factor pairs of two-way ANOVAs, each a grid path, `variant`, `estimator` "
        "or `ground_truth`. Default: every pair of `factors`; an empty list for none.",
    )
    post_hoc: Literal["auto", "tukey", "games_howell", "t_test", "none"] = Field(
        "auto",
        description="Pairwise tests between the levels of each factor: `auto` is Tukey's HSD, "
        "or Games-Howell when Levene's test rejects equal variances; `t_test` uses "
        "`p_adjust`.",
    )
    p_adjust: Literal["holm", "bonf", "sidak", "fdr_bh", "fdr_by", "none"] = Field(
        "holm", description="Multiple-comparison correction of the `t_test` post-hoc tests."
    )
    confidence: Real = Field(0.95, gt=0, lt=1, description="Level of the intervals per cell.")
    interval: Literal["t", "bootstrap"] = Field(
        "t", description="Interval of a cell mean: Student-t, or bootstrap BCa."
    )
    bootstrap_resamples: int = Field(
        9999, ge=100, strict=True, description="Resamples of each bootstrap interval."
    )
    alpha: Real = Field(
        0.05, gt=0, lt=1,
        description="Significance level of the verdicts, Levene's test and post-hoc tests.",
    )
    trial_plots: TrialPlots = Field(
        default_factory=TrialPlots,
        description="Trials plotted with estimated and true changes against rank.",
    )


class Protocol(_Strict):
    """A whole protocol file."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Name of the experiment.")
    description: str = Field("", description="Free text shown in reports.")
    dataset: PluginSpec = Field(..., description="Dataset plugin and its settings.")
    model: PluginSpec = Field(..., description="Model plugin and its settings.")
    training: Training = Field(..., description="Training recipe.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted path → list of values to sweep."
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Variant name → {dotted path: value} overlay."
    )
    points: Points = Field(default_factory=Points, description="Checked training points.")
    estimators: list[PluginSpec] = Field(..., min_length=1, description="Influence estimators.")
    ground_truths: list[PluginSpec] = Field(..., min_length=1, description="Ground truths.")
    scorers: list[PluginSpec] = Field(..., min_length=1, description="Scorers.")
    repetitions: int = Field(
        ..., ge=1, strict=True, description="Trials per condition, each with its own seed."
    )
    seed: int = Field(
        0, ge=0, strict=True, description="Base seed; repetition r uses a seed derived from it."
    )
    batch_size: int = Field(
        50, ge=1, strict=True,
        description="Repetitions of one condition trained together as stacked models.",
    )
    statistics: Statistics = Field(default_factory=Statistics, description="Report settings.")
    output: str | None = Field(None, description="Run directory; default `runs/<name>`.")
    executor: PluginSpec = Field(
        default_factory=lambda: PluginSpec(name="local"), description="Executor and settings."
    )

    @field_validator("executor", "dataset", "model", mode="before")
    @classmethod
    def _name_as_spec(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("scorers", "estimators", "ground_truths", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.name


# ----------------------------------------------------------------------- conditions

CONDITION_SECTIONS = ("dataset", "model", "training", "points", "estimators", "ground_truths",
                      "scorers")
"""Top-level sections a grid path or variant may change."""

PLUGIN_LIST_SECTIONS = (("estimator", "estimators"), ("ground_truth", "ground_truths"),
                        ("scorer", "scorers"))
"""(plugin kind, protocol section) of every section that lists plugins."""


@dataclass(frozen=True)
class Condition:
    """One cell of the design: a resolved configuration and its factor values."""

    id: str
    factors: dict[str, Any]
    config: dict[str, Any]

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.factors.items())


@dataclass(frozen=True)
class ResolvedCondition:
    """A condition's configuration with every plugin looked up and its settings parsed."""

    dataset: tuple[Any, BaseModel]
    model: tuple[Any, BaseModel]
    training: Training
    points: Points
    estimators: list[tuple[str, Any, BaseModel]]
    ground_truths: list[tuple[str, Any, BaseModel]]
    scorers: list[tuple[str, Any, BaseModel]]


def load_protocol(path: str | Path, catalog: Catalog | None = None) -> Protocol:
    """Read, parse and fully validate a protocol file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IfvalError(f"protocol file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError([_decode_problem(exc)], str(path)) from None
    except OSError as exc:
        raise IfvalError(f"cannot read protocol file {path}: {exc.strerror}") from None
    return parse_protocol(text, source=str(path), catalog=catalog)


def parse_protocol(text: str, source: str | None = None,
                   catalog: Catalog | None = None) -> Protocol:
    """Parse protocol YAML text and validate it, conditions included."""
    try:
        # _ProtocolLoader is a SafeLoader, so the YAML cannot build arbitrary Python objects.
        raw = yaml.load(text, Loader=_ProtocolLoader)
    except yaml.YAMLError as exc:
        raise ProtocolError([_yaml_problem(exc)], source) from None
    if not isinstance(raw, dict):
        found = "an empty file" if raw is None else f"a {type(raw).__name__}"
        problem = (f"top level: expected a mapping of sections such as name and dataset "
                   f"(found {found})")
        raise ProtocolError([problem], source)
    return validate_protocol(raw, source=source, catalog=catalog)


def validate_protocol(raw: dict[str, Any], source: str | None = None,
                      catalog: Catalog | None = None) -> Protocol:
    """Validate a protocol given as a dict; raises :class:`ProtocolError` listing every problem."""
    catalog = catalog or default_catalog()
    try:
        protocol = Protocol.model_validate(raw)
    except ValidationError as exc:
        problems = [_render(problem) for problem in _pydantic_problems(exc, Protocol)]
        raise ProtocolError(_unique(problems), source) from None

    problems = _check_overlays(protocol)
    if not problems:
        problems.extend(_check_conditions(protocol, catalog))
    executor = protocol.executor.model_dump(exclude_none=True)
    problems.extend(_render(p) for p in _check_plugin(catalog, "executor", ("executor",), executor))
    problems.extend(_check_statistics(protocol))
    if problems:
        raise ProtocolError(_unique(problems), source)
    return protocol


def expand_conditions(protocol: Protocol) -> list[Condition]:
    """Every combination of grid values and variants, in protocol order."""
    return [condition for condition, _ in _iter_conditions(protocol)]


def resolve_condition(config: dict[str, Any], catalog: Catalog | None = None) -> ResolvedCondition:
    """Look up the plugins of a condition's configuration and parse their settings."""
    catalog = catalog or default_catalog()

    def plugin(kind: str, spec: dict[str, Any]) -> tuple[Any, BaseModel]:
        settings = {k: v for k, v in spec.items() if k not in ("name", "label")}
        found = catalog.get(kind, spec["name"])
        return found, found.parse_params(settings)

    def listed(kind: str, specs: list[dict[str, Any]]) -> list[tuple[str, Any, BaseModel]]:
        return [(spec.get("label") or spec["name"], *plugin(kind, spec)) for spec in specs]

    return ResolvedCondition(
        dataset=plugin("dataset", config["dataset"]),
        model=plugin("model", config["model"]),
        training=Training.model_validate(config["training"]),
        points=Points.model_validate(config["points"]),
        estimators=listed("estimator", config["estimators"]),
        ground_truths=listed("ground_truth", config["ground_truths"]),
        scorers=listed("scorer", config["scorers"]),
    )


def factor_names(protocol: Protocol) -> list[str]:
    """The ANOVA factors of the report, defaulted from the grid and variants."""
    if protocol.statistics.factors is not None:
        return list(protocol.statistics.factors)
    names = list(protocol.grid)
    if len(protocol.variants) > 1:
        names.append(VARIANT_FACTOR)
    return names


# ---------------------------------------------------------------------- YAML input


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one YAML mapping."""


class _ProtocolLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error.

    PyYAML silently keeps the last of two equal keys, which would let a second
    ``model:`` section replace the first. Keys brought in by a
    ``<<`` merge may still be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self._reject_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _reject_duplicate_keys(self, node: yaml.MappingNode) -> None:
        first_marks: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = first_marks.setdefault(key, key_node.start_mark)
            except TypeError:  # PyYAML reports an unhashable key itself.
                continue
            if first is not key_node.start_mark:
                problem = (f"duplicate key {key!r} (first at line {first.line + 1}); "
                           "keep one of them")
                raise _DuplicateKeyError(None, None, problem, key_node.start_mark)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"YAML syntax error{where}: {problem}"


def _decode_problem(exc: UnicodeDecodeError) -> str:
    line = exc.object.count(b"\n", 0, exc.start) + 1
    byte = exc.object[exc.start]
    return f"the file is not UTF-8 text (byte 0x{byte:02x} on line {line}); save it as UTF-8"


# ---------------------------------------------------------------- condition building


@dataclass(frozen=True)
class _Overlay:
    """A value that the grid or a variant writes into one condition's configuration."""

    tokens: tuple[str, ...]
    value_location: str
    key_location: str


def _iter_conditions(protocol: Protocol) -> Iterator[tuple[Condition, list[_Overlay]]]:
    """Yield every condition with the overlays that built it, in protocol order."""
    base = protocol.model_dump(include=set(CONDITION_SECTIONS), exclude_none=False)
    base = {key: _plugin_lists_as_dicts(value) for key, value in base.items()}
    variants = protocol.variants or {DEFAULT_VARIANT: {}}
    grid_paths = list(protocol.grid)
    index_ranges = [range(len(protocol.grid[path])) for path in grid_paths]

    for indices in itertools.product(*index_ranges):
        values = [protocol.grid[path][index] for path, index in zip(grid_paths, indices,
                                                                    strict=True)]
        for variant, variant_overlay in variants.items():
            config = copy.deepcopy(base)
            overlays = []
            for path, index, value in zip(grid_paths, indices, values, strict=True):
                _set_path(config, path, value)
                tokens = tuple(path.split("."))
                overlays.append(_Overlay(tokens, f"grid.{path}[{index}]", f"grid.{path}"))
            for path, value in variant_overlay.items():
                _set_path(config, path, value)
                location = f"variants.{variant}.{path}"
                overlays.append(_Overlay(tuple(path.split(".")), location, location))
            _names_as_plugin_specs(config)

            factors: dict[str, Any] = dict(zip(grid_paths, values, strict=True))
            if protocol.variants:
                factors[VARIANT_FACTOR] = variant
            yield Condition(_condition_id(config), factors, config), overlays


def _plugin_lists_as_dicts(value: Any) -> Any:
    if isinstance(value, list):
        return [_spec_dict(item) if isinstance(item, dict) else item for item in value]
    if isinstance(value, dict) and "name" in value:
        return _spec_dict(value)
    return value


def _spec_dict(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if not (key == "label" and value is None)}


def _names_as_plugin_specs(config: dict[str, Any]) -> None:
    """Turn plugin names that a grid or variant wrote into ``{"name": ...}`` specs, in place."""
    for section in ("dataset", "model"):
        if isinstance(config[section], str):
            config[section] = {"name": config[section]}
    for _, section in PLUGIN_LIST_SECTIONS:
        config[section] = [{"name": item} if isinstance(item, str) else item
                           for item in config[section]]


def _condition_id(config: dict[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at a dotted path that :func:`_path_problem` accepted."""
    *parents, last = path.split(".")
    node: Any = config
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    if isinstance(node, list):
        node[int(last)] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)


# ------------------------------------------------------------ grid and variant paths


def _check_overlays(protocol: Protocol) -> list[str]:
    """Check every grid and variant path and the grid's lists of values."""
    base = protocol.model_dump(include=set(CONDITION_SECTIONS))
    base = {key: _plugin_lists_as_dicts(value) for key, value in base.items()}
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
                f"{allowed}{_did_you_mean(section, CONDITION_SECTIONS)}")
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
            return (f"{invalid}: {parent} is a single value (found {_show(node)}), "
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
            problems.append(f"{location}[{index}]: duplicate value (found {_show(value)}, also "
                            f"at index {first}); list each value once")
    return problems


# ---------------------------------------------------------------- condition checks


@dataclass(frozen=True)
class _Problem:
    """One problem found by pydantic or a check, located in a configuration.

    ``loc`` is the path inside the configuration that was checked. ``about_key``
    marks a problem with a field's name (an unknown field), not with its value.
    """

    loc: tuple[str | int, ...]
    text: str
    about_key: bool = False


def _check_conditions(protocol: Protocol, catalog: Catalog) -> list[str]:
    """Check every condition and report each problem once, at the YAML path that caused it."""
    labels_by_problem: dict[str, list[str]] = {}
    first_by_id: dict[str, Condition] = {}
    count = 0
    for condition, overlays in _iter_conditions(protocol):
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


def _check_condition(config: dict[str, Any], catalog: Catalog) -> list[_Problem]:
    problems = []
    for section in ("dataset", "model"):
        problems.extend(_check_plugin(catalog, section, (section,), config[section]))
    for kind, section in PLUGIN_LIST_SECTIONS:
        first_index: dict[str, int] = {}
        for index, spec in enumerate(config[section]):
            problems.extend(_check_plugin(catalog, kind, (section, index), spec))
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
                problems.append(_Problem((section, index, field), text))
    for section, schema in (("training", Training), ("points", Points)):
        try:
            schema.model_validate(config[section])
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, schema, (section,)))
    return problems


def _check_plugin(catalog: Catalog, kind: str, loc: tuple[str | int, ...],
                  spec: Any) -> list[_Problem]:
    """Check a plugin's name and its settings against the plugin's ``Params``."""
    if not isinstance(spec, dict):
        return [_Problem(loc, f"expected {_PLUGIN_SPEC} (found {_show(spec)})")]
    try:
        PluginSpec.model_validate(spec)
    except ValidationError as exc:
        return _pydantic_problems(exc, PluginSpec, loc)
    try:
        plugin = catalog.get(kind, spec["name"])
    except UnknownPluginError as exc:
        return [_Problem((*loc, "name"), str(exc))]
    settings = {key: value for key, value in spec.items() if key not in ("name", "label")}
    try:
        plugin.parse_params(settings)
    except ValidationError as exc:
        return _pydantic_problems(exc, plugin.Params, loc, also_allowed=("name", "label"))
    return []


def _locate(problem: _Problem, overlays: list[_Overlay]) -> str:
    """Return the YAML path to blame, which is the grid value or variant entry that wrote it."""
    loc = tuple(str(part) for part in problem.loc)
    for overlay in overlays:
        size = len(overlay.tokens)
        if loc[:size] != overlay.tokens:
            continue
        if problem.about_key and size == len(loc):
            return overlay.key_location
        return _extend_location(overlay.value_location, problem.loc[size:])
    return _render_loc(problem.loc)


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


def _check_statistics(protocol: Protocol) -> list[str]:
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


MEASURE_PREFIXES = ("training.", "time.")
"""Column prefixes of the per-trial measures that ``statistics.measures`` may name."""


def analysis_factors(protocol: Protocol) -> list[str]:
    """Return every name ``statistics.factors`` and ``statistics.two_way`` may use."""
    names = list(protocol.grid) + ([VARIANT_FACTOR] if protocol.variants else [])
    return [*names, "estimator", "ground_truth"]


# ---------------------------------------------------------- pydantic error messages

_PLUGIN_SPEC = "a plugin name or a mapping with `name` and the plugin's settings"
_TRAILING_REASON = re.compile(r", (unable to|got) .*$")


def _pydantic_problems(exc: ValidationError, schema: type[BaseModel],
                       prefix: tuple[str | int, ...] = (),
                       also_allowed: tuple[str, ...] = ()) -> list[_Problem]:
    """Turn pydantic's errors into problems that show the found value and what is allowed.

    The errors of one union field (one per member type) become one problem.
    """
    grouped: dict[tuple[str | int, ...], list[Any]] = {}
    for error in exc.errors():
        grouped.setdefault(_clean_loc(schema, error["loc"]), []).append(error)

    problems = []
    for loc, errors in grouped.items():
        if len(errors) > 1:
            problems.append(_Problem((*prefix, *loc), _union_text(errors)))
        else:
            problems.append(_error_problem(errors[0], schema, loc, prefix, also_allowed))
    return problems


def _error_problem(error: Any, schema: type[BaseModel], loc: tuple[str | int, ...],
                   prefix: tuple[str | int, ...], also_allowed: tuple[str, ...]) -> _Problem:
    kind = error["type"]
    found = _show(error["input"])
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = [*also_allowed, *_allowed_fields(schema, loc[:-1])]
        text = f"unknown field (found {key!r}); allowed fields: {', '.join(allowed)}"
        return _Problem((*prefix, *loc), text + _did_you_mean(key, allowed), about_key=True)
    if kind == "missing":
        text = "missing item; the list is too short" if isinstance(loc[-1], int) else (
            "required field is missing")
        return _Problem((*prefix, *loc), text)
    if kind == "invalid_key" or (loc and loc[-1] == "[key]"):
        parent = loc[:-2] if loc[-1] == "[key]" else loc[:-1]
        key = loc[-2] if loc[-1] == "[key]" else loc[-1]
        return _Problem((*prefix, *parent), f"keys must be strings (found {key!r})")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        expected = _PLUGIN_SPEC if error.get("ctx", {}).get("class_name") == "PluginSpec" else (
            "a mapping")
        return _Problem((*prefix, *loc), f"expected {expected} (found {found})")
    message = error["msg"][0].lower() + error["msg"][1:]
    text = f"{message} (found {found})"
    if kind == "int_type" and isinstance(error["input"], str) and error["input"].isdigit():
        text += "; a number in quotes is a string, so remove the quotes"
    return _Problem((*prefix, *loc), text)


def _union_text(errors: list[Any]) -> str:
    expected = []
    for error in errors:
        message = _TRAILING_REASON.sub("", error["msg"])
        expected.append(message.removeprefix("Input should be "))
    return f"input should be {' or '.join(expected)} (found {_show(errors[0]['input'])})"


def _clean_loc(schema: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """Drop the member-type tags pydantic inserts into the location of a union field."""
    clean: list[str | int] = []
    annotation: Any = schema
    for part in loc:
        annotation = _unwrap(annotation)
        if _is_union(annotation):
            annotation = _union_member(annotation, part)
            continue
        clean.append(part)
        annotation = _child_annotation(annotation, part)
    return tuple(clean)


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and a ``| None`` around a single type."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if _is_union(annotation, count_none=True):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _is_union(annotation: Any, count_none: bool = False) -> bool:
    if get_origin(annotation) not in (Union, types.UnionType):
        return False
    members = [arg for arg in get_args(annotation) if count_none or arg is not type(None)]
    return len(members) > 1


def _union_member(annotation: Any, tag: Any) -> Any:
    for member in get_args(annotation):
        if isinstance(member, type) and member.__name__ == tag:
            return member
    return None


def _child_annotation(annotation: Any, part: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[part] if isinstance(part, int) and part < len(args) else None
    return None


def _allowed_fields(schema: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    annotation: Any = schema
    for part in loc:
        annotation = _child_annotation(_unwrap(annotation), part)
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


# ------------------------------------------------------------------- rendering


def _render(problem: _Problem) -> str:
    return f"{_render_loc(problem.loc)}: {problem.text}"


def _render_loc(loc: tuple[str | int, ...]) -> str:
    return _extend_location("", loc) or "top level"


def _extend_location(location: str, parts: tuple[str | int, ...]) -> str:
    """Append location parts: ``[i]`` for a list index, ``.name`` for a field."""
    for part in parts:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            location += f".{part}" if location else str(part)
    return location


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f". Did you mean {close[0]!r}?" if close else ""


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))
