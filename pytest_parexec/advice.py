"""Recommendations computed from a run: only those that apply, one line each, with numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from .planner import critical_path

if TYPE_CHECKING:
    from .report import Report

__all__ = ["IDLE_BELOW", "SHORT_S", "recommendations"]

#: An operation shorter than this costs more as a worker round trip than in-process.
SHORT_S: Final = 0.05
#: Workers busy for less than this share of the plan's wall time are mostly idle.
IDLE_BELOW: Final = 0.5
#: The critical path's heaviest operation is reported when it is at least this share of it.
DOMINANT_SHARE: Final = 0.5
#: Savings smaller than this are not worth a line.
MIN_GAIN_S: Final = 0.1


def _dominant(report: Report, depends: Mapping[str, Sequence[str]]) -> str | None:
    durations = {
        op["name"]: op["duration_s"] or 0.0
        for op in report["operations"]
        if op["status"] in ("passed", "recovered")
    }
    path = report["critical_path"]
    length = report["critical_path_s"]
    if len(path) == 0 or length <= 0:
        return None
    heaviest = max(path, key=lambda name: durations.get(name, 0.0))
    share = durations.get(heaviest, 0.0) / length
    if share < DOMINANT_SHARE:
        return None
    without = {**durations, heaviest: 0.0}
    _, shorter = critical_path({n: depends.get(n, ()) for n in without}, without)
    gain = length - shorter
    if gain < MIN_GAIN_S:
        return None
    return (
        f"{heaviest} takes {durations[heaviest]:.2f}s, {share:.0%} of the {length:.2f}s critical "
        f"path: setup could be up to {gain:.2f}s shorter if it were faster or split"
    )


def _short(report: Report) -> str | None:
    if report["mode"] != "parallel":
        return None
    short = [
        op["name"]
        for op in report["operations"]
        if op["duration_s"] is not None and op["duration_s"] < SHORT_S and op["status"] == "passed"
    ]
    if not short:
        return None
    names = ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
    return (
        f"{len(short)} operation{'s' * (len(short) != 1)} took under {SHORT_S:.2f}s ({names}): "
        "in-process they would skip the worker round trip; a plain session fixture would be cheaper"
    )


def _idle(report: Report) -> str | None:
    workers = report["workers"]
    wall = report["wall_s"]
    if report["mode"] != "parallel" or workers <= 1 or wall <= 0:
        return None
    busy = report["sequential_s"] / (workers * wall)
    if busy >= IDLE_BELOW:
        return None
    enough = max(1, math.ceil(report["sequential_s"] / wall))
    if enough >= workers:
        return None
    if report.get("tx"):
        # --parexec-tx fixes the count (one worker per spec): --parexec-workers would not apply.
        return (
            f"workers were busy {busy:.0%} of the time: {enough} --parexec-tx "
            f"spec{'s' * (enough != 1)} would do (this run used {workers})"
        )
    return (
        f"workers were busy {busy:.0%} of the time: --parexec-workers={enough} would do "
        f"(this run used {workers})"
    )


def _sequential_phases(report: Report, depends: Mapping[str, Sequence[str]]) -> list[str]:
    if report["mode"] != "parallel":
        return []  # the mode alone says why phases ran one operation at a time
    lines = []
    for phase in report["phases"]:
        members = phase["operations"]
        if phase["kind"] != "sequential" or len(members) < 2:
            continue
        ran = {op["name"] for op in report["operations"] if op["status"] in ("passed", "recovered")}
        inside = [
            (dep, name)
            for name in members
            for dep in depends.get(name, ())
            if dep in members and dep in ran and name in ran
        ]
        if len(inside) == 1:
            dep, name = inside[0]
            lines.append(
                f"phase {phase['group']} ran sequentially ({phase['duration_s']:.2f}s) because "
                f"{name} depends on {dep}"
            )
    return lines


def recommendations(report: Report) -> list[str]:
    """The advice lines for ``report``, most valuable first; empty when none applies."""
    depends = {op["name"]: op["depends"] for op in report["operations"]}
    found = [_dominant(report, depends), _short(report), _idle(report)]
    lines = [line for line in found if line is not None]
    return lines + _sequential_phases(report, depends)
