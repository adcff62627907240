"""Regenerate the generated blocks of the Markdown files in docs/.

A generated block sits between two marker lines::

    <!-- BEGIN GENERATED name -->
    <!-- END GENERATED name -->

and everything outside the markers is hand-written. The blocks come from the
code itself: the protocol's pydantic models and every built-in plugin's
``Params`` (docs/protocol.md), the ``--help`` output of every ``ifval``
command (docs/cli.md), and the plugin base classes in ifval/kinds.py and the
example plugin's files (docs/plugins.md).

    python scripts/gen_docs.py          # rewrite the blocks in place
    python scripts/gen_docs.py --check  # exit 1 when a file is out of date

tests/test_docs.py fails when a file differs from what this script writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ifval import kinds
from ifval.cli import cli
from ifval.hookspecs import HOOKS_BY_KIND
from ifval.kinds import KINDS, PluginBase, Scorer
from ifval.plugins import BUILTIN_MODULES, default_catalog
from ifval.protocol import PluginSpec, Protocol
from ifval.store import RESULT_INDEPENDENT_FIELDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE_PLUGIN = ROOT / "plugins" / "ifval-example-scorer"
EXAMPLE_MODULE = EXAMPLE_PLUGIN / "src" / "ifval_example_scorer" / "scaled_r2.py"

REGENERATE_COMMAND = "bash scripts/in-venv python scripts/gen_docs.py"
"""The command that rewrites every generated block, named in staleness messages."""

HELP_WIDTH = 80
"""Terminal width given to click, so the help text does not depend on the terminal."""

BEGIN = re.compile(r"^<!-- BEGIN GENERATED (?P<name>[a-z0-9-]+) -->$", re.MULTILINE)
END = "<!-- END GENERATED {name} -->"


class DocsError(Exception):
    """A docs file or a documented model that the generator cannot handle."""


# ------------------------------------------------- protocol models and anchors


def anchor(heading: str) -> str:
    """Return the fragment that GitHub gives a Markdown heading.

    GitHub lowercases the text, drops every character that is not a letter,
    digit, space, hyphen or underscore, and turns spaces into hyphens.
    """
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """Return the pydantic models that a field's type contains, e.g. ``Plateau | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found.extend(model for model in models_in(arg) if model not in found)
    return found


def nested_models(model: type[BaseModel], path: str = "") -> list[tuple[type[BaseModel], str]]:
    """Return every model nested in ``model``'s fields, depth first, with its dotted path.

    A model reached twice, such as the plugin entry of several sections, is
    listed once, at its first path.
    """
    found: list[tuple[type[BaseModel], str]] = []

    def visit(current: type[BaseModel], prefix: str) -> None:
        for name, field in current.model_fields.items():
            for nested in models_in(field.annotation):
                if nested is model or any(nested is seen for seen, _ in found):
                    continue
                dotted = f"{prefix}.{name}" if prefix else name
                found.append((nested, dotted))
                visit(nested, dotted)

    visit(model, path)
    return found


@functools.cache
def protocol_sections() -> tuple[tuple[type[BaseModel], str, int], ...]:
    """Return (model, heading, heading level) of every protocol table, in document order.

    Plugin entries share one table. Every other nested model is headed by
    its dotted path, one level deeper than the section that contains it.
    """
    sections = [(Protocol, "Top-level fields", 2), (PluginSpec, "Plugin entries", 2)]
    for model, path in nested_models(Protocol):
        if model is not PluginSpec:
            sections.append((model, f"`{path}`", min(2 + path.count("."), 4)))
    return tuple(sections)


def section_anchor(model: type[BaseModel]) -> str | None:
    """Return the anchor of ``model``'s table on the protocol page, or None without one."""
    for section_model, heading, _ in protocol_sections():
        if section_model is model:
            return anchor(heading)
    return None


# ----------------------------------------------------------- field rendering


def describe_type(annotation: Any, plural: bool = False) -> str:
    """Return a reader's name for a field's type, e.g. ``integer or `max_loo_loss```.

    A protocol model's name links to its table. ``plural`` gives the form
    that follows "list of".
    """
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "values" if plural else "any value"
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if annotation in simple:
        return simple[annotation] + ("s" if plural else "")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation is PluginSpec:
            text = "plugin entries" if plural else "plugin entry"
        else:
            text = "mappings" if plural else "mapping"
        target = section_anchor(annotation)
        return f"[{text}](#{target})" if target else text

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        bounds = describe_bounds(annotation.__metadata__)
        name = describe_type(args[0], plural)
        return f"{name} {bounds}" if bounds else name
    if origin is typing.Literal:
        return " or ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg, plural) for arg in args)

    container = "lists" if plural else "list"
    if origin is list:
        return f"{container} of {describe_type(args[0], plural=True)}" if args else container
    if origin is tuple and len(set(args)) == 1:
        return f"{container} of {len(args)} {describe_type(args[0], plural=True)}"
    if origin is tuple:
        return f"{container} of " + ", ".join(describe_type(arg) for arg in args)
    if origin is dict:
        key, value = args
        mapping = "mappings" if plural else "mapping"
        return f"{mapping} of {describe_type(key)} to {describe_type(value)}"
    msg = f"no documentation name for the type {annotation!r}; add one to describe_type"
    raise DocsError(msg)


