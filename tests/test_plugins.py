"""Plugin manager and registries: duplicates, unknown names, wrong kinds, disabling.

Each test builds its own plugin manager. Extra plugin modules and entry
points are fakes made here, so the tests depend only on ifval's built-ins.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import ifval
import ifval.plugins
from ifval.cli import cli
from ifval.errors import PluginError, ProtocolError, UnknownPluginError
from ifval.kinds import Dataset, Scorer
from ifval.plugins import BUILTIN_MODULES, DISABLE_ENV, Catalog, get_plugin_manager
from ifval.protocol import validate_protocol

BUILTINS = [
    ("dataset", "iris"),
    ("model", "mlp"),
    ("model", "vdp"),
    ("estimator", "exact"),
    ("estimator", "group"),
    ("estimator", "lissa"),
    ("estimator", "second_order"),
    ("ground_truth", "exact_optimum"),
    ("ground_truth", "retrain_from_optimum"),
    ("ground_truth", "retrain_from_scratch"),
    ("scorer", "kendall"),
    ("scorer", "magnitude_weighted"),
    ("scorer", "pearson"),
    ("scorer", "sign_agreement"),
    ("scorer", "spearman"),
    ("scorer", "topk_overlap"),
    ("executor", "local"),
]
"""(kind, name) of every plugin that ships with ifval."""


class FakeScorer(Scorer):
    name = "spearman"
    description = "A second scorer called spearman."


class FakeDataset(Dataset):
    name = "fake_dataset"
    description = "A dataset returned from the wrong hook."

    def __repr__(self) -> str:
        return "FakeDataset()"


class NamelessScorer(Scorer):
    description = "A scorer that forgot its name."

    def __repr__(self) -> str:
        return "NamelessScorer()"


def returning(result: Any) -> Any:
    """Return a hook implementation that returns ``result``."""

    @ifval.hookimpl
    def hook() -> Any:
        return result

    return hook


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    """Return a module whose hooks (keyword name → result) return the given results."""
    module = types.ModuleType(name)
    for hook_name, result in hooks.items():
        setattr(module, hook_name, returning(result))
    return module


def catalog_with(module: types.ModuleType, name: str = "fake",
                 provider: str = "fake-dist") -> Catalog:
    """Build a fresh catalog of the installed plugins plus ``module``."""
    manager = get_plugin_manager()
    manager.register_module(module, name, provider)
    return Catalog(manager)


@dataclass
class FakeDistribution:
    name: str


@dataclass
class FakeEntryPoint:
    """The parts of ``importlib.metadata.EntryPoint`` that the plugin manager uses."""

    name: str
    value: str
    dist: FakeDistribution
    module: types.ModuleType | None = None

    def load(self) -> types.ModuleType:
        if self.module is None:
            raise ModuleNotFoundError(f"No module named {self.value.split('.')[0]!r}")
        return self.module


def use_entry_points(monkeypatch: pytest.MonkeyPatch, *entry_points: FakeEntryPoint) -> None:
    """Make the plugin manager see only ``entry_points``, plus the built-in modules."""
    monkeypatch.setattr(ifval.plugins, "_entry_points", lambda: list(entry_points))


@pytest.fixture(autouse=True)
def only_ifval_entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hide entry points of other installed distributions (the example plugin in CI)."""
    installed = list(ifval.plugins._entry_points())
    own = [ep for ep in installed if ep.dist is not None and ep.dist.name == "ifval"]
    monkeypatch.setattr(ifval.plugins, "_entry_points", lambda: own)
    ifval.plugins.default_catalog.cache_clear()
    yield
    ifval.plugins.default_catalog.cache_clear()


# ------------------------------------------------------------------- registries


def test_builtins_all_registered() -> None:
    catalog = Catalog(get_plugin_manager())

    found = [(kind, entry.plugin.name) for kind, entry in catalog.entries()]

    assert found == BUILTINS


def test_duplicate_name_names_both_providers() -> None:
    module = plugin_module("fake_scorers", ifval_scorers=[FakeScorer()])

    with pytest.raises(PluginError) as caught:
        catalog_with(module)

    assert str(caught.value) == (
        "duplicate scorer name 'spearman': provided by 'ifval.scorers.correlation' (ifval) and "
        "by 'fake_scorers' (fake-dist); uninstall one, or disable its module by setting "
        "IFVAL_DISABLE_PLUGINS to 'correlation' or 'fake'"
    )


