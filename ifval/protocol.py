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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ifval.errors import IfvalError, ProtocolError
from ifval.plugins import Catalog, default_catalog
from ifval.settings import SWA, Plateau, Real
from ifval.spectrum import SpectrumSettings

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
    """Training recipe that reaches θ̂: full-batch Adam on (1/n) Σ ℓ_i + (w/2)‖θ‖²."""

    optimizer: Literal["adam"] = Field("adam", description="Optimizer; Adam is the one built in.")
    lr: Real = Field(1e-3, gt=0, description="Initial learning rate.")
    epochs: int = Field(..., ge=1, strict=True, description="Full-batch steps.")
    weight_decay: Real = Field(
        0.0, ge=0, description="w in the objective; Adam's L2 `weight_decay`, on all parameters."
    )
    betas: tuple[Real, Real] = Field((0.9, 0.999), description="Adam's β₁ and β₂.")
    eps: Real = Field(1e-8, gt=0, description="Adam's ε.")
    plateau: Plateau | None = Field(None, description="ReduceLROnPlateau settings; null for none.")
    swa: SWA | None = Field(
        None,
        description="Stochastic weight averaging; θ̂ is the average. The plateau schedule "
        "stops when averaging starts. Null for none.",
    )
    dtype: Literal["float64", "float32"] = Field(
        "float64",
        description="Floating-point type of training and retraining. float64 keeps the "
        "rounding error far below the loss changes being measured.",
    )


class Groups(_Strict):
    """Groups of training points removed together, in place of single points."""

    size: int | float = Field(
        ...,
        description="Points per group: an integer count (at least 2), or a fraction of the "
        "training set between 0 and 1, rounded to the nearest count.",
    )
    kind: Literal["random", "same_class", "most_influential"] = Field(
        "random",
        description="`random`: distinct points drawn with the trial's seed; `same_class`: "
        "distinct points of one class, the classes taken in turn; `most_influential`: the "
        "training points ranked by the absolute estimate of the first estimator, group j "
        "holding ranks j·m to (j + 1)·m − 1, so group 0 is the top m.",
    )

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: int | float) -> int | float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, int) and value < 2:
            raise ValueError(f"a group needs at least 2 points, got {value}; use single points "
                             "by leaving `groups` out")
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(f"a fraction must lie between 0 and 1, got {value}")
        return value

    def members(self, n: int) -> int:
        """Return the number of points per group for a training set of ``n`` points."""
        if isinstance(self.size, int):
            return self.size
        return max(2, round(self.size * n))


class Points(_Strict):
    """Selection of the training points checked in each trial."""

    strategy: Literal["top_loss", "random", "all"] = Field(
        "top_loss",
        description="`top_loss`: the k points with the largest training loss at θ̂; "
        "`random`: k points drawn with the trial's seed; `all`: every training point.",
    )
    k: int | None = Field(
        40, ge=1, strict=True,
        description="Number of points, or of groups with `groups`; ignored by `all`.",
    )
    groups: Groups | None = Field(
        None,
        description="Remove groups of points instead of single points: `k` groups per "
        "trial, chosen as set here (`strategy` is then not used). Every estimator and "
        "ground truth of the protocol must support groups.",
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
    """Settings of the statistics the report computes."""

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
    exclude_basin_jumps: bool = Field(
        False,
        description="Leave out the scores of a trial against a ground truth when one of its "
        "retrains left its basin (diagnostic `basin_jump`). Counts are reported either way.",
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
    hessian: SpectrumSettings | None = Field(
        None,
        description="Record the top Hessian eigenvalue of each trained model's training loss "
        "(pyhessian's power iteration) and optionally its trace; null skips it.",
    )
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
                      "scorers", "hessian")
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
    hessian: SpectrumSettings | None
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
    from ifval.protocol_checks import (
        check_conditions,
        check_overlays,
        check_plugin,
        check_statistics,
    )
    from ifval.protocol_messages import pydantic_problems, render, unique

    catalog = catalog or default_catalog()
    try:
        protocol = Protocol.model_validate(raw)
    except ValidationError as exc:
        problems = [render(problem) for problem in pydantic_problems(exc, Protocol)]
        raise ProtocolError(unique(problems), source) from None

    problems = check_overlays(protocol)
    if not problems:
        problems.extend(check_conditions(protocol, catalog))
    executor = protocol.executor.model_dump(exclude_none=True)
    problems.extend(render(p) for p in check_plugin(catalog, "executor", ("executor",), executor))
    problems.extend(check_statistics(protocol))
    if problems:
        raise ProtocolError(unique(problems), source)
    return protocol


def expand_conditions(protocol: Protocol) -> list[Condition]:
    """Expand every combination of grid values and variants, in protocol order."""
    return [condition for condition, _ in iter_conditions(protocol)]


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
        hessian=(SpectrumSettings.model_validate(config["hessian"])
                 if config.get("hessian") is not None else None),
        estimators=listed("estimator", config["estimators"]),
        ground_truths=listed("ground_truth", config["ground_truths"]),
        scorers=listed("scorer", config["scorers"]),
    )


def factor_names(protocol: Protocol) -> list[str]:
    """Return the ANOVA factors of the report, defaulted from the grid and variants."""
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
class Overlay:
    """A value that the grid or a variant writes into one condition's configuration."""

    tokens: tuple[str, ...]
    value_location: str
    key_location: str


def iter_conditions(protocol: Protocol) -> Iterator[tuple[Condition, list[Overlay]]]:
    """Yield every condition with the overlays that built it, in protocol order."""
    base = protocol.model_dump(include=set(CONDITION_SECTIONS), exclude_none=False)
    base = {key: plugin_lists_as_dicts(value) for key, value in base.items()}
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
                overlays.append(Overlay(tokens, f"grid.{path}[{index}]", f"grid.{path}"))
            for path, value in variant_overlay.items():
                _set_path(config, path, value)
                location = f"variants.{variant}.{path}"
                overlays.append(Overlay(tuple(path.split(".")), location, location))
            _names_as_plugin_specs(config)

            factors: dict[str, Any] = dict(zip(grid_paths, values, strict=True))
            if protocol.variants:
                factors[VARIANT_FACTOR] = variant
            yield Condition(_condition_id(config), factors, config), overlays


def plugin_lists_as_dicts(value: Any) -> Any:
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


MEASURE_PREFIXES = ("training.", "time.")
"""Column prefixes of the per-trial measures that ``statistics.measures`` may name."""


def analysis_factors(protocol: Protocol) -> list[str]:
    """Return every name ``statistics.factors`` and ``statistics.two_way`` may use."""
    names = list(protocol.grid) + ([VARIANT_FACTOR] if protocol.variants else [])
    return [*names, "estimator", "ground_truth"]
