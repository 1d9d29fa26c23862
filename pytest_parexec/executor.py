"""The worker pool over execnet: start, dispatch, retry, timeout, replace, shut down.

One scheduler thread owns every worker and every operation's state; the pytest
process talks to it only through a queue of commands, and channels feed it a
queue of events. So a plan can run in the background while a fixture waits for
one result (:meth:`PlanRun.wait`), and one place decides what happens when a
worker dies (:meth:`Executor._on_worker_lost`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, final

import execnet

from . import remote
from .planner import Plan

__all__ = [
    "Attempt",
    "EventKind",
    "Executor",
    "InProcessRunner",
    "OperationResult",
    "PlanRun",
    "ProgressEvent",
    "Status",
    "Task",
    "WorkerInit",
]

#: How long a worker may take to start and answer its first message.
START_TIMEOUT_S: Final = 60.0
#: How long a remote worker (socket, ssh) may take to answer before it counts as unreachable.
REMOTE_START_TIMEOUT_S: Final = 15.0
#: How long shutdown waits for workers to acknowledge that they stopped.
STOP_TIMEOUT_S: Final = 30.0
#: How long execnet's terminate waits for gateways to close before killing them.
STOP_GRACE_S: Final = 2.0


class Status(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    RECOVERED = "recovered"
    SKIPPED = "skipped"
    UP_TO_DATE = "up-to-date"

    @property
    def ok(self) -> bool:
        return self in (Status.PASSED, Status.RECOVERED, Status.UP_TO_DATE)


@final
@dataclasses.dataclass(frozen=True)
class WorkerInit:
    """How to prepare a worker process: directory, import path, environment."""

    #: Where local workers start: the directory pytest runs in.
    cwd: str
    #: The rootdir: remote workers' paths are relative to it (their chdir).
    rootdir: str
    sys_path: tuple[str, ...]
    env: Mapping[str, str]
    #: A directory under pytest's base temp where workers keep captured output.
    scratch: str
    #: Modules to import while the worker waits for work (overlaps collection).
    preload: tuple[str, ...] = ()
    #: When the pytest process is measured by coverage.py: how workers measure themselves.
    coverage: Mapping[str, Any] | None = None


@final
@dataclasses.dataclass(frozen=True)
class Task:
    """One operation as the executor sees it: where its function lives and how to call it."""

    name: str
    module: str
    file: str
    attribute: str
    params: tuple[str, ...]
    tmp_path: str | None
    retries: int
    timeout: float | None
    function: Callable[..., Any] | None = None
    #: Fixed keyword arguments (encoded), e.g. a generator's ``source``.
    constants: Mapping[str, object] = dataclasses.field(default_factory=dict)
    #: Called with the encoded arguments before running; True means the operation's
    #: work is already done and it finishes as up-to-date without running.
    precheck: Callable[[Mapping[str, object]], bool] | None = None
    #: Constants that are paths on the pytest host (a generator's ``source``, a
    #: command's ``cwd``): a remote worker gets those under the rootdir relative to
    #: its chdir, like the operation's module.
    host_paths: tuple[str, ...] = ()


@final
@dataclasses.dataclass(frozen=True)
class Attempt:
    """One run of an operation on one worker."""

    number: int
    worker: str
    pid: int | None
    host: str | None
    spec: str | None
    start_s: float
    end_s: float
    duration_s: float
    ok: bool
    error: str | None
    output: str


class EventKind(enum.Enum):
    STARTED = "started"
    FINISHED = "finished"
    RESULT = "result"


@final
@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Something that happened to an operation, for the live display."""

    kind: EventKind
    name: str
    #: Seconds since the plan started.
    time_s: float
    worker: str | None = None
    attempt: int = 0
    ok: bool = True
    duration_s: float = 0.0
    #: For FINISHED: the attempt failed and another will follow.
    retrying: bool = False
    #: For FINISHED: the failed attempt's error.
    error: str | None = None
    #: For RESULT: the final status, and the result itself.
    status: Status | None = None
    result: OperationResult | None = None


@dataclasses.dataclass
class OperationResult:
    """What became of an operation: its status, its attempts and, if it passed, its value."""

    name: str
    status: Status
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    #: The encoded value (see remote.encode); decode with remote.decode.
    value: object = None
    #: The traceback or reason of the failure, for failed and skipped operations.
    error: str | None = None
    message: str | None = None
    #: For a skipped operation: the failed dependency at the root of it.
    blocked_by: str | None = None
    teardown_error: str | None = None
    teardown_output: str = ""

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @classmethod
    def skipped(cls, name: str, root: str) -> OperationResult:
        """Not run because ``root``, a dependency (direct or not), failed."""
        return cls(
            name=name,
            status=Status.SKIPPED,
            blocked_by=root,
            message=f"not run: its dependency {root!r} failed",
        )


class _Event(enum.Enum):
    READY = "ready"
    START_FAILED = "start-failed"
    MESSAGE = "message"
    LOST = "lost"
    WARM = "warm"
    SUBMIT = "submit"
    TEARDOWN = "teardown"
    CANCEL = "cancel"
    CLOSE = "close"


_LOST: Final = object()

_PACKAGE_PARENT: Final = os.path.dirname(os.path.dirname(os.path.abspath(remote.__file__)))


