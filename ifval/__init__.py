"""ifval: validate influence-function estimates and the procedures that validate them.

Importing this package does not import torch, so ``ifval --help`` and
``ifval validate`` start fast.
"""

from __future__ import annotations

import pluggy

NAME = "ifval"
"""Project name, pluggy marker name and entry-point group of plugins."""

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker(NAME)
"""Marker for plugin hook implementations: ``@ifval.hookimpl``."""

from ifval.errors import IfvalError  # noqa: E402


def load_protocol(path):  # type: ignore[no-untyped-def]
    """Load and validate a protocol file; see :func:`ifval.protocol.load_protocol`."""
    from ifval.protocol import load_protocol as _load

    return _load(path)


def run_protocol(protocol, **options):  # type: ignore[no-untyped-def]
    """Run a protocol to completion; see :func:`ifval.runner.run_protocol`."""
    from ifval.runner import run_protocol as _run

    return _run(protocol, **options)


__all__ = ["NAME", "IfvalError", "__version__", "hookimpl", "load_protocol", "run_protocol"]
