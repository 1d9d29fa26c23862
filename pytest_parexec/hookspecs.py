"""Hooks that pytest-parexec calls, for other plugins and conftest.py files.

Registered in ``pytest_addhooks``; implement them with
``@pytest.hookimpl(optionalhook=True)`` so that a plugin also loads without
pytest-parexec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .operations import Operation
    from .views import AttemptView, PlanView

hookspec = pytest.hookspec


@hookspec(firstresult=True)
def pytest_parexec_classify(operation: Operation) -> str | None:
    """Return the group of ``operation`` (models, logic, configs, other or tests),
    overriding ``group=`` and the keyword rules; None leaves it as it is.

    Called once per operation when the plan is built; the first non-None result wins.
    """


@hookspec
def pytest_parexec_plan(plan: PlanView) -> None:
    """Called with a read-only view of the plan before it runs: operations in
    plan order, their dependencies, groups and learned durations."""


@hookspec
def pytest_parexec_operation_finished(result: AttemptView) -> None:
    """Called in the pytest process after each attempt of an operation, with its
    name, status, attempt number, duration, worker and error."""


@hookspec
def pytest_parexec_summary(summary: Any, terminalreporter: Any) -> None:
    """Called while the parallel execution summary is written; ``summary`` is the
    JSON report as a dict. Add lines with ``terminalreporter.write_line``."""
