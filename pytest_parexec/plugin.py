"""The pytest glue: options, hooks, the plan's life cycle in a session.

Data flows one way: decorators -> plan -> executor -> results -> fixtures and report.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import types
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final, final

import pytest

from . import _compat, remote
from .executor import Executor, InProcessRunner, OperationResult, PlanRun, Task, WorkerInit
from .history import History
from .operations import PROVIDER_KEY, TMP_PATH, Operation, on_definition, operation_of
from .planner import Node, Plan, PlanError, auto_workers, build_plan, choose_mode
from .progress import Progress, follow
from .report import Report, build_report, write_json, write_summary
from .trace import write_trace

MODES: Final = ("auto", "parallel", "sequential")
DEFAULT_RETRIES: Final = 1


AUTO: Final = "auto"


def _workers_arg(value: str) -> int | str:
    """``N`` or ``auto``; anything else is a usage error."""
    if value.strip() == AUTO:
        return AUTO
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of workers; use a number >= 1 or 'auto'"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: the number of workers must be >= 1 (or 'auto')")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be >= 0")
    return number


def _timeout_arg(value: str) -> float | None:
    if value.strip() in ("", "none", "None"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a number of seconds > 0, or 'none'")
    return number


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parexec", "parallel session setup (pytest-parexec)")
    group.addoption(
        "--parexec",
        dest="parexec_mode",
        choices=MODES,
        default=None,
        help="how to run batchable operations: 'auto' (default) runs them in parallel where that "
        "can pay, else in-process; 'parallel' on worker processes; 'sequential' one by one in the "
        "pytest process (for --pdb and print debugging)",
    )
    group.addoption(
        "--parexec-workers",
        dest="parexec_workers",
        type=_workers_arg,
        default=None,
        metavar="N|auto",
        help="number of worker processes, or 'auto' (default): the plan's width, at most twice the CPU count",
    )
    group.addoption(
        "--parexec-trace",
        dest="parexec_trace",
        default=None,
        metavar="PATH",
        help="write the run's timeline: PATH.json as Chrome trace events (Perfetto, chrome://tracing), "
        "PATH.svg as a Gantt chart",
    )
    group.addoption(
        "--parexec-report",
        dest="parexec_report",
        default=None,
        metavar="PATH",
        help="write the parallel execution summary as JSON to PATH",
    )
    parser.addini("parexec_mode", "default for --parexec: auto, parallel or sequential", default="auto")
    parser.addini("parexec_workers", "default for --parexec-workers: N or auto", default="auto")
    parser.addini(
        "parexec_retries",
        "how many times a failed batchable operation is retried, alone on a fresh worker",
        default=str(DEFAULT_RETRIES),
    )
    parser.addini(
        "parexec_timeout", "seconds after which a batchable operation is stopped (default: none)", default=""
    )


@final
@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str
    workers: int | None
    retries: int
    timeout: float | None
    report: Path | None
    trace: Path | None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        def ini(name: str, parse: Any) -> Any:
            raw = str(config.getini(name)).strip()
            try:
                return parse(raw)
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"ini option {name} = {raw!r}: {exc}") from None

        mode = config.option.parexec_mode or ini("parexec_mode", str)
        if mode not in MODES:
            raise pytest.UsageError(f"ini option parexec_mode = {mode!r}: use one of {', '.join(MODES)}")
        workers = config.option.parexec_workers
        if workers is None:
            workers = ini("parexec_workers", _workers_arg)
        report = config.option.parexec_report
        trace = config.option.parexec_trace
        if trace is not None and Path(trace).suffix.lower() not in (".json", ".svg"):
            raise pytest.UsageError(
                f"--parexec-trace={trace}: the file name must end in .json (trace events) "
                "or .svg (Gantt chart)"
            )
        return cls(
            mode=mode,
            workers=None if workers == AUTO else workers,
            retries=ini("parexec_retries", _non_negative_int),
            timeout=ini("parexec_timeout", _timeout_arg),
            report=Path(config.invocation_params.dir, report) if report else None,
            trace=Path(config.invocation_params.dir, trace) if trace else None,
        )


@pytest.hookimpl(trylast=True)  # after tmpdir's, whose TempPathFactory the workers use
def pytest_configure(config: pytest.Config) -> None:
    session = ParexecSession(config, Settings.from_config(config))
    config.stash[_SESSION_KEY] = session
    config.stash[PROVIDER_KEY] = session
    config.pluginmanager.register(session, "parexec-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.close()
        del config.stash[_SESSION_KEY]
        del config.stash[PROVIDER_KEY]


def _failure_message(name: str, result: OperationResult, results: dict[str, OperationResult]) -> str:
    if result.blocked_by is not None:
        root = results[result.blocked_by]
        return (
            f"batchable operation {name!r} did not run because its dependency "
            f"{result.blocked_by!r} failed:\n" + _failure_message(result.blocked_by, root, results)
        )
    last = result.last
    where = f" on {last.worker} (pid {last.pid})" if last else ""
    tries = f" after {len(result.attempts)} attempts" if len(result.attempts) > 1 else ""
    text = f"batchable operation {name!r} failed{where}{tries}:\n{(result.error or '').rstrip()}"
    if last is not None and last.output.strip():
        text += f"\n----- captured output of {name!r} -----\n{last.output.rstrip()}"
    return text


_SESSION_KEY: Final = pytest.StashKey["ParexecSession"]()


@final
class ParexecSession:
    """One pytest session's batchable operations: plan, runner, results, report."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.executor: Executor | None = None
        self.runner: Executor | InProcessRunner | None = None
        self.definitions = 0
        self.operations: dict[str, Operation] = {}
        self.plan: Plan | None = None
        self.run: PlanRun | None = None
        self.collected_at = 0.0
        self.history = History()
        self.workers = 1
        self.mode = settings.mode
        self.mode_reason = ""
        self.report: Report | None = None
        self.teardown_errors: list[str] = []
        self._values: dict[str, object] = {}
        self._unsubscribe = on_definition(self._on_definition)
        for plugin in config.pluginmanager.get_plugins():
            # conftest.py files load before pytest_configure: count what they defined.
            if isinstance(plugin, types.ModuleType):
                for value in list(vars(plugin).values()):
                    if operation_of(value) is not None:
                        self._on_definition(None)

    # -- workers start while pytest collects ------------------------------------

    def _on_definition(self, op: Operation | None) -> None:
        self.definitions += 1
        if self.settings.mode == "sequential" or self.plan is not None:
            return
        if self.settings.mode == "auto" and self.definitions < 2:
            return  # a single operation runs in-process under auto: start nothing for it
        limit = self.settings.workers or auto_workers(self.definitions, os.cpu_count() or 1)
        self._executor().warm(min(self.definitions, limit))

    def _executor(self) -> Executor:
        if self.executor is None:
            factory = _compat.tmp_path_factory(self.config)
            scratch = factory.getbasetemp() / "parexec-workers"
            init = WorkerInit(
                cwd=str(self.config.rootpath),
                sys_path=tuple(sys.path),
                env=dict(os.environ),
                scratch=str(scratch),
                preload=("pytest", "pytest_parexec"),
            )
            self.executor = Executor(init, max_workers=self.settings.workers or 1)
        return self.executor

    # -- the plan ------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected_at = time.perf_counter()
        self.operations = self._needed_operations(session.items)
        if self.operations:
            self.history = History.load(getattr(self.config, "cache", None))
        expected = self.history.durations
        try:
            self.plan = build_plan(
                Node(op.name, op.group, op.depends, expected.get(op.name)) for op in self.operations.values()
            )
        except PlanError as exc:
            raise pytest.UsageError(f"pytest-parexec: {exc}") from None
        self.workers = self.settings.workers or auto_workers(self.plan.width, os.cpu_count() or 1)
        if self.settings.mode == "auto":
            self.mode, self.mode_reason = choose_mode(
                self.plan, expected, self.workers, self.history.worker_start_s
            )
        else:
            self.mode, self.mode_reason = self.settings.mode, f"--parexec={self.settings.mode}"
        if (not self.plan.nodes or self.mode == "sequential") and self.executor is not None:
            # Workers started early that this plan will not use.
            self.executor.close()

    def _needed_operations(self, items: list[pytest.Item]) -> dict[str, Operation]:
        found: dict[str, Operation] = {}
        visible: dict[str, dict[str, Any]] = {}
        for item in items:
            definitions = _compat.fixture_definitions(item)
            for name in getattr(item, "fixturenames", ()):
                chain = definitions.get(name)
                op = operation_of(chain[-1].func) if chain else None
                if op is None:
                    continue
                other = found.setdefault(op.name, op)
                if other is not op and other.function is not op.function:
                    raise pytest.UsageError(
                        f"pytest-parexec: two batchable operations are named {op.name!r}: "
                        f"{other.location} and {op.location}; give one of them another name "
                        "with @batchable(name=...)"
                    )
                visible.setdefault(op.name, definitions)
        for op in found.values():
            for dep in op.depends:
                if dep in found:
                    continue
                how = "parameter" if dep in op.params else "after= entry"
                chain = visible[op.name].get(dep)
                if chain:
                    raise pytest.UsageError(
                        f"pytest-parexec: {how} {dep!r} of batchable operation {op.name!r} "
                        f"({op.location}) names an ordinary fixture, not a batchable operation. "
                        f"Batchable functions take other batchable operations and {TMP_PATH}; "
                        f"make {dep!r} @batchable, or use it in an ordinary fixture that "
                        f"depends on {op.name!r}"
                    )
                raise pytest.UsageError(
                    f"pytest-parexec: {how} {dep!r} of batchable operation {op.name!r} "
                    f"({op.location}) is not a batchable operation visible from it. A parameter "
                    f"must name another @batchable function (in the same module or a conftest.py "
                    f"above it) or be {TMP_PATH}"
                )
        return found

    def _tasks(self) -> dict[str, Task]:
        factory = _compat.tmp_path_factory(self.config)
        tasks = {}
        for name, op in self.operations.items():
            tmp = factory.mktemp(f"parexec-{name}", numbered=True) if op.wants_tmp_path else None
            tasks[name] = Task(
                name=name,
                module=op.module,
                file=op.file,
                attribute=op.attribute,
                params=op.params,
                tmp_path=str(tmp) if tmp is not None else None,
                retries=op.retries if op.retries is not None else self.settings.retries,
                timeout=op.timeout if op.timeout is not None else self.settings.timeout,
                function=op.function,
            )
        return tasks

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        if (
            self.plan is not None
            and self.plan.nodes
            and not session.config.option.collectonly
            and not (session.testsfailed and not session.config.option.continue_on_collection_errors)
        ):
            terminal = self.config.pluginmanager.get_plugin("terminalreporter")
            verbosity = self.config.get_verbosity()
            progress = Progress(
                terminal,
                self.plan,
                self.history.durations,
                style=Progress.style_for(terminal, verbosity),
                verbose=verbosity > 0,
                workers=self.workers if self.mode == "parallel" else 0,
                mode=self.mode,
            )
            progress.before()
            self.run = self._start(self.plan)
            follow(self.run, progress)
        return (yield)

    def _start(self, plan: Plan) -> PlanRun:
        tasks = self._tasks()
        if self.mode == "sequential":
            self.runner = InProcessRunner(_call_in_process)
            return self.runner.submit(plan, tasks)
        self.runner = self._executor()
        return self.runner.submit(plan, tasks, workers=self.workers)

    # -- values for fixtures (operations.ValueProvider) ------------------------

    def manages(self, op: Operation) -> bool:
        return self.run is not None and op.name in self.run.plan.nodes and self.operations.get(op.name) is op

    def value(self, op: Operation) -> object:
        __tracebackhide__ = True
        assert self.run is not None
        result = self.run.wait(op.name)
        if not result.status.ok:
            pytest.fail(_failure_message(op.name, result, self.run.results), pytrace=False)
        if op.name not in self._values:
            self._values[op.name] = remote.decode(result.value)
        return self._values[op.name]

    def finish(self, op: Operation) -> None:
        """pytest finalizes session fixtures in reverse order: tear down with them.

        A teardown error is not raised here but reported at session end, with
        every other teardown error, in the summary (pytest would fold several
        into one exception group on the last test).
        """
        if self.runner is not None and self.run is not None:
            self.runner.teardown([op.name])

    # -- the end of the session ------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.runner is not None and self.run is not None:
            if not self.run.done and isinstance(self.runner, Executor):
                # Interrupted (Ctrl-C, an internal error): stop what runs, keep what finished.
                self.runner.cancel()
            self.runner.teardown(self.run.plan.order)
            for name in self.run.plan.teardown_order():
                result = self.run.results.get(name)
                if result is not None and result.teardown_error:
                    text = (
                        f"teardown of batchable operation {name!r} failed:\n{result.teardown_error.rstrip()}"
                    )
                    if result.teardown_output.strip():
                        text += f"\n----- captured output of {name!r} teardown -----\n"
                        text += result.teardown_output.rstrip()
                    self.teardown_errors.append(text)
            if self.teardown_errors and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        start_cost = self.executor.worker_start_s if self.executor is not None else None
        self.close()
        if self.run is not None and self.run.results:
            finished = self.run.finished_at or time.perf_counter()
            self.report = build_report(self.run, self.mode, self.mode_reason, finished - self.collected_at)
            learned = {
                name: result.attempts[-1].duration_s
                for name, result in self.run.results.items()
                if result.status.ok and result.attempts
            }
            self.history.learn(learned, start_cost)
            self.history.save(getattr(self.config, "cache", None))
            if self.settings.report is not None:
                write_json(self.report, self.settings.report)
            if self.settings.trace is not None:
                write_trace(self.report, self.settings.trace)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report is not None and self.report["operations"]:
            write_summary(terminalreporter, self.report, self.teardown_errors)

    def close(self) -> None:
        self._unsubscribe()
        self._unsubscribe = lambda: None
        for runner in (self.runner, self.executor):
            if runner is not None:
                runner.close()


def _call_in_process(task: Task, kwargs: dict[str, object]) -> tuple[object, object]:
    assert task.function is not None
    if task.tmp_path is not None:
        kwargs = {**kwargs, TMP_PATH: Path(task.tmp_path)}
    return remote.start_call(task.function, kwargs)