def test_duplicate_name_within_module() -> None:
    module = plugin_module("twice", ifval_scorers=[FakeScorer(), FakeScorer()])
    manager = get_plugin_manager(disabled=["correlation"])
    manager.register_module(module, "twice", "twice-dist")

    with pytest.raises(PluginError) as caught:
        Catalog(manager)

    assert str(caught.value) == (
        "duplicate scorer name 'spearman': plugin module 'twice' (twice-dist) returns it "
        "twice; give each plugin its own `name`"
    )


def test_unknown_name_suggests_closest() -> None:
    catalog = Catalog(get_plugin_manager())

    with pytest.raises(UnknownPluginError) as caught:
        catalog.get("scorer", "spearmann")

    assert str(caught.value) == (
        "unknown scorer 'spearmann'; known scorers: kendall, magnitude_weighted, pearson, "
        "sign_agreement, spearman, topk_overlap. Did you mean 'spearman'?"
    )
    assert caught.value.known == ["kendall", "magnitude_weighted", "pearson", "sign_agreement",
                                  "spearman", "topk_overlap"]


def test_unknown_name_without_close_match() -> None:
    catalog = Catalog(get_plugin_manager())

    with pytest.raises(UnknownPluginError) as caught:
        catalog.get("ground_truth", "influence_oracle")

    known = ", ".join(name for kind, name in BUILTINS if kind == "ground_truth")
    assert str(caught.value) == (
        f"unknown ground truth 'influence_oracle'; known ground truths: {known}"
    )


def test_wrong_kind_rejected() -> None:
    module = plugin_module("mixed_up", ifval_scorers=[FakeDataset()])

    with pytest.raises(PluginError) as caught:
        catalog_with(module)

    assert str(caught.value) == (
        "plugin module 'mixed_up' returned FakeDataset() from ifval_scorers; expected "
        "instances of ifval.kinds.Scorer"
    )


def test_class_instead_of_instance() -> None:
    module = plugin_module("classes", ifval_scorers=[FakeScorer])

    with pytest.raises(PluginError) as caught:
        catalog_with(module)

    assert str(caught.value) == (
        f"plugin module 'classes' returned {FakeScorer!r} from ifval_scorers; expected "
        "instances of ifval.kinds.Scorer; return an instance, FakeScorer(), not the class"
    )


def test_hook_result_not_a_list() -> None:
    module = plugin_module("single", ifval_datasets=FakeDataset())

    with pytest.raises(PluginError) as caught:
        catalog_with(module)

    assert str(caught.value) == (
        "plugin module 'single' returned FakeDataset() from ifval_datasets; expected a list of "
        "plugin instances"
    )


def test_plugin_without_name() -> None:
    module = plugin_module("nameless", ifval_scorers=[NamelessScorer()])

    with pytest.raises(PluginError) as caught:
        catalog_with(module)

    assert str(caught.value) == (
        "scorer plugin NamelessScorer from 'nameless' has no name (found ''); set the class "
        "attribute `name` to a non-empty string"
    )


def test_hook_error_names_module() -> None:
    @ifval.hookimpl
    def ifval_scorers() -> list[Scorer]:
        raise RuntimeError("scorer table missing")

    module = types.ModuleType("failing")
    module.ifval_scorers = ifval_scorers  # type: ignore[attr-defined]

    with pytest.raises(RuntimeError) as caught:
        catalog_with(module)

    assert caught.value.__notes__ == [
        "raised by ifval_scorers of the ifval plugin module 'failing'"
    ]


# ----------------------------------------------------------------- entry points


def test_entry_point_provider_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    module = plugin_module("extra_scorers", ifval_scorers=[])
    entry_point = FakeEntryPoint("extra", "extra_scorers", FakeDistribution("extra-dist"), module)
    use_entry_points(monkeypatch, entry_point)

    manager = get_plugin_manager()

    assert manager.provider(module) == "extra-dist"


def test_failed_import_names_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = FakeEntryPoint("broken", "broken_pkg.plugin", FakeDistribution("broken-dist"))
    use_entry_points(monkeypatch, broken)

    with pytest.raises(PluginError) as caught:
        get_plugin_manager()

    assert str(caught.value) == (
        "failed to import plugin 'broken' (broken_pkg.plugin, from broken-dist): "
        "ModuleNotFoundError: No module named 'broken_pkg'; fix or uninstall it, or set "
        "IFVAL_DISABLE_PLUGINS=broken"
    )