def describe_bounds(metadata_items: Iterable[Any]) -> str:
    """Return the bounds in pydantic or annotated-types metadata as text, e.g. ``> 0 and < 1``.

    Returns an empty string when there are none. Other metadata, such as
    validators, is skipped.
    """
    parts = []
    for metadata in metadata_items:
        for attribute, template in (("gt", "> {}"), ("ge", "≥ {}"), ("lt", "< {}"),
                                    ("le", "≤ {}"), ("pattern", "matching `{}`")):
            value = getattr(metadata, attribute, None)
            if value is not None:
                parts.append(template.format(value))
        for attribute, word in (("min_length", "at least"), ("max_length", "at most")):
            count = getattr(metadata, attribute, None)
            if count is not None:
                parts.append(f"{word} {count} item{'' if count == 1 else 's'}")
    return " and ".join(parts)


def describe_default(field: FieldInfo) -> str:
    """Return the field's default as it would be written in YAML, or ``required``."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, PluginSpec):
        return f"`{value.name}`"
    if isinstance(value, BaseModel):
        return "all defaults"
    return f"`{yaml_text(value)}`"


def yaml_text(value: Any) -> str:
    """Return ``value`` written the way a protocol file writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "-inf" if value < 0 else "inf"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {yaml_text(item)}" for key, item in value.items()) + "}"
    if value == "":
        return '""'
    return str(value)


def number_text(value: float) -> str:
    """Return a number the short way: ``-1`` for -1.0, ``-inf`` for minus infinity."""
    return f"{value:g}"