def _bootstrap(entry: str) -> str:
    """Source that imports this package's worker code in a local worker and runs ``entry``."""
    return (
        "import sys\n"
        f"if {_PACKAGE_PARENT!r} not in sys.path: sys.path.append({_PACKAGE_PARENT!r})\n"
        f"from pytest_parexec.remote import {entry}\n"
        f"{entry}(channel)\n"
    )


_LOCAL_BOOTSTRAP: Final = _bootstrap("serve_channel")
#: Fork local workers from one prepared process where the platform can (see remote.serve_zygote).
FORK_SERVER: Final = hasattr(os, "fork") and sys.platform.startswith("linux")


@dataclasses.dataclass(eq=False)
class _Worker:
    id: str
    spec: str
    gateway: Any
    channel: Any
    pid: int
    host: str
    local: bool
    running: str | None = None
    attempt_start: float = 0.0
    deadline: float | None = None
    #: Generator operations whose teardown state lives in this worker.
    holds: set[str] = dataclasses.field(default_factory=set)
    tearing_down: str | None = None
    alive: bool = True
    #: Forked by the zygote (its exit status is the zygote's to collect).
    forked: bool = False


@final
class PlanRun:
    """The results of a plan as they arrive; safe to wait on from any thread."""

    def __init__(
        self,
        plan: Plan,
        workers: int,
        prior: PlanRun | None = None,
        listener: Callable[[ProgressEvent], None] | None = None,
    ) -> None:
        self.plan = plan
        #: Receives events directly, in the thread that makes them (an in-process
        #: run), instead of through the queue.
        self.listener = listener
        self.workers = workers
        self.results: dict[str, OperationResult] = {}
        #: A plan that continues ``prior`` shares its clock and starts with its results.
        self.started_at: float = prior.started_at if prior is not None else time.perf_counter()
        self.finished_at: float | None = None
        #: Every start, finish and result, in order, for the live display.
        self.events: queue.Queue[ProgressEvent] = queue.Queue()
        self._cond = threading.Condition()
        if prior is not None:
            # Inherited, not news: filled in without events (the display showed them).
            for name, result in prior.results.items():
                if name in plan.nodes:
                    self.results[name] = result
            if len(self.results) == len(plan):
                self.finished_at = time.perf_counter()

    @classmethod
    def of_results(
        cls, plan: Plan, results: Iterable[OperationResult], clock: float | None = None
    ) -> PlanRun:
        """A finished run holding ``results`` (e.g. published by another process), whose
        times count from ``clock`` (a ``time.perf_counter()`` value; default: now)."""
        run = cls(plan, workers=0)
        if clock is not None:
            run.started_at = clock
        for result in results:
            run._set(result)
        return run

    def now(self) -> float:
        return time.perf_counter() - self.started_at

    def _set(self, result: OperationResult) -> None:
        with self._cond:
            self.results[result.name] = result
            if len(self.results) == len(self.plan):
                self.finished_at = time.perf_counter()
            self._cond.notify_all()
        self._emit(
            ProgressEvent(EventKind.RESULT, result.name, self.now(), status=result.status, result=result)
        )

    def _emit(self, event: ProgressEvent) -> None:
        if self.listener is not None:
            self.listener(event)
        else:
            self.events.put(event)

    def wait(self, name: str) -> OperationResult:
        """Block until ``name`` has a final result."""
        with self._cond:
            while name not in self.results:
                self._cond.wait()
            return self.results[name]

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.plan)


def _is_local(spec: str) -> bool:
    return "popen" in spec.split("//")[0]


def _single_threaded() -> bool:
    """No other thread in this process, Python's or native (forking is safe)."""
    if threading.active_count() != 1:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class _ForkServer:
    """The zygote, reached over an execnet channel or a socket: one request at a time."""

    def __init__(self, pid: int, channel: Any = None, sock: Any = None) -> None:
        self.pid = pid
        #: A copy of the pytest process (remote.fork_zygote), not an execnet gateway.
        self.is_copy = sock is not None
        self._channel = channel
        self._sock = sock
        self._replies: Any = sock.makefile("rb") if sock is not None else None
        self._lock = threading.Lock()

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._channel is not None:
                self._channel.send(msg)
                reply: dict[str, Any] = self._channel.receive(timeout=START_TIMEOUT_S)
                return reply
            self._sock.settimeout(START_TIMEOUT_S)
            self._send_line(msg)
            line = self._replies.readline()
            if not line:
                raise EOFError("the fork server is gone")
            reply = json.loads(line)
            return reply

    def stop(self) -> None:
        """Ask it to exit by itself (a process killed mid-way leaves broken files behind)."""
        with contextlib.suppress(Exception), self._lock:
            if self._channel is not None:
                self._channel.send({"kind": "stop"})
            else:
                self._send_line({"kind": "stop"})

    def _send_line(self, msg: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(msg).encode() + b"\n")

    def kill(self) -> None:
        if self._sock is not None:
            # First, so that a request blocked on a reply ends (and frees the lock).
            with contextlib.suppress(OSError):
                self._sock.shutdown(2)
            with contextlib.suppress(OSError):
                self._sock.close()
        for kill in (os.killpg, os.kill):  # its group, and itself should it have none yet
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(self.pid, signal.SIGKILL)
        if self._sock is not None:  # a child of this process: reap it here
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)


