"""The few places where pytest-parexec needs other code's internals, isolated here.

pytest has no public API for which fixture definitions an item resolves (used by
many plugins, e.g. pytest-django, through the same attribute), nor for the
session's TempPathFactory outside of a fixture; pytest-cov none for whether it
is measuring this session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest


def fixture_definitions(item: pytest.Item) -> Mapping[str, Sequence[Any]]:
    """``name -> FixtureDef`` chain (last one wins) for ``item``, or {} for non-Python items."""
    info = getattr(item, "_fixtureinfo", None)
    return getattr(info, "name2fixturedefs", None) or {}


def tmp_path_factory(config: pytest.Config) -> pytest.TempPathFactory:
    """The session's TempPathFactory, the one the ``tmp_path_factory`` fixture returns."""
    factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
    return factory


def pytest_cov_active(config: pytest.Config) -> bool:
    """Whether pytest-cov measures this session (and so combines data files itself)."""
    plugin = config.pluginmanager.get_plugin("_cov")
    return getattr(plugin, "cov_controller", None) is not None


def cache_entry_exists(cache: Any, key: str) -> bool:
    """Whether pytest's cache has a file for ``key`` (``Cache.get`` hides unreadable ones)."""
    path = getattr(cache, "_getvaluepath", None)
    return bool(path is not None and path(key).is_file())
