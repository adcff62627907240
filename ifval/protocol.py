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
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ifval.errors import IfvalError, ProtocolError, UnknownPluginError
from ifval.plugins import Catalog, default_catalog

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


class Plateau(_Strict):
    """ReduceLROnPlateau on the full-batch training loss, with torch's semantics."""

    factor: float = Field(0.1, gt=0, lt=1, description="Multiplier applied to the learning rate.")
    patience: int = Field(100, ge=0, description="Epochs without improvement before a cut.")
    threshold: float = Field(
        1e-4, ge=0, description="Relative improvement that counts as better (mode 'rel')."
    )
    min_lr: float = Field(0.0, ge=0, description="Lower bound on the learning rate.")


class Training(_Strict):
    """How θ̂ is reached: full-batch Adam on (1/n) Σ ℓ_i + (w/2)‖θ‖²."""

    optimizer: Literal["adam"] = Field("adam", description="Optimizer; Adam is the one built in.")
    lr: float = Field(1e-3, gt=0, description="Initial learning rate.")
    epochs: int = Field(..., ge=1, description="Full-batch steps.")
    weight_decay: float = Field(
        0.0, ge=0, description="w in the objective; Adam's L2 `weight_decay`, on all parameters."
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's β₁ and β₂.")
    eps: float = Field(1e-8, gt=0, description="Adam's ε.")
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
    k: int | None = Field(40, ge=1, description="Number of points; ignored by `all`.")


class Statistics(_Strict):
    """What the report computes."""

    scores: list[str] | None = Field(
        None, description="Scorer labels to analyse; default all scorers of the protocol."
    )
    factors: list[str] | None = Field(
        None,
        description="Factors of the one-way ANOVAs: grid paths or `variant`. Default: every "
        "grid path, plus `variant` when there are several variants.",
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the intervals per cell.")


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
    repetitions: int = Field(..., ge=1, description="Trials per condition, each with its own seed.")
    seed: int = Field(0, ge=0, description="Base seed; repetition r uses a seed derived from it.")
    batch_size: int = Field(
        50, ge=1, description="Repetitions of one condition trained together as stacked models."
    )
    statistics: Statistics = Field(default_factory=Statistics, description="Report settings.")
    output: str | None = Field(None, description="Run directory; default `runs/<name>`.")
    executor: PluginSpec = Field(
        default_factory=lambda: PluginSpec(name="local"), description="Executor and settings."
    )

    @field_validator("scorers", "estimators", "ground_truths", "executor", "dataset", "model",
                     mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
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
    except OSError as exc:
        raise IfvalError(f"cannot read protocol file {path}: {exc.strerror}") from None
    return parse_protocol(text, source=str(path), catalog=catalog)


def parse_protocol(text: str, source: str | None = None, catalog: Catalog | None = None) -> Protocol:
    """Parse protocol YAML text and validate it, conditions included."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProtocolError([f"YAML syntax error{where}: {problem}"], source) from None
    if not isinstance(raw, dict):
        found = type(raw).__name__ if raw is not None else "an empty file"
        raise ProtocolError([f"expected a mapping of sections at the top level, found {found}"],
                            source)
    return validate_protocol(raw, source=source, catalog=catalog)


def validate_protocol(raw: dict[str, Any], source: str | None = None,
                      catalog: Catalog | None = None) -> Protocol:
    """Validate a protocol given as a dict; raises :class:`ProtocolError` listing every problem."""
    catalog = catalog or default_catalog()
    try:
        protocol = Protocol.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(_format_pydantic(exc, Protocol), source) from None

    problems = _check_overlay_paths(protocol, raw)
    if not problems:
        for condition in expand_conditions(protocol):
            problems.extend(_check_condition(condition, catalog))
            if problems:
                break
    problems.extend(_check_statistics(protocol))
    problems.extend(_check_plugin(catalog, "executor", "executor", protocol.executor))
    if problems:
        raise ProtocolError(_unique(problems), source)
    return protocol


def expand_conditions(protocol: Protocol) -> list[Condition]:
    """Every combination of grid values and variants, in protocol order."""
    base = protocol.model_dump(include=set(CONDITION_SECTIONS), exclude_none=False)
    base = {key: _plugin_lists_as_dicts(value) for key, value in base.items()}
    variants = protocol.variants or {DEFAULT_VARIANT: {}}
    grid_paths = list(protocol.grid)
    conditions = []
    for values in itertools.product(*(protocol.grid[path] for path in grid_paths)):
        for variant, overlay in variants.items():
            config = copy.deepcopy(base)
            for path, value in zip(grid_paths, values, strict=True):
                _set_path(config, path, value)
            for path, value in overlay.items():
                _set_path(config, path, value)
            factors: dict[str, Any] = dict(zip(grid_paths, values, strict=True))
            if protocol.variants:
                factors[VARIANT_FACTOR] = variant
            conditions.append(Condition(_condition_id(config), factors, config))
    return conditions


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


# ------------------------------------------------------------------------ internals


def _plugin_lists_as_dicts(value: Any) -> Any:
    if isinstance(value, list):
        return [_spec_dict(item) if isinstance(item, dict) else item for item in value]
    if isinstance(value, dict) and "name" in value:
        return _spec_dict(value)
    return value


def _spec_dict(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if not (key == "label" and value is None)}


def _condition_id(config: dict[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _set_path(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = config
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = copy.deepcopy(value)


def _check_overlay_paths(protocol: Protocol, raw: dict[str, Any]) -> list[str]:
    problems = []
    base = protocol.model_dump(include=set(CONDITION_SECTIONS))
    overlays = [(f"grid.{path}", path) for path in protocol.grid]
    for variant, overlay in protocol.variants.items():
        overlays.extend((f"variants.{variant}.{path}", path) for path in overlay)
        for path in overlay:
            if path in protocol.grid:
                problems.append(
                    f"variants.{variant}.{path}: this path is also swept by the grid; "
                    "a setting may be swept or overlaid, not both"
                )
    for where, path in overlays:
        problem = _path_problem(base, path)
        if problem:
            problems.append(f"{where}: {problem}")
    for path, values in protocol.grid.items():
        if not values:
            problems.append(f"grid.{path}: the list of values is empty; give at least one value")
    return problems


def _path_problem(config: dict[str, Any], path: str) -> str | None:
    tokens = path.split(".")
    if tokens[0] not in CONDITION_SECTIONS:
        allowed = ", ".join(CONDITION_SECTIONS)
        return f"invalid dotted path {path!r}: it must start with one of {allowed}"
    if len(tokens) < 2:
        return f"invalid dotted path {path!r}: name a setting inside the section, e.g. model.width"
    node: Any = config
    for depth, token in enumerate(tokens[:-1]):
        here = ".".join(tokens[: depth + 1])
        if isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                return f"invalid dotted path {path!r}: {here} needs an index below {len(node)}"
            node = node[int(token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            return f"invalid dotted path {path!r}: {here} does not exist in the protocol"
    if not isinstance(node, dict | list) or node is None:
        return f"invalid dotted path {path!r}: its parent is not a section"
    return None


def _check_condition(condition: Condition, catalog: Catalog) -> list[str]:
    where = f" (in condition {condition.label})" if condition.factors else ""
    config = condition.config
    problems = []
    for kind, section in (("dataset", "dataset"), ("model", "model")):
        problems.extend(_check_plugin(catalog, kind, section, config[section], where))
    for kind, section in (("estimator", "estimators"), ("ground_truth", "ground_truths"),
                          ("scorer", "scorers")):
        labels: dict[str, int] = {}
        for index, spec in enumerate(config[section]):
            path = f"{section}[{index}]"
            problems.extend(_check_plugin(catalog, kind, path, spec, where))
            label = spec.get("label") or spec.get("name")
            if label in labels:
                problems.append(
                    f"{path}: duplicate label {label!r} (also {section}[{labels[label]}]); "
                    "give one of them a distinct `label`"
                )
            labels[label] = index
    for section, schema in (("training", Training), ("points", Points)):
        try:
            schema.model_validate(config[section])
        except ValidationError as exc:
            problems.extend(f"{p}{where}" for p in _format_pydantic(exc, schema, section))
    return problems


def _check_plugin(catalog: Catalog, kind: str, path: str, spec: Any, where: str = "") -> list[str]:
    if isinstance(spec, PluginSpec):
        spec = spec.model_dump(exclude_none=True)
    name = spec.get("name")
    if not isinstance(name, str):
        return [f"{path}.name: expected a plugin name, found {name!r}{where}"]
    try:
        plugin = catalog.get(kind, name)
    except UnknownPluginError as exc:
        return [f"{path}.name: {exc}{where}"]
    settings = {key: value for key, value in spec.items() if key not in ("name", "label")}
    try:
        plugin.parse_params(settings)
    except ValidationError as exc:
        return [f"{p}{where}" for p in _format_pydantic(exc, plugin.Params, path)]
    return []


def _check_statistics(protocol: Protocol) -> list[str]:
    problems = []
    labels = [spec.key for spec in protocol.scorers]
    for index, score in enumerate(protocol.statistics.scores or []):
        if score not in labels:
            problems.append(
                f"statistics.scores[{index}]: {score!r} is not a scorer of this protocol; "
                f"scorers: {', '.join(labels)}"
            )
    allowed = list(protocol.grid) + ([VARIANT_FACTOR] if protocol.variants else [])
    for index, factor in enumerate(protocol.statistics.factors or []):
        if factor not in allowed:
            listed = ", ".join(allowed) if allowed else "none (the protocol has no grid or variants)"
            problems.append(
                f"statistics.factors[{index}]: {factor!r} is not a grid path or `variant`; "
                f"allowed: {listed}"
            )
    return problems


def _format_pydantic(exc: ValidationError, schema: type[BaseModel], prefix: str = "") -> list[str]:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        path = _join_path([prefix, *loc] if prefix else loc)
        if error["type"] == "extra_forbidden":
            allowed = _allowed_fields(schema, error["loc"][:-1])
            hint = f"; allowed fields: {', '.join(allowed)}" if allowed else ""
            problems.append(f"{path}: unknown field (found {error['input']!r}){hint}")
        elif error["type"] == "missing":
            problems.append(f"{path}: required field is missing")
        else:
            message = error["msg"][0].lower() + error["msg"][1:]
            problems.append(f"{path}: {message} (found {error['input']!r})")
    return problems


def _join_path(parts: list[str]) -> str:
    path = ""
    for part in parts:
        if part.isdigit():
            path += f"[{part}]"
        elif part:
            path += f".{part}" if path else part
    return path


def _allowed_fields(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(current.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))