@final
class Executor:
    """Starts workers, runs one plan on them, tears down, and stops them."""

    def __init__(
        self,
        init: WorkerInit,
        max_workers: int,
        specs: Sequence[str] = (),
        on_attempt: Callable[[str, Attempt], None] | None = None,
        fork_here: bool = False,
    ) -> None:
        """``fork_here``: the calling process may be forked into the zygote now (it
        has loaded pytest and the conftest.py files); done only if it has no thread."""
        self.init = init
        self.max_workers = max_workers
        #: Explicit execnet specs, one worker each; empty means local popen workers.
        self.specs = list(specs)
        self.on_attempt = on_attempt
        self.group = execnet.Group()
        self.events: queue.Queue[tuple[_Event, Any]] = queue.Queue()
        self.workers: dict[str, _Worker] = {}
        self.idle: list[_Worker] = []
        self.starting = 0
        self.started_total = 0
        self.start_errors: list[str] = []
        self._spawned_at: dict[str, float] = {}
        #: Workers still starting: when they count as failed, and their spec.
        self._start_deadlines: dict[str, tuple[float, str]] = {}
        #: Seconds from asking for each worker until it was ready to work.
        self.start_durations: list[float] = []
        self.run: PlanRun | None = None
        self.tasks: dict[str, Task] = {}
        # Everything below is owned by the scheduler thread.
        self.pending_teardowns: list[tuple[list[str], threading.Event]] = []
        self.retry_queue: list[str] = []
        self.attempt_counts: dict[str, int] = {}
        #: Every attempt of every operation so far, in order.
        self.attempts: dict[str, list[Attempt]] = {}
        self.started_ops: set[str] = set()
        #: The id of the worker being started for the next retry.
        self.fresh: str | None = None
        #: The operation whose retry is running (alone).
        self.retrying: str | None = None
        self.cancelled = False
        self._spawn_queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        #: The fork server, once started: see remote.fork_zygote and remote.serve_zygote.
        self._zygote: _ForkServer | None = None
        self._zygote_failed = False
        if fork_here and FORK_SERVER and not specs and _single_threaded():
            # Before this executor's own threads start. Should it fail, the spawner
            # starts a fresh-interpreter fork server instead.
            with contextlib.suppress(OSError):
                pid, sock = remote.fork_zygote(init.rootdir)
                self._zygote = _ForkServer(pid, sock=sock)
        self._spawn_thread = threading.Thread(target=self._spawner, name="parexec-spawner", daemon=True)
        self._spawn_thread.start()
        self._thread = threading.Thread(target=self._loop, name="parexec-scheduler", daemon=True)
        self._thread.start()
        self._closed = False

    # -- the pytest side -----------------------------------------------------

    @property
    def worker_start_s(self) -> float | None:
        """The median time a worker took to start in this session, if any started."""
        if not self.start_durations:
            return None
        ordered = sorted(self.start_durations)
        return ordered[len(ordered) // 2]

    def warm(self, count: int) -> None:
        """Start up to ``count`` workers now, so they are ready when the plan is."""
        self.events.put((_Event.WARM, count))

    def submit(
        self, plan: Plan, tasks: Mapping[str, Task], workers: int, prior: PlanRun | None = None
    ) -> PlanRun:
        """Run ``plan`` on up to ``workers`` workers in the background; return its results as they come.

        With ``prior`` (an earlier plan of this session, finished), the operations
        it ran keep their results and their values feed this plan's operations.
        """
        run = PlanRun(plan, workers, prior)
        self.events.put((_Event.SUBMIT, (run, dict(tasks))))
        return run

    def teardown(self, names: Iterable[str]) -> None:
        """Tear down ``names`` and everything that depends on them; block until done."""
        done = threading.Event()
        self.events.put((_Event.TEARDOWN, (list(names), done)))
        done.wait()

    def cancel(self) -> None:
        """Stop the plan: nothing new starts, running operations are interrupted.

        Operations that finished keep their results (and their teardowns); a
        worker that does not stop its operation within a grace period is killed.
        """
        self.events.put((_Event.CANCEL, None))

    def close(self, wait: bool = True) -> None:
        """Stop every worker and the processes they started; idempotent.

        ``wait=False`` returns at once (the workers stop in the background); a
        later ``close()`` waits for them.
        """
        if not self._closed:
            self._closed = True
            self.events.put((_Event.CLOSE, None))
        if wait:
            self._thread.join()

    # -- the scheduler thread ------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                timeout = self._next_timeout()
                try:
                    kind, payload = self.events.get(timeout=timeout)
                except queue.Empty:
                    self._expire_deadlines()
                    self._step()
                    continue
                if kind is _Event.CLOSE:
                    break
                self._handle(kind, payload)
                self._expire_deadlines()
                self._step()
        except Exception:  # noqa: BLE001 - a bug here must fail the plan, never hang it
            self._crashed(traceback.format_exc())
        finally:
            self._shutdown()

    def _crashed(self, error: str) -> None:
        """The scheduler hit a bug: fail what is pending, answer every request until closed."""
        reason = f"internal error in pytest-parexec's scheduler (please report it):\n{error}"
        run = self.run
        if run is not None:
            for name in run.plan.order:
                if name not in run.results:
                    run._set(OperationResult(name=name, status=Status.FAILED, error=reason, message=reason))
        while True:
            for _, event in self.pending_teardowns:
                event.set()
            self.pending_teardowns.clear()
            kind, payload = self.events.get()
            if kind is _Event.CLOSE:
                return
            if kind is _Event.TEARDOWN:
                payload[1].set()
            elif kind is _Event.READY:
                self._on_ready(payload)

    def _handle(self, kind: _Event, payload: Any) -> None:
        match kind:
            case _Event.READY:
                self._on_ready(payload)
            case _Event.START_FAILED:
                self._on_start_failed(payload)
            case _Event.MESSAGE:
                worker, msg = payload
                self._on_message(worker, msg)
            case _Event.LOST:
                self._on_worker_lost(payload, None)
            case _Event.WARM:
                self._grow(min(payload, self.max_workers))
            case _Event.SUBMIT:
                self._on_submit(*payload)
            case _Event.TEARDOWN:
                self.pending_teardowns.append(payload)
            case _Event.CANCEL:
                self._on_cancel()
            case _Event.CLOSE:  # pragma: no cover - handled by the loop
                pass

    def _on_cancel(self) -> None:
        run = self.run
        if run is None or run.done:
            return
        self.cancelled = True
        self.retry_queue.clear()
        for name in run.plan.order:
            if name not in run.results and name not in self._running_names():
                self.started_ops.add(name)
                run._set(
                    OperationResult(
                        name=name, status=Status.SKIPPED, message="not run: the session was interrupted"
                    )
                )
        for worker in self._running():
            # KeyboardInterrupt in the operation; its worker then reports and stays
            # usable for the teardowns of what it finished before.
            worker.deadline = time.perf_counter() + STOP_GRACE_S
            if worker.local:
                try:
                    os.kill(worker.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass

    def _running_names(self) -> set[str]:
        return {w.running for w in self._live() if w.running is not None}

    def _on_submit(self, run: PlanRun, tasks: dict[str, Task]) -> None:
        self.run = run
        self.tasks.update(tasks)
        self.started_ops.update(run.results)
        for name, result in list(run.results.items()):
            if not result.status.ok:
                self._skip_descendants(run, name)
        self.max_workers = run.workers
        # Workers warmed up beyond what this plan can use are stopped unused; the
        # rest of what it can use start now, not when their operations become ready.
        for worker in self.idle[run.workers :]:
            self._kill(worker)
        self._grow(min(run.workers, run.plan.width))

    # -- workers ---------------------------------------------------------------

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers.values() if w.alive]

    def _grow(self, target: int) -> None:
        """Start workers until ``target`` are running or starting."""
        while len(self._live()) + self.starting < target:
            if self.specs and self.started_total >= len(self.specs):
                return
            self._start(self.specs[self.started_total] if self.specs else "popen")

    def _start(self, spec: str) -> str:
        worker_id = f"gw{self.started_total}"
        self.started_total += 1
        self.starting += 1
        self._spawned_at[worker_id] = time.perf_counter()
        limit = START_TIMEOUT_S if _is_local(spec) else REMOTE_START_TIMEOUT_S
        self._start_deadlines[worker_id] = (time.perf_counter() + limit, spec)
        self._spawn_queue.put((worker_id, spec))
        return worker_id

    def _spawner(self) -> None:
        """Forks every worker, from this one long-lived thread.

        Linux's parent-death signal (see remote._die_with_parent) fires when the
        *thread* that forked a worker exits, so that thread must live as long as
        the workers. Handshakes, which wait for the worker's imports, run in
        parallel in short-lived threads.
        """
        while True:
            item = self._spawn_queue.get()
            if item is None:
                return
            worker_id, spec = item
            if spec == "popen" and self._zygote_ready():
                self._fork(worker_id)
            elif _is_local(spec):
                self._connect(worker_id, spec)
            else:
                # Nothing is forked for a remote worker, and connecting can block.
                threading.Thread(
                    target=self._connect,
                    args=(worker_id, spec),
                    name=f"parexec-connect-{worker_id}",
                    daemon=True,
                ).start()

    def _zygote_ready(self) -> bool:
        """Start the fork server once (in this thread, like every local fork); False if it can't."""
        if not FORK_SERVER or self._zygote_failed:
            return False
        if self._zygote is not None:
            return True
        try:
            gateway = self.group.makegateway("popen//id=zygote")
            channel = gateway.remote_exec(_bootstrap("serve_zygote"))
            channel.send(self._init_message("zygote", local=True, coverage=False))
            ready = channel.receive(timeout=START_TIMEOUT_S)
        except BaseException:  # noqa: BLE001 - plain popen workers will do
            self._zygote_failed = True
            return False
        self._zygote = _ForkServer(int(ready["pid"]), channel=channel)
        return True

    def _zygote_call(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self._zygote is not None
        return self._zygote.call(msg)

    def _fork(self, worker_id: str) -> None:
        """A worker forked from the zygote, reached over a loopback socket gateway."""
        try:
            forked = self._zygote_call({"kind": "fork"})
        except BaseException as exc:  # noqa: BLE001 - reported through the queue
            if self._zygote is not None and self._zygote.is_copy:
                # The copy of the pytest process failed (it says why on stderr): carry
                # on with a fresh-interpreter fork server, or a plain worker.
                self._zygote.kill()
                self._zygote = None
                if self._zygote_ready():
                    self._fork(worker_id)
                else:
                    self._connect(worker_id, "popen")
                return
            self.events.put((_Event.START_FAILED, (worker_id, "popen", f"{type(exc).__name__}: {exc}")))
            return

        def connect() -> None:
            try:
                gateway = self.group.makegateway(f"socket=127.0.0.1:{forked['port']}//id={worker_id}")
            except BaseException as exc:  # noqa: BLE001
                self.events.put((_Event.START_FAILED, (worker_id, "popen", f"{type(exc).__name__}: {exc}")))
                return
            self._handshake(worker_id, "popen", gateway, forked=True)

        threading.Thread(target=connect, name=f"parexec-connect-{worker_id}", daemon=True).start()

    def _connect(self, worker_id: str, spec: str) -> None:
        try:
            gateway = self.group.makegateway(f"{spec}//id={worker_id}")
        except BaseException as exc:  # noqa: BLE001 - reported through the queue
            self.events.put((_Event.START_FAILED, (worker_id, spec, f"{type(exc).__name__}: {exc}")))
            return
        threading.Thread(
            target=self._handshake,
            args=(worker_id, spec, gateway),
            name=f"parexec-start-{worker_id}",
            daemon=True,
        ).start()

    def _init_message(self, worker_id: str, local: bool, coverage: bool = True) -> dict[str, Any]:
        return {
            "cwd": self.init.cwd if local else None,
            "sys_path": list(self.init.sys_path) if local else [],
            "env": dict(self.init.env) if local else {},
            # A remote worker makes its own temporary directory (and removes it).
            "capture_dir": os.path.join(self.init.scratch, worker_id) if local else None,
            "own_process_group": local,
            "preload": list(self.init.preload),
            "coverage": (
                dict(self.init.coverage, suffix=f"parexec.{worker_id}")
                if local and coverage and self.init.coverage
                else None
            ),
        }

    def _handshake(self, worker_id: str, spec: str, gateway: Any, forked: bool = False) -> None:
        local = _is_local(spec)
        try:
            # A local worker runs the same interpreter, so it imports this package's
            # remote module (which coverage.py can then measure); a remote host may
            # not have the package, so it gets the module's source.
            channel = gateway.remote_exec(_LOCAL_BOOTSTRAP if local else remote)
            channel.send(self._init_message(worker_id, local))
            ready = channel.receive(timeout=START_TIMEOUT_S)
        except BaseException as exc:  # noqa: BLE001 - reported through the queue
            self.events.put((_Event.START_FAILED, (worker_id, spec, f"{type(exc).__name__}: {exc}")))
            return
        worker = _Worker(
            id=worker_id,
            spec=spec,
            gateway=gateway,
            channel=channel,
            pid=int(ready["pid"]),
            host=str(ready["host"]),
            local=local,
            forked=forked,
        )
        channel.setcallback(lambda msg: self.events.put((_Event.MESSAGE, (worker, msg))), endmarker=_LOST)
        self.events.put((_Event.READY, worker))

    def _on_ready(self, worker: _Worker) -> None:
        if self._start_deadlines.pop(worker.id, None) is None:
            # It answered after its start deadline: it was counted as failed.
            self.workers[worker.id] = worker
            self._kill(worker)
            return
        self.starting -= 1
        self.start_durations.append(time.perf_counter() - self._spawned_at[worker.id])
        self.workers[worker.id] = worker
        self.idle.append(worker)
        if self.run is not None and worker.id != self.fresh and len(self._live()) > self.max_workers:
            # Warmed up before the plan said how many workers it can use.
            self._kill(worker)

    def _on_start_failed(self, payload: tuple[str, str, str]) -> None:
        worker_id, spec, error = payload
        if self._start_deadlines.pop(worker_id, None) is None:
            return  # already counted as failed at its deadline
        self.starting -= 1
        self.start_errors.append(f"worker {worker_id} ({spec}) could not start: {error}")

    def _kill(self, worker: _Worker) -> None:
        """Kill a worker and, for local workers, every process in its process group."""
        worker.alive = False
        if worker in self.idle:
            self.idle.remove(worker)
        if worker.local:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)
        try:
            worker.gateway.exit()
        except Exception:  # noqa: BLE001 - the gateway may be gone already
            pass

    def _exit_status(self, worker: _Worker) -> str:
        code: int | None
        if worker.forked and self._zygote is not None:
            try:
                code = self._zygote_call({"kind": "status", "pid": worker.pid})["code"]
            except Exception:  # noqa: BLE001
                code = None
        else:
            popen = getattr(getattr(worker.gateway, "_io", None), "popen", None)
            try:
                code = popen.wait(timeout=5) if popen is not None else None
            except Exception:  # noqa: BLE001
                code = None
        if code is None:
            return "unknown exit status"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def _on_worker_lost(self, worker: _Worker, reason: str | None) -> None:
        """The one place that decides what a dead worker means."""
        was_alive = worker.alive
        self._kill(worker)
        if not was_alive and reason is None:
            return
        if worker.running is not None:
            name = worker.running
            if reason is None:
                reason = (
                    f"the worker process {worker.id} (pid {worker.pid}) died while running "
                    f"operation {name!r}: {self._exit_status(worker)}"
                )
            self._finish_attempt(worker, {"ok": False, "error": reason, "message": reason, "output": ""})
        if worker.tearing_down is not None:
            self._teardown_done(
                worker, worker.tearing_down, f"the worker process {worker.id} died during teardown"
            )
        for name in worker.holds:
            result = self.run.results.get(name) if self.run else None
            if result is not None and result.teardown_error is None:
                result.teardown_error = (
                    f"teardown of {name!r} did not run: its worker process {worker.id} "
                    f"(pid {worker.pid}) is gone"
                )
        worker.holds.clear()

    # -- operations ------------------------------------------------------------

    def _next_timeout(self) -> float | None:
        deadlines = [w.deadline for w in self._live() if w.deadline is not None]
        deadlines += [deadline for deadline, _ in self._start_deadlines.values()]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.perf_counter())

    def _expire_deadlines(self) -> None:
        now = time.perf_counter()
        for worker_id, (deadline, spec) in list(self._start_deadlines.items()):
            if now >= deadline:
                del self._start_deadlines[worker_id]
                self.starting -= 1
                limit = START_TIMEOUT_S if _is_local(spec) else REMOTE_START_TIMEOUT_S
                self.start_errors.append(
                    f"worker {worker_id} ({spec}) could not start: no answer within {limit:g} seconds"
                )
        for worker in self._live():
            if worker.deadline is not None and now >= worker.deadline and worker.running:
                task = self.tasks[worker.running]
                if self.cancelled:
                    reason = f"operation {task.name!r} was interrupted; its worker process was killed"
                else:
                    seconds = f"{task.timeout:g} second{'s' * (task.timeout != 1)}"
                    reason = (
                        f"operation {task.name!r} timed out after {seconds}; its worker process "
                        f"{worker.id} (pid {worker.pid}) and that process's children were killed"
                    )
                self._on_worker_lost(worker, reason)

    def _step(self) -> None:
        """Dispatch what can run, start workers that are wanted, run teardowns."""
        run = self.run
        if run is not None and not run.done and not self.cancelled:
            self._dispatch(run)
        self._advance_teardowns()

    def _running(self) -> list[_Worker]:
        return [w for w in self._live() if w.running is not None]

    def _dispatch(self, run: PlanRun) -> None:
        if self.retry_queue or self.retrying is not None:
            # A retry runs alone: nothing new starts until it has finished.
            if self.retrying is None:
                self._dispatch_retry(run)
            if self.retry_queue or self.retrying is not None:
                return
        ready = self._ready(run)
        while ready and self.idle:
            self._send_run(self.idle.pop(0), ready.pop(0))
        if ready:
            self._grow(min(self.max_workers, len(self._running()) + len(ready)))
        if ready and not self._live() and self.starting == 0:
            self._fail_unrunnable(run)

    def _ready(self, run: PlanRun) -> list[str]:
        """Ready operations, after finishing those whose precheck says they are up to date."""
        while True:
            ready = run.plan.ready(run.results, self.started_ops)
            fresh = [n for n in ready if self._up_to_date(run, n)]
            if not fresh:
                return ready
            for name in fresh:
                self.started_ops.add(name)
                run._set(OperationResult(name=name, status=Status.UP_TO_DATE))

    def _args(self, run: PlanRun, task: Task) -> dict[str, object]:
        return {**{p: run.results[p].value for p in task.params}, **task.constants}

    def _up_to_date(self, run: PlanRun, name: str) -> bool:
        task = self.tasks[name]
        return task.precheck is not None and task.precheck(self._args(run, task))

    def _dispatch_retry(self, run: PlanRun) -> None:
        """A retry runs alone, on a fresh worker, once everything else has finished."""
        if self._running():
            return
        if self.fresh is None and not self.specs:
            self.fresh = self._start("popen")
            return
        # With explicit specs (--parexec-tx) there is no worker beyond those given: the
        # retry runs alone on one that is up.
        worker = next((w for w in self.idle if w.id == self.fresh), None)
        if worker is None:
            if self.fresh is not None and (self.fresh in self.workers or self.starting > 0):
                return  # still starting
            # No fresh worker (e.g. a socket server serves one connection at a time):
            # the retry runs alone on a worker that is up, or fails with its first error.
            self.fresh = None
            worker = self.idle[0] if self.idle else None
            if worker is None:
                name = self.retry_queue.pop(0)
                first = self.attempts[name][-1].error or ""
                why = "; ".join(self.start_errors[-1:]) or "no worker could be started"
                reason = f"{first.rstrip()}\n(not retried: {why})"
                self._record_failure(run, name, reason, reason)
                return
        self.fresh = None
        self.idle.remove(worker)
        self.retrying = self.retry_queue.pop(0)
        self._send_run(worker, self.retrying)

    def _fail_unrunnable(self, run: PlanRun) -> None:
        reason = "no worker could be started: " + "; ".join(self.start_errors or ["unknown error"])
        for name in run.plan.order:
            if name not in run.results:
                self.started_ops.add(name)
                run._set(OperationResult(name=name, status=Status.FAILED, error=reason, message=reason))

    def _send_run(self, worker: _Worker, name: str) -> None:
        assert self.run is not None
        task = self.tasks[name]
        args = self._args(self.run, task)
        if not worker.local:
            for key in task.host_paths:
                path = remote.decode(args[key])
                args[key] = remote.encode(type(path)(self._remote_path(str(path))), name)
        self.started_ops.add(name)
        self.attempt_counts[name] = self.attempt_counts.get(name, 0) + 1
        worker.running = name
        worker.attempt_start = time.perf_counter()
        worker.deadline = worker.attempt_start + task.timeout if task.timeout else None
        self.run._emit(
            ProgressEvent(
                EventKind.STARTED, name, self.run.now(), worker=worker.id, attempt=self.attempt_counts[name]
            )
        )
        worker.channel.send(
            {
                "kind": "run",
                "id": f"{name}#{self.attempt_counts[name]}",
                "name": name,
                "module": task.module,
                "file": task.file if worker.local else self._remote_path(task.file),
                "attribute": task.attribute,
                "args": args,
                "tmp_path": attempt_tmp_path(task.tmp_path, self.attempt_counts[name]),
            }
        )

    def _remote_path(self, path: str) -> str:
        """A path under the rootdir as the remote worker sees it: relative to its chdir."""
        try:
            inside = os.path.commonpath([path, self.init.rootdir]) == self.init.rootdir
            return os.path.relpath(path, self.init.rootdir) if inside else path
        except ValueError:
            return path

    def _on_message(self, worker: _Worker, msg: Any) -> None:
        if msg is _LOST:
            self._on_worker_lost(worker, None)
            return
        if msg["kind"] == "result":
            self._finish_attempt(worker, msg)
            if worker.alive:
                self.idle.append(worker)
        elif msg["kind"] == "teardown":
            self._teardown_done(
                worker, msg["name"], None if msg["ok"] else msg["error"], msg.get("output", "")
            )

    def _finish_attempt(self, worker: _Worker, msg: Mapping[str, Any]) -> None:
        assert self.run is not None
        assert worker.running is not None
        run = self.run
        name = worker.running
        task = self.tasks[name]
        now = time.perf_counter()
        attempt = Attempt(
            number=self.attempt_counts[name],
            worker=worker.id,
            pid=worker.pid,
            host=worker.host,
            spec=worker.spec,
            start_s=worker.attempt_start - run.started_at,
            end_s=now - run.started_at,
            duration_s=float(msg.get("duration", now - worker.attempt_start)),
            ok=bool(msg["ok"]),
            error=None if msg["ok"] else str(msg["error"]),
            output=str(msg.get("output", "")),
        )
        worker.running = None
        worker.deadline = None
        if name == self.retrying:
            self.retrying = None
        if self.on_attempt is not None:
            self.on_attempt(name, attempt)
        attempts = self.attempts.setdefault(name, [])
        attempts.append(attempt)
        run._emit(
            ProgressEvent(
                EventKind.FINISHED,
                name,
                attempt.end_s,
                worker=worker.id,
                attempt=attempt.number,
                ok=attempt.ok,
                duration_s=attempt.duration_s,
                retrying=not attempt.ok and attempt.number <= task.retries and not self.cancelled,
                error=attempt.error,
            )
        )
        if attempt.ok:
            if msg.get("holds"):
                worker.holds.add(name)
            status = Status.PASSED if attempt.number == 1 else Status.RECOVERED
            run._set(OperationResult(name=name, status=status, attempts=attempts, value=msg["value"]))
            return
        if attempt.number <= task.retries and not self.cancelled:
            self.retry_queue.append(name)
            return
        self._record_failure(run, name, str(attempt.error), str(msg.get("message") or attempt.error))

    def _record_failure(self, run: PlanRun, name: str, error: str, message: str) -> None:
        """Fail ``name`` for good and skip everything that depends on it."""
        attempts = self.attempts.get(name, [])
        run._set(
            OperationResult(name=name, status=Status.FAILED, attempts=attempts, error=error, message=message)
        )
        self._skip_descendants(run, name)

    def _skip_descendants(self, run: PlanRun, name: str) -> None:
        root = run.results[name].blocked_by or name
        for child in run.plan.descendants(name):
            if child not in run.results:
                self.started_ops.add(child)
                run._set(OperationResult.skipped(child, root))

    # -- teardown ----------------------------------------------------------------

    def _advance_teardowns(self) -> None:
        run = self.run
        if run is None:
            for _, event in self.pending_teardowns:
                event.set()
            self.pending_teardowns.clear()
            return
        for names, event in list(self.pending_teardowns):
            # Names of other plans (run by another runner) are not this executor's to tear down.
            mine = [n for n in names if n in run.plan.nodes]
            wanted = set(mine)
            for name in mine:
                wanted.update(run.plan.descendants(name))
            held = {n: w for w in self._live() for n in w.holds}
            remaining = [n for n in wanted if n in held]
            if not remaining and not any(w.tearing_down in wanted for w in self._live()):
                event.set()
                self.pending_teardowns.remove((names, event))
                continue
            for name in remaining:
                worker = held[name]
                if worker.tearing_down is not None or worker.running is not None:
                    continue
                blocked = any(
                    child in held or any(w.tearing_down == child for w in self._live())
                    for child in run.plan.descendants(name)
                )
                if not blocked:
                    worker.tearing_down = name
                    worker.channel.send({"kind": "teardown", "name": name})

    def _teardown_done(self, worker: _Worker, name: str, error: str | None, output: str = "") -> None:
        worker.tearing_down = None
        worker.holds.discard(name)
        if self.run is not None and name in self.run.results:
            result = self.run.results[name]
            result.teardown_error = error
            result.teardown_output = output

    # -- shutdown ------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop every worker: ask, wait for each to acknowledge (it saves its coverage
        data first), then kill whatever is left, with the processes it started."""
        for _, event in self.pending_teardowns:
            event.set()
        stopping: set[str] = set()
        for worker in self._live():
            if worker.running is not None:
                continue  # busy in an operation that was cancelled: it is killed below
            try:
                worker.channel.send({"kind": "stop"})
                stopping.add(worker.id)
            except Exception:  # noqa: BLE001 - the channel may be closed already
                pass
        # Local workers still starting are waited for too, so that they can be stopped;
        # remote starts are not: nothing of theirs runs here.
        deadline = time.perf_counter() + STOP_TIMEOUT_S
        while time.perf_counter() < deadline and (
            stopping or any(_is_local(spec) for _, spec in self._start_deadlines.values())
        ):
            try:
                kind, payload = self.events.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if kind is _Event.READY:
                self._on_ready(payload)
                if payload.alive:
                    payload.channel.send({"kind": "stop"})
                    stopping.add(payload.id)
            elif kind is _Event.START_FAILED:
                self._on_start_failed(payload)
            elif kind is _Event.MESSAGE:
                worker, msg = payload
                if msg is _LOST or msg.get("kind") == "stopped":
                    stopping.discard(worker.id)
        self._spawn_queue.put(None)
        if self._zygote is not None:
            self._zygote.stop()
        local = [w for w in self.workers.values() if w.local]
        try:
            self.group.terminate(timeout=STOP_GRACE_S)
        except Exception:  # noqa: BLE001
            pass
        for worker in local:
            # Processes an operation started stay in the worker's process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.alive = False
        if self._zygote is not None:
            self._zygote.kill()


def attempt_tmp_path(tmp_path: str | None, attempt: int) -> str | None:
    """Each attempt gets a fresh directory: a retry never sees a failed attempt's files."""
    if tmp_path is None or attempt <= 1:
        return tmp_path
    return f"{tmp_path}-attempt{attempt}"


