"""The parallel execution summary: computed once, printed, and written as JSON."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypedDict, cast

from ._files import atomic_write
from .advice import recommendations
from .executor import OperationResult, PlanRun, Status
from .planner import GROUP_ORDER, critical_path

__all__ = [
    "REPORT_VERSION",
    "SUMMARY_TITLE",
    "Report",
    "build_report",
    "compute_phases",
    "summary_lines",
    "write_json",
    "write_summary",
    "write_text",
]

REPORT_VERSION: Final = 1
SUMMARY_TITLE: Final = "parallel execution summary"


class PhaseReport(TypedDict):
    group: str
    kind: str
    operations: list[str]
    start_s: float | None
    end_s: float | None
    duration_s: float


class AttemptReport(TypedDict):
    attempt: int
    worker: str
    pid: int | None
    start_s: float
    end_s: float
    duration_s: float
    status: str
    error: str | None


class OperationReport(TypedDict, total=False):
    name: str
    xdist_worker: str | None
    waited_by: list[str]
    kind: str
    files_written: list[str]
    files_unchanged: list[str]
    files_deleted: list[str]
    group: str
    status: str
    attempts: int
    worker: str | None
    pid: int | None
    host: str | None
    spec: str | None
    start_s: float | None
    end_s: float | None
    duration_s: float | None
    depends: list[str]
    expected_s: float | None
    error: str | None
    blocked_by: str | None
    teardown_error: str | None
    attempt_history: list[AttemptReport]


class _Optional(TypedDict, total=False):
    #: Under pytest-xdist: which xdist worker ran the plan, who waited and how long.
    xdist: dict[str, Any]


class _Totals(TypedDict):
    """What a report sums up from its operations (see ``_totals``)."""

    wall_s: float
    sequential_s: float
    saved_s: float
    efficiency: float
    critical_path: list[str]
    critical_path_s: float
    counts: dict[str, int]
    phases: list[PhaseReport]


class Report(_Totals, _Optional):
    version: int
    mode: str
    mode_reason: str
    workers: int
    setup_s: float
    operations: list[OperationReport]
    recommendations: list[str]
    #: Workers that could not start (unreachable --parexec-tx specs), one line each.
    worker_errors: list[str]
    #: The --parexec-tx specs the run was given, one per worker; empty for local workers.
    tx: list[str]
    #: Unix time of the plan's start, from which start_s and end_s count.
    started_unix: float


def _r(value: float) -> float:
    return round(value, 4)


def _operation(
    name: str, group: str, depends: Sequence[str], expected: float | None, result: OperationResult
) -> OperationReport:
    last = result.last
    return {
        "name": name,
        "group": group,
        "status": result.status.value,
        "attempts": len(result.attempts),
        "worker": last.worker if last else None,
        "pid": last.pid if last else None,
        "host": last.host if last else None,
        "spec": last.spec if last else None,
        "start_s": _r(last.start_s) if last else None,
        "end_s": _r(last.end_s) if last else None,
        "duration_s": _r(last.duration_s) if last else None,
        "depends": list(depends),
        "expected_s": _r(expected) if expected is not None else None,
        "error": result.error,
        "blocked_by": result.blocked_by,
        "teardown_error": result.teardown_error,
        "attempt_history": [
            {
                "attempt": a.number,
                "worker": a.worker,
                "pid": a.pid,
                "start_s": _r(a.start_s),
                "end_s": _r(a.end_s),
                "duration_s": _r(a.duration_s),
                "status": "passed" if a.ok else "failed",
                "error": a.error,
            }
            for a in result.attempts
        ],
    }


def _overlap(intervals: list[tuple[float, float]]) -> bool:
    intervals.sort()
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(intervals))


def _phases(members: Sequence[tuple[str, str, list[tuple[float, float]]]]) -> list[PhaseReport]:
    """Each group as a phase, from ``(name, group, attempt spans)`` in plan order."""
    present = {group for _, group, _ in members}
    phases: list[PhaseReport] = []
    for group in [*GROUP_ORDER, *sorted(present - set(GROUP_ORDER))]:
        inside = [(name, spans) for name, g, spans in members if g == group]
        if not inside:
            continue
        spans = [span for _, attempt_spans in inside for span in attempt_spans]
        start = min((s for s, _ in spans), default=None)
        end = max((e for _, e in spans), default=None)
        phases.append(
            {
                "group": group,
                "kind": "parallel" if _overlap(list(spans)) else "sequential",
                "operations": [name for name, _ in inside],
                "start_s": _r(start) if start is not None else None,
                "end_s": _r(end) if end is not None else None,
                "duration_s": _r(end - start) if start is not None and end is not None else 0.0,
            }
        )
    return phases


def compute_phases(run: PlanRun) -> list[PhaseReport]:
    """Each group of ``run`` as a phase: its operations, whether they overlapped, its span."""
    return _phases(
        [
            (name, run.plan.nodes[name].group, [(a.start_s, a.end_s) for a in run.results[name].attempts])
            for name in run.plan.order
            if name in run.results
        ]
    )


def _totals(operations: Sequence[OperationReport]) -> _Totals:
    """What the report sums up, from its operations alone (so that merged reports can
    be summed up again)."""
    attempts = [a for op in operations for a in op["attempt_history"]]
    sequential = sum(a["duration_s"] for a in attempts)
    wall = (max(a["end_s"] for a in attempts) - min(a["start_s"] for a in attempts)) if attempts else 0.0
    saved = sequential - wall
    durations = {
        op["name"]: op["duration_s"]
        for op in operations
        if Status(op["status"]).ok and op["duration_s"] is not None
    }
    depends = {op["name"]: op["depends"] for op in operations}
    path, path_s = critical_path({n: depends[n] for n in durations}, durations)
    counts = {status.value: 0 for status in Status}
    for op in operations:
        counts[op["status"]] += 1
    counts["retried"] = sum(1 for op in operations if op["attempts"] > 1)
    return {
        "wall_s": _r(wall),
        "sequential_s": _r(sequential),
        "saved_s": _r(saved),
        "efficiency": _r(saved / sequential) if sequential > 0 else 0.0,
        "critical_path": path,
        "critical_path_s": _r(path_s),
        "counts": counts,
        "phases": _phases(
            [
                (op["name"], op["group"], [(a["start_s"], a["end_s"]) for a in op["attempt_history"]])
                for op in operations
            ]
        ),
    }


def build_report(
    run: PlanRun,
    mode: str,
    mode_reason: str,
    setup_s: float,
    kinds: Mapping[str, str] | None = None,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
    worker_errors: Sequence[str] = (),
    tx: Sequence[str] = (),
) -> Report:
    """Everything the summary, the JSON report and the trace show, from one run.

    ``kinds`` says which operations are generators or commands; ``extras`` adds
    keys to operations (a generator's files_written, files_unchanged, files_deleted).
    """
    plan = run.plan
    results = run.results
    operations = []
    for name in plan.order:
        if name not in results:
            continue
        node = plan.nodes[name]
        entry = _operation(name, node.group, node.depends, node.expected_s, results[name])
        entry["kind"] = (kinds or {}).get(name, "batchable")
        entry.update((extras or {}).get(name, {}))  # type: ignore[typeddict-item]
        operations.append(entry)
    totals = _totals(operations)
    report: Report = {
        "version": REPORT_VERSION,
        "mode": mode,
        "mode_reason": mode_reason,
        "workers": run.workers,
        "setup_s": _r(setup_s),
        "wall_s": totals["wall_s"],
        "sequential_s": totals["sequential_s"],
        "saved_s": totals["saved_s"],
        "efficiency": totals["efficiency"],
        "critical_path": totals["critical_path"],
        "critical_path_s": totals["critical_path_s"],
        "counts": totals["counts"],
        "phases": totals["phases"],
        "operations": operations,
        "recommendations": [],
        "worker_errors": list(worker_errors),
        "tx": list(tx),
        # The plan's clock, as Unix time: where every start_s and end_s counts from.
        "started_unix": round(time.time() - run.now(), 4),
    }
    report["recommendations"] = recommendations(report)
    return report


def write_text(path: Path, text: str) -> None:
    """Write ``path`` atomically (a temporary file, then a rename): never half a file."""
    atomic_write(path, text.encode("utf-8"))


def write_json(report: Mapping[str, Any], path: Path) -> None:
    """Write ``report`` to ``path`` as JSON, atomically."""
    write_text(path, json.dumps(report, indent=2) + "\n")


def _shift(report: Report, seconds: float) -> None:
    """Move every time of ``report``'s operations ``seconds`` later."""
    records: list[dict[str, Any]] = []
    for op in report["operations"]:
        records += [cast("dict[str, Any]", op), *(cast("dict[str, Any]", a) for a in op["attempt_history"])]
    for record in records:
        for key in ("start_s", "end_s"):
            if record.get(key) is not None:
                record[key] = _r(record[key] + seconds)


def merge_xdist_reports(own: Report | None, outputs: Sequence[Mapping[str, Any]]) -> Report | None:
    """One report for the whole xdist run, from what each worker sent the controller.

    The worker that led last holds every result (it continued from what was
    published before it); the others add who waited for what.
    """
    leaders = [out for out in outputs if out.get("report")]
    if not leaders:
        return own
    base = max(leaders, key=lambda out: len(out["report"]["operations"]))
    report: Report = base["report"]
    ran_by = {name: out["worker"] for out in leaders for name in out.get("ran", [])}
    waited: dict[str, list[str]] = {}
    for out in outputs:
        for name in out.get("waited", {}):
            waited.setdefault(name, []).append(out["worker"])
    if own is not None:  # operations the controller ran (generators and their dependencies)
        # The controller's plan ran first: count the leader's times from its start too.
        _shift(report, report["started_unix"] - own["started_unix"])
        report["started_unix"] = own["started_unix"]
        names = {op["name"] for op in report["operations"]}
        report["operations"][:0] = [op for op in own["operations"] if op["name"] not in names]
        ran_by.update({op["name"]: "controller" for op in own["operations"] if op["name"] not in ran_by})
        cast("dict[str, Any]", report).update(_totals(report["operations"]))
        report["recommendations"] = recommendations(report)
    for op in report["operations"]:
        op["xdist_worker"] = ran_by.get(op["name"], op.get("xdist_worker"))
        op["waited_by"] = sorted(waited.get(op["name"], []))
    report["xdist"] = {
        "leader": base["worker"],
        "workers": sorted(out["worker"] for out in outputs),
        "waited_s": {out["worker"]: round(sum(out.get("waited", {}).values()), 4) for out in outputs},
    }
    return report


def summary_lines(report: Report) -> list[str]:
    """The lines of the terminal section, without its heading."""
    lines = []
    for phase in report["phases"]:
        ops = ", ".join(phase["operations"])
        lines.append(f"{phase['group']} [{phase['kind']}] {ops}: {phase['duration_s']:.2f}s")
    counts = report["counts"]
    total = len(report["operations"])
    workers = report["workers"]
    where = f"on {workers} worker{'s' * (workers != 1)}" if workers else "in the pytest process"
    lines.append(
        f"{total} operation{'s' * (total != 1)} {where} ({report['mode']} mode: {report['mode_reason']})"
    )
    lines.append(f"sequential estimate: {report['sequential_s']:.2f}s")
    lines.append(f"parallel actual: {report['wall_s']:.2f}s")
    saved = round(report["saved_s"], 2) + 0.0  # + 0.0: no "-0.00s"
    efficiency = round(report["efficiency"] * 100) + 0
    lines.append(f"time saved: {saved:.2f}s (efficiency {efficiency}%)")
    lines.append(f"setup wait: {report['setup_s']:.2f}s from end of collection to last result")
    if report["critical_path"]:
        chain = " -> ".join(report["critical_path"])
        lines.append(f"critical path: {chain} ({report['critical_path_s']:.2f}s)")
    trouble = {k: counts[k] for k in ("failed", "recovered", "skipped", "retried") if counts.get(k)}
    if trouble:
        lines.append("outcomes: " + ", ".join(f"{v} {k}" for k, v in trouble.items()))
    xdist = report.get("xdist")
    if xdist:
        waiting = {w: s for w, s in xdist["waited_s"].items() if w != xdist["leader"]}
        lines.append(
            f"xdist: each operation ran once, on {xdist['leader']}; "
            + (
                ", ".join(f"{w} waited {s:.2f}s" for w, s in sorted(waiting.items()))
                or "no other worker waited"
            )
        )
    remote = sorted({(op.get("worker"), op.get("spec")) for op in report["operations"] if op.get("spec")})
    remote = [(w, spec) for w, spec in remote if spec and "popen" not in spec.split("//")[0]]
    if remote:
        lines.append("remote workers: " + ", ".join(f"{w} = {spec}" for w, spec in remote))
    lines.extend(f"worker error: {line}" for line in report["worker_errors"])
    lines.extend(f"advice: {line}" for line in report["recommendations"])
    return lines


def write_summary(
    terminal: Any, report: Report, errors: Sequence[str] = (), failures: Sequence[str] = ()
) -> None:
    """Append the summary section to pytest's terminal report.

    ``errors`` are teardown errors; ``failures`` operations that failed where no
    test shows it (a setup command no test requests).
    """
    terminal.write_sep("=", SUMMARY_TITLE)
    for line in summary_lines(report):
        terminal.write_line(line)
    if failures:
        terminal.write_sep("-", f"failed operations no test requested ({len(failures)})", red=True)
    for failure in failures:
        terminal.write_line(failure, red=True)
    if errors:
        terminal.write_sep("-", f"teardown errors ({len(errors)})", red=True)
    for error in errors:
        terminal.write_line(error, red=True)