def test_disabled_entry_point_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = FakeEntryPoint("broken", "broken_pkg.plugin", FakeDistribution("broken-dist"))
    use_entry_points(monkeypatch, broken)

    manager = get_plugin_manager(disabled=["broken"])

    assert manager.is_blocked("broken")


def test_duplicate_entry_point_name(monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeEntryPoint("extra", "one", FakeDistribution("one-dist"), types.ModuleType("one"))
    second = FakeEntryPoint("extra", "two", FakeDistribution("two-dist"), types.ModuleType("two"))
    use_entry_points(monkeypatch, first, second)

    with pytest.raises(PluginError) as caught:
        get_plugin_manager()

    assert str(caught.value) == (
        "two distributions register the ifval entry point 'extra': one-dist and two-dist; "
        "uninstall one of them"
    )


def test_unknown_hook_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    module = plugin_module("typo_hooks", ifval_scorer=[])
    entry_point = FakeEntryPoint("typo", "typo_hooks", FakeDistribution("typo-dist"), module)
    use_entry_points(monkeypatch, entry_point)

    with pytest.raises(PluginError) as caught:
        get_plugin_manager()

    assert str(caught.value) == (
        "unknown hook 'ifval_scorer' in plugin <module 'typo_hooks'>, registered as 'typo' from "
        "typo-dist; the ifval hooks are ifval_datasets, ifval_models, ifval_estimators, "
        "ifval_ground_truths, ifval_scorers, ifval_executors"
    )


# -------------------------------------------------------------------- disabling


def test_disabled_argument_removes_plugin() -> None:
    catalog = Catalog(get_plugin_manager(disabled=["exact"]))

    assert catalog.registries["estimator"].names() == ["group", "lissa", "second_order"]


def test_disable_env_removes_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, " correlation, topk, exact , lissa,group")

    catalog = Catalog(get_plugin_manager())

    assert catalog.registries["scorer"].names() == []
    assert catalog.registries["estimator"].names() == []
    assert catalog.registries["model"].names() == ["mlp", "vdp"]


def test_disable_unknown_name_warns(caplog: pytest.LogCaptureFixture) -> None:
    get_plugin_manager(disabled=["corelation"])

    installed = ", ".join(sorted(BUILTIN_MODULES))
    assert caplog.messages == [
        f"disabled plugin names match no plugin module: corelation; installed: {installed}"
    ]


def test_disabled_plugin_unknown_in_protocol() -> None:
    catalog = Catalog(get_plugin_manager(disabled=["exact"]))
    protocol = {
        "name": "tiny",
        "dataset": "iris",
        "model": "mlp",
        "training": {"epochs": 10},
        "estimators": ["exact"],
        "ground_truths": ["retrain_from_optimum"],
        "scorers": ["spearman"],
        "repetitions": 1,
    }

    with pytest.raises(ProtocolError) as caught:
        validate_protocol(protocol, catalog=catalog)

    assert caught.value.problems == [
        "estimators[0].name: unknown estimator 'exact'; known estimators: group, lissa, "
        "second_order"
    ]


# -------------------------------------------------------------------------- CLI


def table_rows(output: str) -> list[list[str]]:
    """Return the cells of every body row of a rich table."""
    return [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in output.splitlines() if line.startswith("│")]


def test_plugins_command_lists_builtins() -> None:
    descriptions = {(kind, entry.plugin.name): entry.plugin.description
                    for kind, entry in Catalog(get_plugin_manager()).entries()}

    result = CliRunner().invoke(cli, ["plugins"])

    assert result.exit_code == 0
    assert table_rows(result.stdout) == [
        [kind, name, "ifval", descriptions[kind, name]] for kind, name in BUILTINS
    ]


def test_validate_imports_no_torch(tmp_path: Path) -> None:
    protocol = Path(__file__).parents[1] / "protocols" / "iris_quick.yaml"
    script = textwrap.dedent(f"""
        import json, sys
        import ifval, ifval.protocol
        after_import = "torch" in sys.modules
        from click.testing import CliRunner
        from ifval.cli import cli
        result = CliRunner().invoke(cli, ["validate", {str(protocol)!r}])
        print(json.dumps({{"after_import": after_import, "exit_code": result.exit_code,
                          "after_validate": "torch" in sys.modules}}))
    """)

    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               check=True, cwd=tmp_path)
    report = json.loads(completed.stdout)

    assert report["after_import"] is False
    assert report["exit_code"] == 0
    assert report["after_validate"] is False