@final
class InProcessRunner:
    """Runs a plan one operation at a time in the pytest process (``--parexec=sequential``).

    Same interface as :class:`Executor`, so the plugin does not care which it has;
    nothing runs in the background, so ``--pdb`` and breakpoints work.
    """

    def __init__(self, call: Callable[[Task, dict[str, object]], tuple[object, object]]) -> None:
        #: ``call(task, kwargs)`` returns (value, teardown state) or raises.
        self.call = call
        self.states: dict[str, Any] = {}
        self.run: PlanRun | None = None

    def submit(
        self,
        plan: Plan,
        tasks: Mapping[str, Task],
        prior: PlanRun | None = None,
        listener: Callable[[ProgressEvent], None] | None = None,
    ) -> PlanRun:
        """Run ``plan`` now, in this thread; ``listener`` sees each event as it happens."""
        run = self.run = PlanRun(plan, workers=0, prior=prior, listener=listener)
        for name in plan.order:
            if name in run.results:
                continue
            task = tasks[name]
            blocked = next((d for d in plan.nodes[name].depends if not run.results[d].status.ok), None)
            if blocked is not None:
                run._set(OperationResult.skipped(name, run.results[blocked].blocked_by or blocked))
                continue
            if task.precheck is not None and task.precheck(
                {**{p: run.results[p].value for p in task.params}, **task.constants}
            ):
                run._set(OperationResult(name=name, status=Status.UP_TO_DATE))
                continue
            run._set(self._run_one(run, task))
        return run

    def _run_one(self, run: PlanRun, task: Task) -> OperationResult:
        attempts: list[Attempt] = []
        kwargs = {p: remote.decode(run.results[p].value) for p in task.params}
        kwargs.update({k: remote.decode(v) for k, v in task.constants.items()})
        while True:
            start = time.perf_counter()
            number = len(attempts) + 1
            run._emit(ProgressEvent(EventKind.STARTED, task.name, run.now(), worker="main", attempt=number))
            error: str | None = None
            message: str | None = None
            encoded: object = None
            state: Any = None
            try:
                attempt_task = dataclasses.replace(task, tmp_path=attempt_tmp_path(task.tmp_path, number))
                value, state = self.call(attempt_task, kwargs)
                encoded = remote.encode(value, task.name)
            except Exception as exc:  # noqa: BLE001 - reported like a worker's failure
                error, message = remote.format_error(exc), remote.one_line(exc)
                if state is not None:
                    # The value is unusable: release what the generator holds now.
                    try:
                        remote.finish_call(state)
                    except Exception:  # noqa: BLE001 - the first error is the one to show
                        pass
                    state = None
            end = time.perf_counter()
            run._emit(
                ProgressEvent(
                    EventKind.FINISHED,
                    task.name,
                    run.now(),
                    worker="main",
                    attempt=number,
                    ok=error is None,
                    duration_s=end - start,
                    retrying=error is not None and number <= task.retries,
                    error=error,
                )
            )
            attempts.append(
                Attempt(
                    number=number,
                    worker="main",
                    pid=os.getpid(),
                    host=None,
                    spec=None,
                    start_s=start - run.started_at,
                    end_s=end - run.started_at,
                    duration_s=end - start,
                    ok=error is None,
                    error=error,
                    output="",
                )
            )
            if error is None:
                if state is not None:
                    self.states[task.name] = state
                status = Status.PASSED if len(attempts) == 1 else Status.RECOVERED
                return OperationResult(task.name, status, attempts, value=encoded)
            if len(attempts) > task.retries:
                return OperationResult(task.name, Status.FAILED, attempts, error=error, message=message)

    def teardown(self, names: Iterable[str]) -> None:
        if self.run is None:
            return
        wanted = {n for n in names if n in self.run.plan.nodes}
        for name in list(wanted):
            wanted.update(self.run.plan.descendants(name))
        for name in self.run.plan.teardown_order():
            if name in wanted and name in self.states:
                try:
                    remote.finish_call(self.states.pop(name))
                except Exception as exc:  # noqa: BLE001 - reported at session end
                    self.run.results[name].teardown_error = remote.format_error(exc)

    def close(self) -> None:
        """Nothing to stop: everything ran in this process."""
