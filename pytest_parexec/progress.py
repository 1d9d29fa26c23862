"""Live progress while the plan runs, through pytest's own terminal writer.

Three ways to show it, chosen once per session:
- ``block``: on a terminal with markup, a block redrawn in place;
- ``lines``: elsewhere (CI logs, pipes, ``--color=no``), one plain line per start and end;
- ``quiet`` (``-q``): nothing until the summary.
``-v`` describes the plan before it runs and prints time-stamped events.
"""

from __future__ import annotations

import dataclasses
import queue
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, final

from .executor import EventKind, OperationResult, PlanRun, ProgressEvent, Status
from .planner import GROUP_ORDER, Plan
from .report import compute_phases

__all__ = ["Follower", "Progress", "clock", "follow"]

#: Above this many operations the block shows only those running or in trouble.
BLOCK_LIMIT: Final = 20
BAR_WIDTH: Final = 10


def clock(seconds: float) -> str:
    """``[MM:SS.cc]`` since the plan started."""
    centis = round(max(0.0, seconds) * 100)  # round once, so 59.999 s is [01:00.00]
    minutes, centis = divmod(centis, 6000)
    return f"[{minutes:02d}:{centis // 100:02d}.{centis % 100:02d}]"


@dataclasses.dataclass
class _Row:
    state: str = "waiting"
    worker: str | None = None
    started: float = 0.0
    duration: float | None = None
    attempt: int = 0