def field_table(model: type[BaseModel], owner: str) -> str:
    """Return a Markdown table of ``model``'s fields. ``owner`` names the model in errors."""
    missing = [name for name, field in model.model_fields.items() if not field.description]
    if missing:
        listed = ", ".join(missing)
        msg = (
            f"{owner}: fields without a description: {listed}; give each "
            "Field(description=...) so the docs can explain it"
        )
        raise DocsError(msg)

    rows = ["| Field | Type | Default | Meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = describe_type(field.annotation)
        bounds = describe_bounds(field.metadata)
        if bounds:
            kind = f"{kind}, {bounds}"
        cells = [f"`{name}`", kind, describe_default(field), field.description or ""]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def _summary(thing: Any) -> str:
    """Return the first paragraph of ``thing``'s docstring on one line, or "" without one."""
    doc = inspect.getdoc(thing) or ""
    return " ".join(doc.split("\n\n")[0].split())


# ------------------------------------------------------------------ protocol


def render_sections() -> str:
    """Render one heading, summary line and field table per protocol model."""
    parts = []
    for model, heading, level in protocol_sections():
        summary = _summary(model)
        table = field_table(model, f"{model.__module__}.{model.__qualname__}")
        parts.append(f"{'#' * level} {heading}\n\n{summary}\n\n{table}")
    return "\n\n".join(parts)


def builtin_plugins() -> Iterator[tuple[str, PluginBase]]:
    """Yield (kind, plugin) for every plugin that a built-in module provides.

    Plugins of other installed packages are left out, so the docs do not
    depend on what else is installed. A built-in module that is missing, for
    example because ``IFVAL_DISABLE_PLUGINS`` names it, is an error.
    """
    builtin_modules = set(BUILTIN_MODULES.values())
    seen = set()
    for kind, entry in default_catalog().entries():
        if entry.module in builtin_modules:
            seen.add(entry.module)
            yield kind, entry.plugin
    absent = sorted(builtin_modules - seen)
    if absent:
        msg = (
            f"built-in plugin modules not loaded: {', '.join(absent)}; unset "
            "IFVAL_DISABLE_PLUGINS before generating the docs"
        )
        raise DocsError(msg)


def render_plugins() -> str:
    """Render the settings of every built-in plugin, grouped by kind."""
    by_kind: dict[str, list[PluginBase]] = {kind: [] for kind in KINDS}
    for kind, plugin in builtin_plugins():
        by_kind[kind].append(plugin)

    parts = []
    for kind, plugins in by_kind.items():
        if not plugins:
            continue
        title = kind.replace("_", " ")
        parts.append(f"### {title.capitalize()} plugins")
        for plugin in plugins:
            parts.append(render_plugin(title, plugin))
    return "\n\n".join(parts)


def render_plugin(title: str, plugin: PluginBase) -> str:
    """Render one plugin's heading, description, scorer metadata and settings table."""
    lines = [f"#### {title.capitalize()} `{plugin.name}`", "", plugin.description]
    if isinstance(plugin, Scorer):
        low, high = (number_text(bound) for bound in plugin.value_range)
        direction = "higher" if plugin.higher_is_better else "lower"
        invariant = "yes" if plugin.scale_invariant else "no"
        lines += ["", f"{direction.capitalize()} is better; values lie in [{low}, {high}]; "
                  f"unchanged when the estimate is multiplied by a positive number: {invariant}."]
    lines.append("")
    if not plugin.Params.model_fields:
        lines.append("No settings.")
        return "\n".join(lines)

    module = type(plugin).__module__
    lines.append(field_table(plugin.Params, f"{module}.{plugin.Params.__qualname__}"))
    for model, path in nested_models(plugin.Params):
        if section_anchor(model):
            continue  # its type already links to the protocol table of the same model
        lines += ["", f"Settings under `{path}`: {_summary(model)}", ""]
        lines.append(field_table(model, f"{module}.{model.__qualname__}"))
    return "\n".join(lines)


def render_builtin_modules() -> str:
    """Render a table of the built-in plugin modules: entry-point name, module, plugins."""
    provided: dict[str, list[str]] = {module: [] for module in BUILTIN_MODULES.values()}
    for kind, entry in default_catalog().entries():
        if entry.module in provided:
            provided[entry.module].append(f"{kind.replace('_', ' ')} `{entry.plugin.name}`")
    rows = ["| Entry-point name | Module | Plugins |", "|---|---|---|"]
    for name, module in BUILTIN_MODULES.items():
        rows.append(f"| `{name}` | `{module}` | {', '.join(provided[module])} |")
    return "\n".join(rows)


def render_result_independent_fields() -> str:
    """List the protocol fields that may change between runs into one directory."""
    return "\n".join(f"- `{name}`" for name in RESULT_INDEPENDENT_FIELDS)


# ----------------------------------------------------------------------- CLI


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Yield the argument path of ``group`` and of every command below it, in help order."""
    yield prefix
    context = click.Context(group, info_name="ifval")
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        elif command is not None:
            yield (*prefix, name)


def help_text(path: tuple[str, ...]) -> str:
    """Return the ``--help`` output of ``ifval`` followed by ``path``."""
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="ifval",
                                terminal_width=HELP_WIDTH)
    if result.exit_code != 0:
        command = " ".join(["ifval", *path, "--help"])
        raise DocsError(f"`{command}` exited with {result.exit_code}: {result.output}")
    return result.output.rstrip()


def render_cli() -> str:
    """Render one heading and help text per command."""
    parts = []
    for path in command_paths(cli):
        command = " ".join(["ifval", *path])
        parts.append(f"## `{command}`\n\n```text\n{help_text(path)}\n```")
    return "\n\n".join(parts)


# --------------------------------------------------------------------- kinds


def signature_text(function: Callable[..., Any]) -> str:
    """Return ``function``'s signature with its annotations as written in the source."""
    signature = inspect.signature(function)
    parameters = []
    for parameter in signature.parameters.values():
        text = parameter.name
        if parameter.annotation is not inspect.Parameter.empty:
            text += f": {_annotation_text(parameter.annotation)}"
        if parameter.default is not inspect.Parameter.empty:
            text += f" = {parameter.default!r}"
        parameters.append(text)
    result = f"{function.__name__}({', '.join(parameters)})"
    if signature.return_annotation is not inspect.Signature.empty:
        result += f" -> {_annotation_text(signature.return_annotation)}"
    return result


def _annotation_text(annotation: Any) -> str:
    # Under `from __future__ import annotations` an annotation is its source text.
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def render_kind(kind: str, base: type[PluginBase]) -> str:
    """Render a kind's base class: its summary, extra class attributes and methods."""
    lines = [f"### `ifval.kinds.{base.__name__}`", "", _summary(base), ""]
    lines.append(f"Returned by `{HOOKS_BY_KIND[kind]}`.")

    attributes = [name for name in inspect.get_annotations(base) if name != "kind"]
    if attributes:
        lines += ["", "Class attributes, besides those of every plugin:", ""]
        lines += [f"- `{name} = {getattr(base, name)!r}`" for name in attributes]

    methods = [(name, value) for name, value in vars(base).items()
               if inspect.isfunction(value) and not name.startswith("_")]
    lines += ["", "Methods:", ""]
    for _, method in methods:
        required = "raise NotImplementedError" in inspect.getsource(method)
        label = "required" if required else "has a default"
        summary = _summary(method)
        text = f"- `{signature_text(method)}` ({label})"
        lines.append(f"{text}: {summary}" if summary else text)
    return "\n".join(lines)


def render_kinds() -> str:
    """Render every kind's base class, then the data classes passed between plugins."""
    parts = [render_kind(kind, base) for kind, base in KINDS.items()]
    data_classes = [value for value in vars(kinds).values()
                    if dataclasses.is_dataclass(value) and value.__module__ == kinds.__name__]
    for data_class in data_classes:
        doc = inspect.getdoc(data_class) or ""
        lines = [f"### `ifval.kinds.{data_class.__name__}`", "", doc, ""]
        lines += [f"- `{field.name}: {field.type}`" for field in dataclasses.fields(data_class)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# -------------------------------------------------------------- example plugin


def render_example_module() -> str:
    source = EXAMPLE_MODULE.read_text(encoding="utf-8").rstrip()
    return f"```python\n{source}\n```"


def render_example_pyproject() -> str:
    source = (EXAMPLE_PLUGIN / "pyproject.toml").read_text(encoding="utf-8").rstrip()
    return f"```toml\n{source}\n```"


# --------------------------------------------------------------------- files

GENERATORS: dict[str, dict[str, Callable[[], str]]] = {
    "protocol.md": {"sections": render_sections,
                    "result-independent-fields": render_result_independent_fields,
                    "plugins": render_plugins},
    "cli.md": {"commands": render_cli},
    "plugins.md": {"builtin-modules": render_builtin_modules,
                   "kinds": render_kinds,
                   "example-module": render_example_module,
                   "example-pyproject": render_example_pyproject},
}
"""Docs file → block name → function that renders the block."""


def regenerate(text: str, generators: dict[str, Callable[[], str]], source: str) -> str:
    """Return ``text`` with every generated block replaced by freshly rendered content."""
    found = [match.group("name") for match in BEGIN.finditer(text)]
    repeated = sorted({name for name in found if found.count(name) > 1})
    if repeated:
        raise DocsError(f"{source}: generated blocks appear more than once: {', '.join(repeated)}")
    unknown = sorted(set(found) - set(generators))
    missing = sorted(set(generators) - set(found))
    if unknown or missing:
        msg = (
            f"{source}: generated blocks do not match gen_docs.py (unknown: "
            f"{', '.join(unknown) or 'none'}; missing: {', '.join(missing) or 'none'}); "
            "fix the BEGIN GENERATED marker lines"
        )
        raise DocsError(msg)

    for name, render in generators.items():
        begin = f"<!-- BEGIN GENERATED {name} -->"
        end = END.format(name=name)
        start = text.index(begin) + len(begin)
        stop = text.find(end, start)
        if stop < 0:
            raise DocsError(f"{source}: `{begin}` has no matching `{end}` line")
        text = text[:start] + "\n" + render() + "\n" + text[stop:]
    return text


def expected_text(name: str) -> str:
    """Return the up-to-date text of ``docs/<name>``, one of the keys of ``GENERATORS``."""
    current = (DOCS / name).read_text(encoding="utf-8")
    return regenerate(current, GENERATORS[name], f"docs/{name}")


def expected_docs() -> dict[Path, str]:
    """Return every generated docs file's path and its up-to-date text."""
    return {DOCS / name: expected_text(name) for name in GENERATORS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="Write nothing; exit 1 when a file differs from the generated text.")
    args = parser.parse_args(argv)

    try:
        expected = expected_docs()
    except DocsError as exc:
        sys.stderr.write(f"gen_docs.py: {exc}\n")
        return 2

    stale = []
    for path, text in expected.items():
        current = path.read_text(encoding="utf-8")
        if current == text:
            continue
        relative = path.relative_to(ROOT).as_posix()
        if args.check:
            stale.append(relative)
            diff = difflib.unified_diff(current.splitlines(keepends=True),
                                        text.splitlines(keepends=True),
                                        f"{relative} (current)", f"{relative} (generated)")
            sys.stderr.writelines(diff)
        else:
            path.write_text(text, encoding="utf-8")
            sys.stderr.write(f"rewrote {relative}\n")
    if stale:
        sys.stderr.write(f"out of date: {', '.join(stale)}; run `{REGENERATE_COMMAND}`\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
