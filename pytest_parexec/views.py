"""Read-only views handed to other plugins' hooks."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import final

from .planner import Plan

__all__ = ["AttemptView", "PlanView"]


@final
@dataclasses.dataclass(frozen=True)
class PlanView:
    """The plan as ``pytest_parexec_plan`` sees it; nothing in it can be changed."""

    #: Operation names in plan order (dependencies first).
    operations: tuple[str, ...]
    dependencies: Mapping[str, tuple[str, ...]]
    groups: Mapping[str, str]
    #: Learned durations in seconds; None where none is known yet.
    expected_s: Mapping[str, float | None]
    #: "parallel" or "sequential", and why.
    mode: str
    mode_reason: str
    workers: int

    @classmethod
    def of(cls, plan: Plan, mode: str, mode_reason: str, workers: int) -> PlanView:
        nodes = plan.nodes
        return cls(
            operations=plan.order,
            dependencies=types.MappingProxyType({n: nodes[n].depends for n in plan.order}),
            groups=types.MappingProxyType({n: nodes[n].group for n in plan.order}),
            expected_s=types.MappingProxyType({n: nodes[n].expected_s for n in plan.order}),
            mode=mode,
            mode_reason=mode_reason,
            workers=workers,
        )


@final
@dataclasses.dataclass(frozen=True)
class AttemptView:
    """One finished attempt, as ``pytest_parexec_operation_finished`` sees it."""

    name: str
    #: "passed", "failed" or "retrying" (failed, another attempt follows).
    status: str
    attempt: int
    duration_s: float
    worker: str | None
    error: str | None
