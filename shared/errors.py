"""The project's exception hierarchy, raised where a problem is found.

    RecsysError
    ├── DataError        bad input data: names the file, the line and the problem
    ├── ConfigError      an unknown key or a bad value in a config file or setting
    ├── BundleError      an artifacts bundle that is missing, partial, corrupt or foreign
    └── StoreError       the online store (Redis) is unreachable or inconsistent

Only the edges (the worker CLI, the HTTP gateway) turn these into exit codes or statuses.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BundleError", "ConfigError", "DataError", "RecsysError", "StoreError"]


class RecsysError(Exception):
    """Base of every error this project raises on purpose."""


class DataError(RecsysError):
    """Input data that cannot be read: ``path:line: reason``."""

    def __init__(self, path: str | Path, reason: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ConfigError(RecsysError):
    """A configuration file or setting with an unknown key or a bad value."""


class BundleError(RecsysError):
    """An artifacts bundle that cannot be trusted or loaded.

    ``reason`` is the class of problem, a label of
    ``recsys_bundle_load_failures_total``: ``missing`` (no such version or file),
    ``corrupt`` (a file that does not match its hash or cannot be parsed),
    ``non_finite`` (NaN or infinite weights or vectors), ``probe`` (the probe set's
    scores are not reproduced) or ``invalid`` (parts that do not fit together).
    """

    REASONS = ("missing", "corrupt", "non_finite", "probe", "invalid")

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(RecsysError):
    """The online store is unreachable or holds something unexpected."""
