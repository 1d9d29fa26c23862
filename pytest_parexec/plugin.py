"""The pytest glue: hooks, the plan's life cycle in a session.

Data flows one way: decorators -> plan -> executor -> results -> fixtures and report.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
import types
import uuid
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import pytest

from . import _compat, _coverage, hookspecs, remote
from .commands import CommandError, parse_commands
from .generators import (
    SOURCE,
    FileRecord,
    GeneratorSpec,
    OutputError,
    Written,
    encoded_constants,
    expand,
    generator_spec,
    on_generator_definition,
)
from .history import History
from .operations import GROUPS, PROVIDER_KEY, TMP_PATH, Operation, make_fixture, on_definition, operation_of
from .options import Settings, add_options
from .planner import Node, Plan, PlanError, auto_workers, build_plan, choose_mode

if TYPE_CHECKING:
    # The engine, the display and the report are imported where a session first
    # needs them: a suite without batchable operations never pays for them.
    from .executor import Executor, InProcessRunner, OperationResult, PlanRun, ProgressEvent, Task
    from .report import Report
    from .xdist import SharedRun


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(trylast=True)  # after tmpdir's, whose TempPathFactory the workers use
def pytest_configure(config: pytest.Config) -> None:
    try:
        commands = [
            dataclasses.replace(op, constants={**op.constants, "cwd": str(config.rootpath)})
            for op in parse_commands(config.getini("parexec_commands"))
        ]
    except CommandError as exc:
        raise pytest.UsageError(str(exc)) from None
    if commands:
        # pytest finds fixtures on registered plugins: one module holds the commands'.
        fixtures = types.ModuleType("pytest_parexec_commands")
        for op in commands:
            setattr(fixtures, op.name, make_fixture(op))
        config.pluginmanager.register(fixtures, "parexec-commands")
    session = ParexecSession(config, Settings.from_config(config), commands)
    config.stash[_SESSION_KEY] = session
    config.stash[PROVIDER_KEY] = session
    config.pluginmanager.register(session, "parexec-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.close()
        del config.stash[_SESSION_KEY]
        del config.stash[PROVIDER_KEY]


#: How messages name each kind of operation.
LABELS: Final = {
    "batchable": "batchable operation",
    "generator": "generator operation",
    "command": "setup command",
}


def _failure_message(
    name: str, result: OperationResult, results: Mapping[str, OperationResult], kinds: Mapping[str, str]
) -> str:
    label = LABELS[kinds.get(name, "batchable")]
    if result.blocked_by is not None:
        root = results[result.blocked_by]
        return (
            f"{label} {name!r} did not run because its dependency {result.blocked_by!r} failed:\n"
            + _failure_message(result.blocked_by, root, results, kinds)
        )
    last = result.last
    where = f" on {last.worker} (pid {last.pid})" if last else ""
    tries = f" after {len(result.attempts)} attempts" if len(result.attempts) > 1 else ""
    text = f"{label} {name!r} failed{where}{tries}:\n{(result.error or '').rstrip()}"
    if last is not None and last.output.strip():
        text += f"\n----- captured output of {name!r} -----\n{last.output.rstrip()}"
    return text


_SESSION_KEY: Final = pytest.StashKey["ParexecSession"]()

#: Constants that hold paths on the pytest host: a generator's input, a command's directory.
HOST_PATHS: Final = (SOURCE, "cwd")


@final
class ParexecSession:
    """One pytest session's batchable operations: plan, runner, results, report."""

    def __init__(self, config: pytest.Config, settings: Settings, commands: list[Operation]) -> None:
        self.config = config
        self.settings = settings
        self.commands = {op.name: op for op in commands}
        #: Generators run before collection (their run continues into the main one).
        self.pre_run: PlanRun | None = None
        self.pre_runner: Executor | InProcessRunner | None = None
        self.generated: dict[str, Written] = {}
        self.generator_failures: list[tuple[str, str]] = []
        self.late_generators: list[GeneratorSpec] = []
        self.collecting = False
        self.pre_mode: str | None = None
        self.finished = False
        self.start_cost: float | None = None
        #: The run started last (it holds the earlier one's results too).
        self.active: PlanRun | None = None
        #: Operations whose failure a test's setup error already shows.
        self.surfaced: set[str] = set()
        #: Failures no test shows (a setup command no test requests), for the summary.
        self.unreported: list[str] = []
        #: Under pytest-xdist: this worker's input (None on the controller and without xdist).
        self.workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.is_xdist_controller = self.workerinput is None and _xdist_distributing(config)
        self.shared: SharedRun | None = None
        #: xdist worker: takes its results from the shared run (as leader or follower).
        self.following = False
        #: xdist worker: seconds spent waiting for each result another worker published.
        self.waited: dict[str, float] = {}
        #: xdist controller: what each worker sent back.
        self.node_outputs: list[dict[str, Any]] = []
        #: xdist leader: results another process had published before it led.
        self.xdist_prior: set[str] = set()
        #: How workers measure themselves when this process runs under coverage.py.
        self.coverage = _coverage.worker_options()
        self.executor: Executor | None = None
        self.runner: Executor | InProcessRunner | None = None
        self.all_ops: dict[str, Operation] = {}
        self.pre_ops: dict[str, Operation] = {}
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
        self._subscriptions = [
            on_definition(self._on_definition),
            on_generator_definition(self._on_generator),
        ]
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
        if self.workerinput is not None or self.is_xdist_controller:
            return  # under xdist only the worker that leads the plan needs workers
        if self.settings.mode == "auto" and self.definitions < 2:
            return  # a single operation runs in-process under auto: start nothing for it
        limit = self.settings.workers or auto_workers(self.definitions, os.cpu_count() or 1)
        self._executor().warm(min(self.definitions, limit))

    def _on_generator(self, spec: GeneratorSpec) -> None:
        if self.collecting:
            self.late_generators.append(spec)

    def _executor(self) -> Executor:
        if self.executor is None:
            from .executor import Executor, WorkerInit

            factory = _compat.tmp_path_factory(self.config)
            scratch = factory.getbasetemp() / "parexec-workers"
            init = WorkerInit(
                # Where pytest runs (the rootdir, usually): relative paths in an operation
                # then mean what they mean in a plain fixture and with -p no:parexec.
                cwd=os.getcwd(),
                rootdir=str(self.config.rootpath),
                sys_path=tuple(sys.path),
                env=dict(os.environ),
                scratch=str(scratch),
                preload=("pytest", "pytest_parexec"),
                coverage=self.coverage,
            )
            cap = (
                self.settings.workers
                or len(self.settings.tx)
                or auto_workers(sys.maxsize, os.cpu_count() or 1)
            )
            self.executor = Executor(
                init,
                max_workers=cap,
                specs=self.settings.tx,
                # Until collection starts, no module is half imported: the zygote can be
                # this process's copy (see remote.fork_zygote).
                fork_here=not self.collecting and not _importing(),
            )
        return self.executor

    # -- generators, before collection ------------------------------------------

    def _loaded_modules(self) -> list[types.ModuleType]:
        """conftest.py files and plugin modules pytest has loaded so far."""
        return [p for p in self.config.pluginmanager.get_plugins() if isinstance(p, types.ModuleType)]

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> Generator[None, object, object]:
        if self.workerinput is None and not self.is_xdist_controller:
            self._generate()
        self.collecting = True
        return (yield)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Under xdist, generate on the controller before any worker starts to collect,
        and publish what the generators' dependencies produced for the workers."""
        if not self.is_xdist_controller:
            return
        if self.config.option.testrunuid is None:
            # xdist would make one up later; workers and controller must agree on it now.
            self.config.option.testrunuid = uuid.uuid4().hex
        self._generate()
        if self.pre_run is not None:
            from .xdist import SharedRun

            shared = SharedRun(
                _compat.tmp_path_factory(self.config).getbasetemp()
                / f"parexec-{self.config.option.testrunuid}",
                "controller",
            )
            for result in self.pre_run.results.values():
                shared.publish(result, self.pre_run.started_at)

    def _definitions(self) -> tuple[dict[str, GeneratorSpec], dict[str, Operation]]:
        """Generators and operations defined in loaded conftest.py files and plugins."""
        specs: dict[str, GeneratorSpec] = {}
        known: dict[str, Operation] = dict(self.commands)
        for module in self._loaded_modules():
            for value in list(vars(module).values()):
                spec = generator_spec(value)
                if spec is not None:
                    other = specs.setdefault(spec.name, spec)
                    if other is not spec and other.function is not spec.function:
                        raise pytest.UsageError(
                            f"pytest-parexec: two generators are named {spec.name!r}: {other.file} "
                            f"and {spec.file}; give one of them another name with @generator(name=...)"
                        )
                op = operation_of(value)
                if op is not None:
                    known.setdefault(op.name, op)
        return specs, known

    def _generate(self) -> None:
        """Run the generators (and the operations they need) so that collection sees their files."""
        specs, known = self._definitions()
        if not specs:
            return
        record = FileRecord.load(getattr(self.config, "cache", None), self.config.rootpath)
        rootdir = self.config.rootpath
        ops: dict[str, Operation] = {}
        owner: dict[str, GeneratorSpec] = {}
        for spec in specs.values():
            for op in expand(spec, rootdir):
                ops[op.name] = op
                owner[op.name] = spec
        pending = list(ops.values())
        while pending:
            op = pending.pop()
            for dep in op.depends:
                if dep in ops:
                    continue
                if dep not in known:
                    raise pytest.UsageError(
                        f"pytest-parexec: parameter {dep!r} of {op.kind} {op.name!r} is not a batchable "
                        "operation defined in a conftest.py loaded at start-up or a plugin; generator "
                        "parameters name @batchable operations (or source)"
                    )
                ops[dep] = known[dep]
                pending.append(known[dep])
        self.history = History.load(getattr(self.config, "cache", None))
        plan = self._build(ops)
        if not plan.nodes:
            # No generator has an input left: only stale files to delete.
            self._delete_stale(record, specs, {}, {})
            record.save(getattr(self.config, "cache", None))
            return
        prechecks: dict[str, Callable[[Mapping[str, object]], bool]] = {}
        if not self.settings.regenerate:
            for name, spec in owner.items():
                op = ops[name]
                prechecks[name] = functools.partial(_precheck, record, op, spec)
        mode, reason = self._choose(plan, set())
        self.pre_mode = mode
        self.pre_runner = self._runner(mode)
        self.pre_ops = ops
        self.pre_run = self._run(self.pre_runner, plan, ops, prechecks, mode, prior=None, reason=reason)
        self._write_outputs(record, specs, owner, ops)
        record.save(getattr(self.config, "cache", None))

    def _write_outputs(
        self,
        record: FileRecord,
        specs: Mapping[str, GeneratorSpec],
        owner: Mapping[str, GeneratorSpec],
        ops: Mapping[str, Operation],
    ) -> None:
        from .executor import Status

        assert self.pre_run is not None
        results = self.pre_run.results
        failed: dict[str, set[str]] = {}
        for name, spec in owner.items():
            result = results[name]
            if result.status is Status.UP_TO_DATE:
                self.generated[name] = Written(unchanged=record.keep(name))
                continue
            if not result.status.ok:
                failed.setdefault(spec.name, set()).add(name)
                self.generated[name] = Written(unchanged=record.keep(name))  # kept as they were
                self.generator_failures.append((name, _failure_message(name, result, results, self._kinds())))
                continue
            args = {p: results[p].value for p in spec.params}
            try:
                outputs = record.check(spec, name, remote.decode(result.value))
                self.generated[name] = record.write(
                    spec, name, outputs, record.inputs_key(ops[name], spec, args)
                )
            except (OutputError, OSError) as exc:
                # Nothing of this operation was written: it counts as a failed generator
                # (its attempt passed, so say here what became of it).
                self._say(f"parexec: {name} failed: {exc}")
                result.status, result.error, result.message = Status.FAILED, str(exc), str(exc)
                failed.setdefault(spec.name, set()).add(name)
                self.generated[name] = Written(unchanged=record.keep(name))
                self.generator_failures.append((name, str(exc)))
        self._delete_stale(record, specs, owner, failed)

    def _delete_stale(
        self,
        record: FileRecord,
        specs: Mapping[str, GeneratorSpec],
        owner: Mapping[str, GeneratorSpec],
        failed: Mapping[str, set[str]],
    ) -> None:
        """Delete files generators wrote before and no longer produce (also with no input left)."""
        for spec in specs.values():
            mine = {n for n, s in owner.items() if s is spec}
            deleted = record.delete_stale(spec, mine, failed.get(spec.name, set()))
            first = min(mine, default=None)
            if deleted and first is not None:
                self.generated.setdefault(first, Written()).deleted.extend(deleted)
            elif deleted:
                # No operation is left to list them in the report: say it here.
                self._say(
                    f"parexec: generator {spec.name!r} matches no input any more: "
                    f"deleted {', '.join(deleted)}"
                )

    def _say(self, line: str) -> None:
        """A line on the terminal, unless -q."""
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None and self.config.get_verbosity() >= 0:
            terminal.write_line(line)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        """A failed generator is an error in the test report; every other test still runs."""
        failures = [
            GeneratorFailure.from_parent(session, name=name, message=message)
            for name, message in self.generator_failures
        ]
        items[:0] = failures
        if self.workerinput is not None and (self.definitions or self.commands):
            # An xdist worker joins the run before it reports its collection to the
            # controller (pytest_collection_finish), so before any worker gets a test:
            # the leader, when its tests are done, waits for every worker that can
            # still need a result (see xdist.py).
            self._join_shared_run()

    # -- the plan ------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected_at = time.perf_counter()
        if self.late_generators:
            spec = self.late_generators[0]
            raise pytest.UsageError(
                f"pytest-parexec: generator {spec.name!r} is defined in {spec.file}, which pytest "
                "imports only during collection, after generators have run. Move it to the "
                "rootdir's conftest.py (or one beside the paths given on the command line), "
                "or into a plugin module"
            )
        tests = [item for item in session.items if not isinstance(item, GeneratorFailure)]
        found, visible = self._needed_operations(tests)
        if tests:
            # Setup commands run in every session that runs a test.
            found.update(self.commands)
        self.operations = self._with_dependencies(found, visible)
        ops = {**self.pre_ops, **self.operations} if self.operations else {}
        if ops and self.pre_run is None:  # _generate loaded it already otherwise
            self.history = History.load(getattr(self.config, "cache", None))
        self.plan = self._build(ops)
        self.all_ops = ops
        done = set(self.pre_run.results) if self.pre_run is not None else set()
        self.mode, self.mode_reason = self._choose(self.plan, done)
        unused = not self.plan.nodes or self.mode == "sequential"
        if unused and self.executor is not None and self.pre_runner is not self.executor:
            # Workers started early that this plan will not use stop in the background.
            self.executor.close(wait=False)

    def _build(self, ops: Mapping[str, Operation]) -> Plan:
        expected = self.history.durations
        try:
            return build_plan(
                Node(op.name, self._classify(op), op.depends, expected.get(op.name)) for op in ops.values()
            )
        except PlanError as exc:
            raise pytest.UsageError(f"pytest-parexec: {exc}") from None

    def _classify(self, op: Operation) -> str:
        """The group of ``op``: a plugin's pytest_parexec_classify, else its own."""
        group = self.config.hook.pytest_parexec_classify(operation=op)
        if group is None:
            return op.group
        if group not in GROUPS:
            raise pytest.UsageError(
                f"pytest-parexec: pytest_parexec_classify returned {group!r} for operation {op.name!r}; "
                f"return one of {', '.join(GROUPS)}, or None to keep {op.group!r}"
            )
        return str(group)

    def _choose(self, plan: Plan, done: set[str]) -> tuple[str, str]:
        """The mode for the operations of ``plan`` not yet ``done``, and why."""
        todo = build_plan(
            Node(n, node.group, tuple(d for d in node.depends if d not in done), node.expected_s)
            for n, node in plan.nodes.items()
            if n not in done
        )
        self.workers = self.settings.workers or auto_workers(todo.width, os.cpu_count() or 1)
        if self.settings.mode != "auto":
            return self.settings.mode, f"--parexec={self.settings.mode}"
        if self.settings.tx:
            return "parallel", f"--parexec-tx gives {self.workers} worker{'s' * (self.workers != 1)}"
        return choose_mode(todo, self.history.durations, self.workers, self.history.worker_start_s)

    def _needed_operations(
        self, items: list[pytest.Item]
    ) -> tuple[dict[str, Operation], dict[str, Mapping[str, Any]]]:
        """The operations the items' fixture closures reach, and the fixtures each one sees."""
        found: dict[str, Operation] = {}
        visible: dict[str, Mapping[str, Any]] = {}
        if not self.definitions:
            return found, visible  # nothing batchable was ever defined: no item needs a look
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
        return found, visible

    def _with_dependencies(
        self, found: dict[str, Operation], visible: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Operation]:
        """Add the operations ``found`` depends on that no test reaches (e.g. a command's
        ``after``); refuse dependencies that are no batchable operation."""
        known: dict[str, Operation] | None = None
        pending = list(found.values())
        while pending:
            op = pending.pop()
            for dep in op.depends:
                if dep in found:
                    continue
                if known is None:
                    known = self._definitions()[1]
                if dep in known:
                    found[dep] = known[dep]
                    pending.append(known[dep])
        for op in found.values():
            for dep in op.depends:
                if dep in found:
                    continue
                how = "parameter" if dep in op.params else "after= entry"
                where = "ini parexec_commands" if op.kind == "command" else op.location
                label = LABELS[op.kind]
                chain = visible.get(op.name, {}).get(dep)
                if chain:
                    raise pytest.UsageError(
                        f"pytest-parexec: {how} {dep!r} of {label} {op.name!r} "
                        f"({where}) names an ordinary fixture, not a batchable operation. "
                        f"Batchable functions take other batchable operations and {TMP_PATH}; "
                        f"make {dep!r} @batchable, or use it in an ordinary fixture that "
                        f"depends on {op.name!r}"
                    )
                if op.kind == "command":
                    raise pytest.UsageError(
                        f"pytest-parexec: setup command {op.name!r} (ini parexec_commands) runs "
                        f"(after {dep}), but {dep!r} is no batchable operation or setup command; "
                        "check the name"
                    )
                raise pytest.UsageError(
                    f"pytest-parexec: {how} {dep!r} of {label} {op.name!r} "
                    f"({where}) is not a batchable operation visible from it. A parameter "
                    f"must name another @batchable function (in the same module or a conftest.py "
                    f"above it) or be {TMP_PATH}"
                )
        return found

    def _tasks(
        self, ops: Mapping[str, Operation], prechecks: Mapping[str, Callable[[Mapping[str, object]], bool]]
    ) -> dict[str, Task]:
        from .executor import Task

        factory = _compat.tmp_path_factory(self.config)
        tasks = {}
        for name, op in ops.items():
            tmp = (
                factory.mktemp(f"parexec-{op.function.__name__}", numbered=True)
                if op.wants_tmp_path
                else None
            )
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
                constants=encoded_constants(op),
                precheck=prechecks.get(name),
                host_paths=tuple(key for key in HOST_PATHS if key in op.constants),
            )
        return tasks

    # Innermost wrapper: the plan runs right before the tests, and operations are
    # finished (teardowns, workers stopped, their coverage saved) right after them,
    # before pytest-cov's wrapper stops measuring and combines data files.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        if (
            self.plan is not None
            and self.plan.nodes
            and not session.config.option.collectonly
            and not (session.testsfailed and not session.config.option.continue_on_collection_errors)
        ):
            if self.workerinput is not None:
                self._join_xdist_run()
            else:
                from .executor import InProcessRunner

                reuse = self.mode == "sequential" and isinstance(self.pre_runner, InProcessRunner)
                runner = self.pre_runner if reuse and self.pre_runner is not None else self._runner(self.mode)
                self.runner = runner
                self.run = self._run(
                    runner,
                    self.plan,
                    self.all_ops,
                    {},
                    self.mode,
                    prior=self.pre_run,
                    reason=self.mode_reason,
                )
        try:
            outcome = yield
        finally:
            if self.shared is not None:
                self.shared.finished_tests()
        if self.shared is not None and self.shared.leading:
            # Teardown waits for the last xdist worker, not the first.
            self.shared.wait_until_all_done()
        self._finish_operations()
        return outcome

    def _join_shared_run(self) -> SharedRun:
        assert self.workerinput is not None
        if self.shared is None:
            from .xdist import SharedRun  # only under pytest-xdist

            self.shared = SharedRun.for_worker(
                _compat.tmp_path_factory(self.config).getbasetemp(), self.workerinput
            )
            self.shared.join()
        return self.shared

    def _join_xdist_run(self) -> None:
        """xdist worker: lead the plan if nobody does, else follow (see xdist.py)."""
        self.following = True
        if self._join_shared_run().try_lead():
            self._lead_xdist_run()

    def _lead_xdist_run(self) -> None:
        """Run what nobody published yet, publishing every result as it arrives."""
        assert self.shared is not None
        assert self.plan is not None
        shared = self.shared
        from .executor import PlanRun

        clock = time.perf_counter()
        prior = PlanRun.of_results(self.plan, shared.loaded(self.plan.order, clock).values(), clock)
        self.xdist_prior = set(prior.results)
        self.runner = self._runner(self.mode)
        self.run = self._run(
            self.runner,
            self.plan,
            self.all_ops,
            {},
            self.mode,
            prior=prior,
            reason=self.mode_reason,
            # As each result arrives, in-process runs included; the run keeps prior's clock.
            on_result=functools.partial(shared.publish, clock=clock),
        )
        shared.mark_plan_done()

    def _runner(self, mode: str) -> Executor | InProcessRunner:
        from .executor import InProcessRunner

        if mode == "sequential":
            return InProcessRunner(_call_in_process)
        return self._executor()

    def _run(
        self,
        runner: Executor | InProcessRunner,
        plan: Plan,
        ops: Mapping[str, Operation],
        prechecks: Mapping[str, Callable[[Mapping[str, object]], bool]],
        mode: str,
        prior: PlanRun | None,
        reason: str,
        on_result: Callable[[OperationResult], None] | None = None,
    ) -> PlanRun:
        """Run ``plan``, showing its progress; return when every operation has a result."""
        from .executor import InProcessRunner
        from .progress import Follower, Progress, follow
        from .views import PlanView

        todo = {n: op for n, op in ops.items() if prior is None or n not in prior.results}
        tasks = self._tasks(todo, prechecks)
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        verbosity = self.config.get_verbosity()
        progress = Progress(
            terminal,
            plan,
            self.history.durations,
            style=Progress.style_for(terminal, verbosity),
            verbose=verbosity > 0,
            workers=self.workers if mode == "parallel" else 0,
            mode=mode,
        )
        progress.before()
        self.config.hook.pytest_parexec_plan(
            plan=PlanView.of(plan, mode, reason, self.workers if mode == "parallel" else 0)
        )
        inherited = {n: r for n, r in (prior.results.items() if prior else ()) if n in plan.nodes}
        progress.inherit(inherited)
        follower = Follower(len(plan) - len(inherited), progress, self._attempt_finished, on_result)
        if isinstance(runner, InProcessRunner):
            # Runs here and now: the display follows each event as it happens.
            try:
                run = runner.submit(plan, tasks, prior=prior, listener=follower.handle)
            finally:
                self.active = runner.run  # for the teardowns, even when interrupted
            progress.finish(run)
            return run
        run = runner.submit(plan, tasks, workers=self.workers, prior=prior)
        self.active = run  # before waiting: an interrupted session tears this run down
        follow(run, follower)
        return run

    def _attempt_finished(self, event: ProgressEvent) -> None:
        from .views import AttemptView

        status = "passed" if event.ok else ("retrying" if event.retrying else "failed")
        self.config.hook.pytest_parexec_operation_finished(
            result=AttemptView(
                name=event.name,
                status=status,
                attempt=event.attempt,
                duration_s=event.duration_s,
                worker=event.worker,
                error=event.error,
            )
        )

    # -- values for fixtures (operations.ValueProvider) ------------------------

    def manages(self, op: Operation) -> bool:
        """Whether this session planned ``op`` (the same definition, not one of the same name)."""
        if self.all_ops.get(op.name) is not op:
            return False
        return self.run is not None or self.following

    def value(self, op: Operation) -> object:
        __tracebackhide__ = True
        if self.run is not None:
            result = self.run.wait(op.name)
            results = self.run.results
        else:
            result = self._wait_published(op.name)
            results = _Published(self.shared, self.collected_at)
        if not result.status.ok:
            self.surfaced.add(op.name)
            pytest.fail(_failure_message(op.name, result, results, self._kinds()), pytrace=False)
        if op.name not in self._values:
            self._values[op.name] = remote.decode(result.value)
        return self._values[op.name]

    def _wait_published(self, name: str) -> OperationResult:
        """xdist follower: the result another worker published; lead if its leader died."""
        from .xdist import POLL_S

        assert self.shared is not None
        started = time.perf_counter()
        while True:
            result = self.shared.load(name, self.collected_at)
            if result is not None:
                self.waited[name] = time.perf_counter() - started
                return result
            if self.shared.try_lead():
                # The leader is gone (its lock went with its process): redo what is missing.
                self._lead_xdist_run()
                assert self.run is not None
                return self.run.wait(name)
            if self.shared.plan_done() and self.shared.load(name, self.collected_at) is None:
                # Never wait for what the leader will not publish.
                pytest.fail(
                    f"pytest-parexec: the xdist worker that ran the plan published no result for "
                    f"{name!r}; this is a bug in pytest-parexec, please report it",
                    pytrace=False,
                )
            time.sleep(POLL_S)

    def finish(self, op: Operation) -> None:
        """pytest finalizes session fixtures in reverse order: tear down with them.

        A teardown error is not raised here but reported at session end, with
        every other teardown error, in the summary (pytest would fold several
        into one exception group on the last test).
        """
        if self.shared is not None:
            return  # under xdist: after the last worker's tests (pytest_runtestloop)
        for runner in self._runners():
            runner.teardown([op.name])

    # -- the end of the session ------------------------------------------------

    def _kinds(self) -> dict[str, str]:
        return {name: op.kind for name, op in {**self.pre_ops, **self.all_ops}.items()}

    def _runners(self) -> list[Executor | InProcessRunner]:
        """The runners holding teardowns: the main one first (its operations depend on the others')."""
        runners: list[Executor | InProcessRunner] = []
        for runner in (self.runner, self.pre_runner):
            if runner is not None and runner not in runners:
                runners.append(runner)
        return runners

    def _finish_operations(self) -> None:
        """Tear down what is still set up, stop the workers; idempotent."""
        if self.active is None and self.executor is None:
            self.finished = True
            self.close()
            return  # nothing ran and no worker started: nothing to import or stop
        from .executor import Executor

        if self.finished:
            return
        self.finished = True
        last = self.active
        if last is not None:
            for runner in self._runners():
                if not last.done and isinstance(runner, Executor):
                    # Interrupted (Ctrl-C, an internal error): stop what runs, keep what finished.
                    runner.cancel()
                runner.teardown(last.plan.order)
            for name in last.plan.teardown_order():
                result = last.results.get(name)
                if result is not None and result.teardown_error:
                    text = f"teardown of {LABELS[self._kinds().get(name, 'batchable')]} {name!r} failed:\n"
                    text += result.teardown_error.rstrip()
                    if result.teardown_output.strip():
                        text += f"\n----- captured output of {name!r} teardown -----\n"
                        text += result.teardown_output.rstrip()
                    self.teardown_errors.append(text)
        self.start_cost = self.executor.worker_start_s if self.executor is not None else None
        self.close()
        if self.coverage is not None:
            _coverage.collect(self.coverage, managed_by_pytest_cov=_compat.pytest_cov_active(self.config))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._finish_operations()
        if self.active is None and not self.node_outputs and self.workerinput is None:
            return  # nothing ran here, nothing to report (an xdist follower still reports)
        from .executor import Status
        from .report import build_report, merge_xdist_reports, write_json

        if self.active is not None:
            for name, result in self.active.results.items():
                # A command runs whether or not a test requests it: its failure must show.
                op = self.all_ops.get(name)
                command = op is not None and op.kind == "command"
                if command and result.status is Status.FAILED and name not in self.surfaced:
                    self.unreported.append(_failure_message(name, result, self.active.results, self._kinds()))
        if (self.teardown_errors or self.unreported) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        last = self.active
        start_cost = self.start_cost
        if last is not None and last.results:
            finished = last.finished_at or time.perf_counter()
            extras = {
                name: {
                    "files_written": done.written,
                    "files_unchanged": done.unchanged,
                    "files_deleted": done.deleted,
                }
                for name, done in self.generated.items()
            }
            reason = self.mode_reason
            if self.pre_mode is not None and self.pre_mode != self.mode:
                reason += f"; generators ran before collection in {self.pre_mode} mode"
            self.report = build_report(
                last,
                self.mode,
                reason,
                max(0.0, finished - self.collected_at),
                kinds=self._kinds(),
                extras=extras,
                worker_errors=self.executor.start_errors if self.executor is not None else (),
                tx=self.settings.tx,
            )
            learned = {
                name: result.attempts[-1].duration_s
                for name, result in last.results.items()
                if result.status.ok and result.attempts
            }
            self.history.learn(learned, start_cost)
            self.history.save(getattr(self.config, "cache", None))
        if self.workerinput is not None:
            # The controller writes the summary and the files, from every worker's output.
            self._send_to_controller()
            return
        if self.is_xdist_controller and self.node_outputs:
            self.report = merge_xdist_reports(self.report, self.node_outputs)
        if self.report is not None:
            if self.settings.report is not None:
                write_json(self.report, self.settings.report)
            if self.settings.trace is not None:
                from .trace import write_trace  # only when asked for: it is not small

                write_trace(self.report, self.settings.trace)

    def _send_to_controller(self) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is None or self.workerinput is None:
            return
        prior = self.xdist_prior
        workeroutput["parexec"] = json.dumps(
            {
                "worker": self.workerinput["workerid"],
                "report": self.report,
                "ran": [n for n in (self.run.results if self.run else {}) if n not in prior],
                "waited": self.waited,
                "teardown_errors": self.teardown_errors,
            }
        )

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """xdist controller: collect what each worker sent (registered only under xdist)."""
        raw = getattr(node, "workeroutput", {}).get("parexec")
        if raw:
            output = json.loads(raw)
            self.node_outputs.append(output)
            self.teardown_errors.extend(output.get("teardown_errors", []))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.workerinput is not None:
            return
        if self.report is not None and self.report["operations"]:
            from .report import write_summary

            write_summary(terminalreporter, self.report, self.teardown_errors, self.unreported)
            self.config.hook.pytest_parexec_summary(summary=self.report, terminalreporter=terminalreporter)

    def close(self) -> None:
        for unsubscribe in self._subscriptions:
            unsubscribe()
        self._subscriptions = []
        for runner in (self.runner, self.executor):
            if runner is not None:
                runner.close()


