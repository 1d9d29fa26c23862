"""Learned durations: what earlier runs measured, kept in pytest's cache.

Stored under ``parexec/durations`` as JSON. Each operation's duration is an
exponential moving average over the runs in which it passed, so one slow run
moves the estimate halfway and a changed operation is learned in a few runs.
``--cache-clear`` forgets everything; an entry that is not what this module
wrote is ignored with a warning.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Mapping
from typing import Any, Final, final

import pytest

from . import _compat

__all__ = ["CACHE_KEY", "SMOOTHING", "History", "ParexecWarning"]

CACHE_KEY: Final = "parexec/durations"
HISTORY_VERSION: Final = 1
#: Weight of the newest measurement in the moving average.
SMOOTHING: Final = 0.5


class ParexecWarning(pytest.PytestWarning):
    """A problem pytest-parexec worked around (e.g. an unreadable cache entry)."""


_MISSING: Final = object()


def _warn(message: str) -> None:
    """A ParexecWarning; under ``filterwarnings = error`` a line on stderr instead of a crash."""
    try:
        warnings.warn(ParexecWarning(message), stacklevel=3)
    except Warning:
        sys.stderr.write(f"warning: {message}\n")


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


@final
@dataclasses.dataclass
class History:
    """Learned operation durations and the measured cost of starting workers."""

    durations: dict[str, float] = dataclasses.field(default_factory=dict)
    worker_start_s: float | None = None

    @classmethod
    def load(cls, cache: Any) -> History:
        """Read the cache entry; None cache (``-p no:cacheprovider``) gives an empty history."""
        if cache is None:
            return cls()
        raw = cache.get(CACHE_KEY, _MISSING)
        if raw is _MISSING:
            # pytest's cache returns the default for a file that is not JSON, silently.
            if not _compat.cache_entry_exists(cache, CACHE_KEY):
                return cls()
            problem: str | None = "the file is not valid JSON"
        else:
            problem = cls._problem(raw)
        if problem is not None:
            _warn(
                f"pytest-parexec: ignoring the cache entry {CACHE_KEY!r} ({problem}); it will "
                "be rewritten after this run. Run with --cache-clear to remove it now."
            )
            return cls()
        durations = {name: float(v) for name, v in raw["operations"].items()}
        return cls(durations, _seconds(raw.get("worker_start_s")))

    @staticmethod
    def _problem(raw: object) -> str | None:
        if not isinstance(raw, dict):
            return f"expected a JSON object, found {type(raw).__name__}"
        if raw.get("version") != HISTORY_VERSION:
            return f"unknown version {raw.get('version')!r}"
        operations = raw.get("operations")
        if not isinstance(operations, dict):
            return "'operations' is not an object"
        for name, value in operations.items():
            if _seconds(value) is None:
                return f"the duration of {name!r} is {value!r}, not a number of seconds"
        start = raw.get("worker_start_s")
        if start is not None and _seconds(start) is None:
            return f"'worker_start_s' is {start!r}, not a number of seconds"
        return None

    def learn(self, measured: Mapping[str, float], worker_start_s: float | None) -> None:
        """Fold one run's measurements into the averages."""
        for name, seconds in measured.items():
            old = self.durations.get(name)
            self.durations[name] = seconds if old is None else old + SMOOTHING * (seconds - old)
        if worker_start_s is not None:
            old_start = self.worker_start_s
            self.worker_start_s = (
                worker_start_s if old_start is None else old_start + SMOOTHING * (worker_start_s - old_start)
            )

    def save(self, cache: Any) -> None:
        if cache is None:
            return
        cache.set(
            CACHE_KEY,
            {
                "version": HISTORY_VERSION,
                "operations": {name: round(s, 4) for name, s in sorted(self.durations.items())},
                "worker_start_s": round(self.worker_start_s, 4) if self.worker_start_s is not None else None,
            },
        )
