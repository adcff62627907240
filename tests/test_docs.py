"""The docs match the code: generated blocks, hook entries, example protocols and commands."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

from ifval import hookspecs
from ifval.cli import cli
from ifval.plugins import DISABLE_ENV
from ifval.protocol import expand_conditions, parse_protocol

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = ["cli.md", "protocol.md", "plugins.md"]
"""Docs files with blocks that scripts/gen_docs.py writes."""

MAX_DIFF_LINES = 80


@pytest.fixture(scope="module")
def gen_docs() -> ModuleType:
    """Import scripts/gen_docs.py, which is a script and not part of a package."""
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hook_names() -> list[str]:
    """Return the name of every hook specification in ifval/hookspecs.py."""
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return [name for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(function, marker)]


def code_text(markdown: str) -> list[str]:
    """Return the contents of every fenced block and inline code span."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)
    without_fenced = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return fenced + re.findall(r"`([^`\n]+)`", without_fenced)


@pytest.mark.parametrize("name", GENERATED)
def test_generated_docs_current(gen_docs: ModuleType, name: str) -> None:
    current = (DOCS / name).read_text(encoding="utf-8")

    expected = gen_docs.expected_text(name)

    diff = list(difflib.unified_diff(current.splitlines(), expected.splitlines(),
                                     f"docs/{name} (current)", f"docs/{name} (generated)",
                                     lineterm=""))
    diff_excerpt = "\n".join(diff[:MAX_DIFF_LINES])
    assert current == expected, (
        f"docs/{name} differs from what scripts/gen_docs.py generates from the code; "
        f"regenerate it with `{gen_docs.REGENERATE_COMMAND}` and review the change:\n{diff_excerpt}"
    )


def test_every_hook_has_docs_entry() -> None:
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^### `(ifval_\w+)`$", text, re.MULTILINE))

    missing = [name for name in hook_names() if name not in documented]

    assert hook_names(), "found no hook specifications in ifval/hookspecs.py"
    assert not missing, (
        f"hooks without an entry in docs/plugins.md: {', '.join(missing)}; add a "
        "'### `<hook name>`' section under 'Hook reference' saying what the hook returns"
    )


def test_documented_hooks_exist() -> None:
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    documented = re.findall(r"^### `(ifval_\w+)`$", text, re.MULTILINE)

    stale = [name for name in documented if name not in hook_names()]

    assert not stale, (
        f"docs/plugins.md documents hooks that ifval/hookspecs.py does not define: "
        f"{', '.join(stale)}; remove or rename their sections"
    )


def test_disable_variable_documented() -> None:
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")

    assert f"`{DISABLE_ENV}`" in text, f"docs/plugins.md does not mention {DISABLE_ENV}"


@pytest.mark.parametrize("name", ["getting-started.md", "protocol.md"])
def test_example_protocols_valid(name: str) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")
    protocols = [block for block in re.findall(r"^```yaml\n(.*?)^```", text,
                                               re.MULTILINE | re.DOTALL)
                 if block.startswith("name:")]

    for block in protocols:
        protocol = parse_protocol(block, source=f"docs/{name}")
        assert expand_conditions(protocol)

    if name == "protocol.md":
        assert protocols, "docs/protocol.md has no complete example protocol"


@pytest.mark.parametrize("name", ["getting-started.md", "protocol.md", "plugins.md"])
def test_documented_commands_exist(name: str) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")
    # `ifval` at the start of a line or code span, after a shell prompt, after
    # scripts/in-venv or a venv's bin/, or after an environment assignment.
    pattern = re.compile(r"(?:^|\$ |in-venv |bin/|=\S* )ifval (?:-v+ )?([a-z][a-z-]*)\b",
                         re.MULTILINE)
    used = {command for code in code_text(text) for command in pattern.findall(code)}

    unknown = sorted(used - set(cli.commands))

    assert not unknown, (
        f"docs/{name} shows ifval commands that do not exist: {', '.join(unknown)}; "
        f"the commands are {', '.join(sorted(cli.commands))}"
    )
