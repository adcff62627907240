"""The one user-facing error hierarchy.

The CLI prints an :class:`IfvalError` as one line and exits with its
``exit_code``; any other exception is a bug and propagates with its traceback.
"""

from __future__ import annotations


class IfvalError(Exception):
    """An error caused by the user's input or environment, with a fix to suggest."""

    exit_code = 1


class ProtocolError(IfvalError):
    """A protocol file that cannot be parsed or fails validation."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        if len(problems) == 1:
            message = f"{where}invalid protocol: {problems[0]}"
        else:
            listed = "\n".join(f"  - {problem}" for problem in problems)
            message = f"{where}invalid protocol ({len(problems)} problems):\n{listed}"
        super().__init__(message)


class PluginError(IfvalError):
    """A plugin that is unknown, duplicated or broken."""


class UnknownPluginError(PluginError):
    """A plugin name that no registered plugin provides."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        import difflib

        self.kind = kind
        self.name = name
        self.known = known
        listed = ", ".join(known) if known else "none"
        message = f"unknown {kind} {name!r}; known {kind}s: {listed}"
        close = difflib.get_close_matches(str(name), known, n=1)
        if close:
            message += f". Did you mean {close[0]!r}?"
        super().__init__(message)


class NumericalError(IfvalError):
    """A computation that cannot give a trustworthy number (for example an indefinite Hessian)."""


class StoreError(IfvalError):
    """A run directory whose store does not match the protocol being run."""
