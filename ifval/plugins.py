"""Plugin manager factory and the registries of plugins by kind.

Nothing is loaded at import time: :func:`get_plugin_manager` loads the
``ifval`` entry points, registers any built-in module an uninstalled checkout
lacks, and checks every implementation against :mod:`ifval.hookspecs`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pluggy

from ifval import NAME, hookspecs
from ifval.errors import PluginError, UnknownPluginError
from ifval.kinds import KINDS, PluginBase

logger = logging.getLogger(__name__)

BUILTIN_MODULES = {
    "iris": "ifval.datasets.iris",
    "mlp": "ifval.models.mlp",
    "vdp": "ifval.models.vdp",
    "exact": "ifval.estimators.exact",
    "lissa": "ifval.estimators.lissa",
    "group": "ifval.estimators.group",
    "retrain_from_optimum": "ifval.ground_truths.retrain",
    "exact_optimum": "ifval.ground_truths.exact_optimum",
    "retrain_from_scratch": "ifval.ground_truths.scratch",
    "correlation": "ifval.scorers.correlation",
    "topk": "ifval.scorers.topk",
    "local": "ifval.executors.local",
}
"""Entry-point name → module of every plugin module that ships with ifval."""

DISABLE_ENV = "IFVAL_DISABLE_PLUGINS"
"""Comma-separated entry-point names of plugin modules not to load."""


class PluginManager(pluggy.PluginManager):
    """A pluggy manager for the ``ifval`` hooks that records the distribution of each module."""

    def __init__(self) -> None:
        super().__init__(NAME)
        self.add_hookspecs(hookspecs)
        self._providers: dict[str, str] = {}

    def register_module(self, module: object, name: str, provider: str) -> None:
        """Register a plugin module under ``name``, installed by the distribution ``provider``."""
        try:
            self.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            msg = f"plugin {name!r} from {provider} does not match the ifval hooks: {exc}"
            raise PluginError(msg) from exc
        except ValueError as exc:
            msg = f"plugin {name!r} from {provider} cannot be registered: {exc}"
            raise PluginError(msg) from exc
        self._providers[name] = provider

    def provider(self, module: object) -> str:
        """Return the distribution that installed ``module``.

        A module registered with pluggy's own ``register`` has no recorded
        distribution, so its top-level package name is returned instead.
        """
        name = self.get_name(module)
        if name is not None and name in self._providers:
            return self._providers[name]
        return _module_name(module).split(".")[0]


def get_plugin_manager(disabled: Iterable[str] = ()) -> PluginManager:
    """Build a plugin manager with every installed plugin module registered.

    ``disabled`` (plus the names in ``$IFVAL_DISABLE_PLUGINS``) are entry-point
    names that are blocked, built-ins included.
    """
    manager = PluginManager()

    blocked = set(disabled)
    blocked.update(name.strip() for name in os.environ.get(DISABLE_ENV, "").split(","))
    blocked.discard("")
    for name in sorted(blocked):
        manager.set_blocked(name)

    entry_points = list(_entry_points())
    for entry_point in entry_points:
        _load_entry_point(manager, entry_point)

    for name, module_name in BUILTIN_MODULES.items():
        if manager.is_blocked(name) or manager.has_plugin(name):
            continue
        manager.register_module(importlib.import_module(module_name), name, NAME)

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin)
        hooks = ", ".join(hookspecs.HOOKS_BY_KIND.values())
        msg = (f"{exc}, registered as {name!r} from {manager.provider(exc.plugin)}; "
               f"the ifval hooks are {hooks}")
        raise PluginError(msg) from exc

    known = {entry_point.name for entry_point in entry_points} | set(BUILTIN_MODULES)
    unknown = sorted(blocked - known)
    if unknown:
        logger.warning("disabled plugin names match no plugin module: %s; installed: %s",
                       ", ".join(unknown), ", ".join(sorted(known)))
    return manager


def _entry_points() -> Iterable[Any]:
    return importlib.metadata.entry_points(group=NAME)


def _load_entry_point(manager: PluginManager, entry_point: Any) -> None:
    name = entry_point.name
    provider = entry_point.dist.name if entry_point.dist is not None else "an unknown distribution"
    if manager.is_blocked(name):
        return
    if manager.has_plugin(name):
        previous = manager.provider(manager.get_plugin(name))
        msg = (
            f"two distributions register the ifval entry point {name!r}: {previous} and "
            f"{provider}; uninstall one of them"
        )
        raise PluginError(msg)

    try:
        module = entry_point.load()
    except Exception as exc:  # any error raised while importing third-party code
        msg = (
            f"failed to import plugin {name!r} ({entry_point.value}, from {provider}): "
            f"{type(exc).__name__}: {exc}; fix or uninstall it, or set {DISABLE_ENV}={name}"
        )
        raise PluginError(msg) from exc
    manager.register_module(module, name, provider)


def _module_name(module: object) -> str:
    return str(getattr(module, "__name__", type(module).__name__))


@dataclass(frozen=True)
class PluginEntry:
    """A registered plugin with the module and distribution that provide it.

    ``source`` is the module's registered (entry-point) name, which is also
    the name that disables it.
    """

    plugin: PluginBase
    module: str
    distribution: str
    source: str = ""


class Registry:
    """Plugins of one kind by name; rejects duplicate names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, PluginEntry] = {}

    def add(self, entry: PluginEntry) -> None:
        """Add a plugin; raises :class:`PluginError` for a wrong type, no name or a taken name."""
        plugin = entry.plugin
        expected = KINDS[self.kind]
        hook_name = hookspecs.HOOKS_BY_KIND[self.kind]
        if not isinstance(plugin, expected):
            hint = ""
            if isinstance(plugin, type) and issubclass(plugin, expected):
                hint = f"; return an instance, {plugin.__name__}(), not the class"
            msg = (
                f"plugin module {entry.module!r} returned {_short_repr(plugin)} from "
                f"{hook_name}; expected instances of ifval.kinds.{expected.__name__}{hint}"
            )
            raise PluginError(msg)
        if not isinstance(plugin.name, str) or not plugin.name:
            msg = (
                f"{self.kind} plugin {type(plugin).__name__} from {entry.module!r} has no name "
                f"(found {plugin.name!r}); set the class attribute `name` to a non-empty string"
            )
            raise PluginError(msg)

        previous = self._entries.get(plugin.name)
        if previous is not None:
            raise PluginError(self._duplicate_message(previous, entry))
        self._entries[plugin.name] = entry

    def _duplicate_message(self, previous: PluginEntry, entry: PluginEntry) -> str:
        name = entry.plugin.name
        if previous.module == entry.module:
            return (
                f"duplicate {self.kind} name {name!r}: plugin module {entry.module!r} "
                f"({entry.distribution}) returns it twice; give each plugin its own `name`"
            )
        sources = " or ".join(repr(s) for s in (previous.source, entry.source) if s)
        disable = f"by setting {DISABLE_ENV} to {sources}" if sources else f"with {DISABLE_ENV}"
        return (
            f"duplicate {self.kind} name {name!r}: provided by {previous.module!r} "
            f"({previous.distribution}) and by {entry.module!r} ({entry.distribution}); "
            f"uninstall one, or disable its module {disable}"
        )

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

    def __init__(self, manager: PluginManager) -> None:
        self.registries = {kind: Registry(kind) for kind in KINDS}
        for kind, hook_name in hookspecs.HOOKS_BY_KIND.items():
            hook_caller = getattr(manager.hook, hook_name)
            for implementation in hook_caller.get_hookimpls():
                module = implementation.plugin
                module_name = _module_name(module)
                provider = manager.provider(module)
                for plugin in _call_hook(implementation, hook_name, module_name):
                    entry = PluginEntry(plugin, module_name, provider, implementation.plugin_name)
                    self.registries[kind].add(entry)

    def get(self, kind: str, name: str) -> PluginBase:
        return self.registries[kind].get(name)

    def entries(self) -> Iterator[tuple[str, PluginEntry]]:
        for kind, registry in self.registries.items():
            for entry in registry.entries():
                yield kind, entry


def _call_hook(implementation: pluggy.HookImpl, hook_name: str, module_name: str) -> list[Any]:
    try:
        plugins = implementation.function()
    except Exception as exc:
        exc.add_note(f"raised by {hook_name} of the ifval plugin module {module_name!r}")
        raise
    if plugins is None:
        return []
    if not isinstance(plugins, list | tuple):
        msg = (
            f"plugin module {module_name!r} returned {_short_repr(plugins)} from {hook_name}; "
            "expected a list of plugin instances"
        )
        raise PluginError(msg)
    return list(plugins)


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """Return the catalog of all installed plugins, built once per process."""
    return Catalog(get_plugin_manager())