@final
class Progress:
    """Shows one plan's progress on ``terminal`` (a pytest TerminalReporter)."""

    def __init__(
        self,
        terminal: Any,
        plan: Plan,
        expected: Mapping[str, float],
        *,
        style: str,
        verbose: bool,
        workers: int,
        mode: str,
    ) -> None:
        self.terminal = terminal
        self.plan = plan
        self.expected = expected
        self.style = "lines" if verbose and style == "block" else style
        self.verbose = verbose
        self.workers = workers
        self.mode = mode
        self.rows = {name: _Row() for name in plan.order}
        self.drawn = 0
        self.started = time.perf_counter()

    @staticmethod
    def style_for(terminal: Any, verbosity: int) -> str:
        if terminal is None or verbosity < 0:
            return "quiet"
        if getattr(terminal, "isatty", False) and getattr(terminal, "hasmarkup", False):
            return "block"
        return "lines"

    def inherit(self, results: Mapping[str, OperationResult]) -> None:
        """Operations an earlier plan of this session finished: shown as they ended."""
        for name, result in results.items():
            row = self.rows[name]
            row.state = result.status.value
            if result.last is not None:
                row.duration = result.last.duration_s

    # -- before ----------------------------------------------------------------

    def before(self) -> None:
        """``-v``: per phase, what can run at once, what it shares, the strategy and expected time."""
        if self.style == "quiet" or not self.verbose:
            return
        write = self.terminal.write_line
        where = f"on {_count(self.workers, 'worker')}" if self.workers else "in the pytest process"
        write(f"parexec: {_count(len(self.plan), 'operation')}, {self.mode} {where}")
        for group in [*GROUP_ORDER, *sorted({n.group for n in self.plan.nodes.values()} - set(GROUP_ORDER))]:
            members = [n for n in self.plan.order if self.plan.nodes[n].group == group]
            if not members:
                continue
            independent = [n for n in members if not set(self.plan.nodes[n].depends) & set(members)]
            uses: dict[str, int] = {}
            for name in members:
                for dep in self.plan.nodes[name].depends:
                    uses[dep] = uses.get(dep, 0) + 1
            shared = sorted(dep for dep, count in uses.items() if count > 1)
            strategy = "parallel" if len(independent) > 1 and self.mode == "parallel" else "sequential"
            known = [self.expected[n] for n in members if n in self.expected]
            if len(known) == len(members):
                lanes = max(1, min(len(independent), self.workers or 1))
                estimate = f"expected {max(max(known), sum(known) / lanes):.2f}s (learned)"
            else:
                estimate = "no learned duration yet"
            write(
                f"  {group}: {_count(len(members), 'operation')}, {len(independent)} independent, shared "
                f"dependencies: {', '.join(shared) or 'none'}; {strategy}; {estimate}"
            )

    # -- during ----------------------------------------------------------------

    def handle(self, event: ProgressEvent) -> None:
        row = self.rows[event.name]
        if event.kind is EventKind.STARTED:
            row.state, row.worker, row.started, row.attempt = (
                "running",
                event.worker,
                event.time_s,
                event.attempt,
            )
            self._line(f"{clock(event.time_s)} {event.name} started on {event.worker}", event)
        elif event.kind is EventKind.FINISHED:
            row.duration = event.duration_s
            state = "passed" if event.ok else ("retrying" if event.retrying else "failed")
            row.state = state
            self._line(
                f"{clock(event.time_s)} {event.name} {state} on {event.worker} ({event.duration_s:.2f}s)",
                event,
            )
        elif event.status in (Status.SKIPPED, Status.UP_TO_DATE):
            row.state = event.status.value
            self._line(f"{clock(event.time_s)} {event.name} {event.status.value}", event)
        elif event.status is not None:
            row.state = event.status.value
        self.tick()

    def _line(self, text: str, event: ProgressEvent) -> None:
        if self.style == "lines":
            self.terminal.write_line(f"parexec: {text}" if not self.verbose else text)

    def tick(self) -> None:
        """Redraw the block (elapsed times move even when nothing happens)."""
        if self.style != "block":
            return
        # A line longer than the terminal wraps and would break the cursor arithmetic.
        width = max(20, shutil.get_terminal_size(fallback=(80, 24)).columns - 1)
        lines = [line[:width] for line in self._block()]
        self._erase()
        for line in lines:
            self.terminal.write_line(line)
        self.drawn = len(lines)

    def _erase(self) -> None:
        if self.drawn:
            # Up to the block's first line, then clear to the end of the screen.
            self.terminal.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _block(self) -> list[str]:
        now = time.perf_counter() - self.started
        done = sum(1 for r in self.rows.values() if r.state in ("passed", "failed", "skipped", "recovered"))
        failed = sum(1 for r in self.rows.values() if r.state == "failed")
        lines = [f"parexec: {done}/{len(self.rows)} done, {failed} failed, {now:.1f}s"]
        many = len(self.rows) > BLOCK_LIMIT
        for group in GROUP_ORDER + tuple(
            sorted({n.group for n in self.plan.nodes.values()} - set(GROUP_ORDER))
        ):
            names = [n for n in self.plan.order if self.plan.nodes[n].group == group]
            if many:
                names = [n for n in names if self.rows[n].state in ("running", "retrying", "failed")]
            if not names:
                continue
            lines.append(f"  {group}")
            for name in names:
                lines.append("    " + self._row_text(name, now))
        if many:
            waiting = sum(1 for r in self.rows.values() if r.state == "waiting")
            lines.append(f"  ... {waiting} waiting, {done - failed} finished")
        return lines

    def _row_text(self, name: str, now: float) -> str:
        row = self.rows[name]
        text = f"{name:<24} {row.state:<9}"
        if row.state == "running":
            elapsed = now - row.started
            text += f" {elapsed:6.2f}s"
            expected = self.expected.get(name)
            if expected:
                filled = min(BAR_WIDTH, int(BAR_WIDTH * elapsed / expected))
                text += f" [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] of ~{expected:.2f}s"
            if row.worker:
                text += f" on {row.worker}"
        elif row.duration is not None:
            text += f" {row.duration:6.2f}s"
        return text

    # -- after -----------------------------------------------------------------

    def finish(self, run: PlanRun) -> None:
        """Replace the block with one line per phase."""
        if self.style == "quiet":
            return
        self._erase()
        for phase in compute_phases(run):
            count = len(phase["operations"])
            self.terminal.write_line(
                f"parexec: {phase['group']} [{phase['kind']}] {count} operation{'s' * (count != 1)} "
                f"in {phase['duration_s']:.2f}s"
            )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


@final
class Follower:
    """Feeds one run's events to the display and to callbacks; knows when the run is done."""

    def __init__(
        self,
        run_size: int,
        progress: Progress,
        on_finished: Callable[[ProgressEvent], None] | None = None,
        on_result: Callable[[OperationResult], None] | None = None,
    ) -> None:
        self.remaining = run_size
        self.progress = progress
        self.on_finished = on_finished
        self.on_result = on_result

    def handle(self, event: ProgressEvent) -> None:
        if event.kind is EventKind.RESULT:
            self.remaining -= 1
            if self.on_result is not None and event.result is not None:
                self.on_result(event.result)
        self.progress.handle(event)
        if event.kind is EventKind.FINISHED and self.on_finished is not None:
            self.on_finished(event)


def follow(run: PlanRun, follower: Follower) -> None:
    """Show a background ``run`` until every operation has a result."""
    block = follower.progress.style == "block"
    while follower.remaining > 0:
        try:
            event = run.events.get(timeout=0.2 if block else None)
        except queue.Empty:  # only time moved on
            follower.progress.tick()
            continue
        follower.handle(event)
    follower.progress.finish(run)
