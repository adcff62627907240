"""Plugin manager factory and the registries of plugins by kind.

Nothing is loaded at import time: :func:`get_plugin_manager` loads the
``ifval`` entry points, registers any built-in module an uninstalled checkout
lacks, and checks every implementation against :mod:`ifval.hookspecs`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import pluggy

from ifval import NAME, hookspecs
from ifval.errors import PluginError, UnknownPluginError
from ifval.kinds import KINDS, PluginBase

logger = logging.getLogger(__name__)

BUILTIN_MODULES = {
    "iris": "ifval.datasets.iris",
    "mlp": "ifval.models.mlp",
    "exact": "ifval.estimators.exact",
    "retrain_from_optimum": "ifval.ground_truths.retrain",
    "correlation": "ifval.scorers.correlation",
    "local": "ifval.executors.local",
}
"""Entry-point name → module of every plugin module that ships with ifval."""

DISABLE_ENV = "IFVAL_DISABLE_PLUGINS"
"""Comma-separated entry-point names of plugin modules not to load."""


def get_plugin_manager(disabled: Iterable[str] = ()) -> pluggy.PluginManager:
    """Build a plugin manager with every installed plugin module registered.

    ``disabled`` (plus the names in ``$IFVAL_DISABLE_PLUGINS``) are entry-point
    names that are blocked, built-ins included.
    """
    manager = pluggy.PluginManager(NAME)
    manager.add_hookspecs(hookspecs)

    blocked = set(disabled)
    blocked.update(name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name)
    for name in sorted(blocked):
        manager.set_blocked(name)

    try:
        manager.load_setuptools_entrypoints(NAME)
    except Exception as exc:  # an entry point whose import fails
        msg = f"failed to load an ifval plugin entry point: {exc}; disable it with {DISABLE_ENV}"
        raise PluginError(msg) from exc

    for name, module_name in BUILTIN_MODULES.items():
        if manager.is_blocked(name) or manager.get_plugin(name) is not None:
            continue
        manager.register(importlib.import_module(module_name), name=name)

    manager.check_pending()
    return manager


@dataclass(frozen=True)
class PluginEntry:
    """A registered plugin with the module and distribution that provide it."""

    plugin: PluginBase
    module: str
    distribution: str


class Registry:
    """Plugins of one kind by name; rejects duplicate names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, PluginEntry] = {}

    def add(self, entry: PluginEntry) -> None:
        plugin = entry.plugin
        expected = KINDS[self.kind]
        if not isinstance(plugin, expected):
            msg = (
                f"plugin module {entry.module!r} returned {plugin!r} from the {self.kind} hook; "
                f"expected an instance of ifval.kinds.{expected.__name__}"
            )
            raise PluginError(msg)
        if not plugin.name:
            msg = f"{self.kind} plugin {type(plugin).__name__} from {entry.module!r} has no name"
            raise PluginError(msg)
        previous = self._entries.get(plugin.name)
        if previous is not None:
            msg = (
                f"duplicate {self.kind} name {plugin.name!r}: provided by {previous.module!r} "
                f"({previous.distribution}) and by {entry.module!r} ({entry.distribution}); "
                f"uninstall one or disable it with {DISABLE_ENV}"
            )
            raise PluginError(msg)
        self._entries[plugin.name] = entry

    def get(self, name: str) -> PluginBase:
        """Return the plugin called ``name``, or raise with the known names and the closest one."""
        try:
            return self._entries[name].plugin
        except KeyError:
            raise UnknownPluginError(self.kind.replace("_", " "), name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Iterator[PluginEntry]:
        for name in self.names():
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries


class Catalog:
    """The registries of all plugin kinds, built from one plugin manager."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.registries = {kind: Registry(kind) for kind in KINDS}
        distributions = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}
        for kind, hook_name in hookspecs.HOOKS_BY_KIND.items():
            hook_caller = getattr(manager.hook, hook_name)
            for implementation in hook_caller.get_hookimpls():
                module = implementation.plugin
                dist = distributions.get(id(module))
                dist_name = dist.project_name if dist is not None else NAME
                plugins = implementation.function() or []
                for plugin in plugins:
                    entry = PluginEntry(plugin, getattr(module, "__name__", str(module)), dist_name)
                    self.registries[kind].add(entry)

    def get(self, kind: str, name: str) -> PluginBase:
        return self.registries[kind].get(name)

    def entries(self) -> Iterator[tuple[str, PluginEntry]]:
        for kind, registry in self.registries.items():
            for entry in registry.entries():
                yield kind, entry


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The catalog of all installed plugins, built once per process."""
    return Catalog(get_plugin_manager())
