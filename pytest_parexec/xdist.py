"""Each operation once per test run under pytest-xdist.

xdist workers of one run share a directory (the parent of their base temp
directories, keyed by xdist's test run id). The first worker to take the lead
lock runs the plan, with the usual parallel engine, and publishes every result
to a file; the others wait for the files they need. A leader that dies releases
its lock with its process: the next worker that finds a result missing and the
lock free takes over and runs what is left. Teardown waits until every worker
that joined the run has finished its tests (or died). Workers join before they
report their collection to the controller, which hands out no test before every
worker has reported: so no worker can join after the leader's tests are done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, final

import execnet
import filelock

from .executor import Attempt, OperationResult, Status
from .report import write_text

__all__ = ["POLL_S", "SharedRun"]

#: How often a waiting worker looks for a result file (files have no event to wait on).
POLL_S: Final = 0.05


def _unix(clock: float) -> float:
    """The Unix time of ``clock``, a ``time.perf_counter()`` value of this process.

    Attempt times count from the start of the plan that ran them, on a clock of
    that process; published as Unix times, every worker reads them on its own clock.
    """
    return time.time() - (time.perf_counter() - clock)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@final
class SharedRun:
    """The files xdist workers of one test run share."""

    def __init__(self, directory: Path, worker_id: str) -> None:
        self.directory = directory
        self.worker_id = worker_id
        directory.mkdir(parents=True, exist_ok=True)
        self._lead = filelock.FileLock(str(directory / "lead.lock"))
        self.leading = False

    @classmethod
    def for_worker(cls, basetemp: Path, workerinput: dict[str, Any]) -> SharedRun:
        return cls(basetemp.parent / f"parexec-{workerinput['testrunuid']}", str(workerinput["workerid"]))

    # -- who runs the plan ----------------------------------------------------

    def try_lead(self) -> bool:
        """Take the lead lock if nobody holds it; held until this process ends or releases it."""
        if not self.leading:
            try:
                self._lead.acquire(timeout=0)
            except filelock.Timeout:
                return False
            self.leading = True
        return True

    def release(self) -> None:
        if self.leading:
            self._lead.release()
            self.leading = False

    # -- results -------------------------------------------------------------

    def _result_path(self, name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        # str hashes differ between processes: name files by a digest instead.
        return self.directory / f"result-{safe[:60]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}.bin"

    def publish(self, result: OperationResult, clock: float) -> None:
        """Write ``result`` for the other workers (atomically); its attempts' times
        count from ``clock`` (the ``PlanRun.started_at`` of the run that made it)."""
        last = result.last
        origin = _unix(clock)
        data = {
            "name": result.name,
            "status": result.status.value,
            "value": result.value,
            "error": result.error,
            "message": result.message,
            "blocked_by": result.blocked_by,
            "worker": self.worker_id,
            "attempts": [
                [a.number, a.worker, a.pid, origin + a.start_s, origin + a.end_s, a.duration_s, a.ok, a.error]
                for a in result.attempts
            ],
            "output": last.output if last is not None else "",
        }
        path = self._result_path(result.name)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(execnet.dumps(data))
        os.replace(tmp, path)

    def load(self, name: str, clock: float) -> OperationResult | None:
        """The result published for ``name``, with its times counted from ``clock``
        (a ``time.perf_counter()`` value of this process); None if there is none yet."""
        path = self._result_path(name)
        try:
            data = execnet.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        origin = _unix(clock)
        attempts = [
            Attempt(
                number=n,
                worker=w,
                pid=pid,
                host=None,
                spec=None,
                start_s=s - origin,
                end_s=e - origin,
                duration_s=d,
                ok=ok,
                error=err,
                output=data["output"] if n == len(data["attempts"]) else "",
            )
            for n, w, pid, s, e, d, ok, err in data["attempts"]
        ]
        return OperationResult(
            name=data["name"],
            status=Status(data["status"]),
            attempts=attempts,
            value=data["value"],
            error=data["error"],
            message=data["message"],
            blocked_by=data["blocked_by"],
        )

    def loaded(self, names: Iterable[str], clock: float) -> dict[str, OperationResult]:
        found = {}
        for name in names:
            result = self.load(name, clock)
            if result is not None:
                found[name] = result
        return found

    def mark_plan_done(self) -> None:
        """Every result of the leader's plan is published."""
        write_text(self.directory / "plan-done", "")

    def plan_done(self) -> bool:
        return (self.directory / "plan-done").exists()

    # -- who is still running tests ---------------------------------------------

    def join(self) -> None:
        write_text(self.directory / f"worker-{self.worker_id}.json", json.dumps({"pid": os.getpid()}))

    def finished_tests(self) -> None:
        write_text(self.directory / f"done-{self.worker_id}", "")

    def wait_until_all_done(self, timeout_s: float | None = None) -> None:
        """Until every worker that joined has finished its tests or died."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            pending = []
            for entry in self.directory.glob("worker-*.json"):
                worker = entry.name[len("worker-") : -len(".json")]
                if (self.directory / f"done-{worker}").exists():
                    continue
                try:
                    pid = int(json.loads(entry.read_text())["pid"])
                except (OSError, ValueError, KeyError):
                    continue
                if _pid_alive(pid):
                    pending.append(worker)
            if not pending:
                return
            time.sleep(POLL_S)