def _precheck(record: FileRecord, op: Operation, spec: GeneratorSpec, args: Mapping[str, object]) -> bool:
    """Executor precheck: is this generator operation's output already on disk, unchanged?"""
    return record.up_to_date(op, spec, {p: args[p] for p in spec.params})


@final
class GeneratorFailure(pytest.Item):
    """A failed generator operation, shown as an error in the test report."""

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def setup(self) -> None:
        pytest.fail(self.message, pytrace=False)

    def runtest(self) -> None:  # pragma: no cover - setup always fails
        pytest.fail(self.message, pytrace=False)

    def reportinfo(self) -> tuple[str, int | None, str]:
        return ("parexec-generator", None, f"generator operation {self.name}")


def _xdist_distributing(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist controller that will start workers."""
    if not config.pluginmanager.hasplugin("xdist"):
        return False
    numprocesses = getattr(config.option, "numprocesses", None)
    return (
        bool(numprocesses or getattr(config.option, "tx", None))
        and getattr(config.option, "dist", "no") != "no"
    )


class _Published(dict[str, "OperationResult"]):
    """Results published by other xdist workers, loaded on first use."""

    def __init__(self, shared: SharedRun | None, clock: float) -> None:
        super().__init__()
        self.shared = shared
        self.clock = clock

    def __missing__(self, name: str) -> OperationResult:
        result = self.shared.load(name, self.clock) if self.shared is not None else None
        if result is None:
            raise KeyError(name)
        self[name] = result
        return result


def _importing() -> bool:
    """Whether a module is being imported right now (a copy of this process would
    hold it half done)."""
    return any(
        getattr(remote.module_attribute(m, "__spec__"), "_initializing", False)
        for m in list(sys.modules.values())
    )


def _call_in_process(task: Task, kwargs: dict[str, object]) -> tuple[object, object]:
    assert task.function is not None
    if task.tmp_path is not None:
        Path(task.tmp_path).mkdir(parents=True, exist_ok=True)
        kwargs = {**kwargs, TMP_PATH: Path(task.tmp_path)}
    return remote.start_call(task.function, kwargs)
