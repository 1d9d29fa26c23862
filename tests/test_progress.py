"""Live progress: the block redrawn on a terminal, plain lines elsewhere, -q and -v.

Unit tests drive :class:`Progress` with a fake terminal that records every
``write`` and ``write_line``, from hand-made events or from a plan run in-process
(no worker processes). Acceptance tests run pytest in a subprocess: through a
pipe for the plain lines, and inside a pseudo-terminal for the redrawn block.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import sys
import termios
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from _support import pytester_with_only_parexec  # noqa: F401 - the pytester fixture

from pytest_parexec.executor import (
    EventKind,
    InProcessRunner,
    PlanRun,
    ProgressEvent,
    Status,
    Task,
)
from pytest_parexec.planner import Node, Plan, build_plan
from pytest_parexec.progress import BLOCK_LIMIT, Follower, Progress, clock, follow

#: The cursor movement that starts each redraw of the block: up N lines, clear below.
ERASE = re.compile(r"\x1b\[(\d+)F\x1b\[J")
#: A clock() time stamp.
STAMP = r"\[\d\d:\d\d\.\d\d\]"


def count(pattern: str, lines: list[str]) -> int:
    """How many of ``lines`` match ``pattern`` entirely."""
    return sum(1 for line in lines if re.fullmatch(pattern, line))


class FakeTerminal:
    """Records what Progress writes, in order, as ("write" | "line", text)."""

    def __init__(self, *, isatty: bool = False, hasmarkup: bool = False) -> None:
        self.isatty = isatty
        self.hasmarkup = hasmarkup
        self.calls: list[tuple[str, str]] = []

    def write(self, content: str, **markup: bool) -> None:
        self.calls.append(("write", content))

    def write_line(self, line: str, **markup: bool) -> None:
        self.calls.append(("line", line))

    @property
    def lines(self) -> list[str]:
        return [text for kind, text in self.calls if kind == "line"]

    @property
    def text(self) -> str:
        return "".join(text if kind == "write" else text + "\n" for kind, text in self.calls)


def make_plan(*nodes: Node) -> Plan:
    return build_plan(nodes)


SETUP_PLAN = (
    Node("schema_db", "models"),
    Node("users_db", "models"),
    Node("api_service", "logic", ("schema_db",)),
)


def run_in_process(plan: Plan, functions: Mapping[str, Callable[..., object]], retries: int = 0) -> PlanRun:
    """Run ``plan`` in this process; every event waits in ``run.events``."""
    tasks = {
        name: Task(
            name=name,
            module=__name__,
            file=__file__,
            attribute=name,
            params=plan.nodes[name].depends,
            tmp_path=None,
            retries=retries,
            timeout=None,
            function=functions[name],
        )
        for name in plan.order
    }

    def call(task: Task, kwargs: dict[str, object]) -> tuple[object, object]:
        assert task.function is not None
        return task.function(**kwargs), None

    return InProcessRunner(call).submit(plan, tasks)


def constant(value: object) -> Callable[..., object]:
    return lambda **kwargs: value


def progress(terminal: FakeTerminal, plan: Plan, style: str, **options: Any) -> Progress:
    expected = options.pop("expected", {})
    kwargs: dict[str, Any] = {"verbose": False, "workers": 2, "mode": "parallel", **options}
    return Progress(terminal, plan, expected, style=style, **kwargs)


def started(name: str, at: float, worker: str = "gw1", attempt: int = 1) -> ProgressEvent:
    return ProgressEvent(EventKind.STARTED, name, at, worker=worker, attempt=attempt)


def finished(name: str, at: float, duration: float, worker: str = "gw1", ok: bool = True) -> ProgressEvent:
    return ProgressEvent(EventKind.FINISHED, name, at, worker=worker, ok=ok, duration_s=duration)


# -- clock --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, "[00:00.00]"),
        (1.2, "[00:01.20]"),
        (61.5, "[01:01.50]"),
        (600.25, "[10:00.25]"),
        (-3.0, "[00:00.00]"),
    ],
)
def test_clock_shows_minutes_seconds_and_hundredths(seconds: float, shown: str) -> None:
    assert clock(seconds) == shown


@pytest.mark.parametrize(("seconds", "shown"), [(59.999, "[01:00.00]"), (119.996, "[02:00.00]")])
def test_clock_carries_rounded_seconds_into_the_minutes(seconds: float, shown: str) -> None:
    assert clock(seconds) == shown


# -- choosing a style -------------------------------------------------------------


@pytest.mark.parametrize(
    ("isatty", "hasmarkup", "verbosity", "style"),
    [
        (True, True, 0, "block"),
        (True, True, 1, "block"),
        (True, False, 0, "lines"),  # a terminal with --color=no
        (False, True, 0, "lines"),  # a pipe with --color=yes
        (False, False, 0, "lines"),
        (True, True, -1, "quiet"),
        (False, False, -2, "quiet"),
    ],
)
def test_style_for_the_terminal_and_verbosity(
    isatty: bool, hasmarkup: bool, verbosity: int, style: str
) -> None:
    terminal = FakeTerminal(isatty=isatty, hasmarkup=hasmarkup)
    assert Progress.style_for(terminal, verbosity) == style


def test_no_terminal_reporter_is_quiet() -> None:
    assert Progress.style_for(None, 0) == "quiet"


def test_verbose_on_a_terminal_prints_lines_instead_of_the_block() -> None:
    terminal = FakeTerminal(isatty=True, hasmarkup=True)
    shown = progress(terminal, make_plan(*SETUP_PLAN), "block", verbose=True)
    assert shown.style == "lines"


# -- block -------------------------------------------------------------------------


def test_block_is_redrawn_in_place_then_replaced_by_one_line_per_phase() -> None:
    plan = make_plan(*SETUP_PLAN)
    terminal = FakeTerminal(isatty=True, hasmarkup=True)
    shown = progress(terminal, plan, "block")
    run = run_in_process(plan, {name: constant(name) for name in plan.order})
    follow(run, Follower(len(run.plan), shown))

    assert "\x1b[" in terminal.text
    # Every erase moves up exactly as many lines as the previous drawing wrote.
    drawn = 0
    erases = 0
    for kind, text in terminal.calls:
        if kind == "write":
            match = ERASE.fullmatch(text)
            assert match is not None, text
            assert int(match.group(1)) == drawn
            drawn = 0
            erases += 1
        else:
            drawn += 1
    assert erases >= 2

    last_erase = max(i for i, (kind, _) in enumerate(terminal.calls) if kind == "write")
    after = [text for _, text in terminal.calls[last_erase + 1 :]]
    assert len(after) == 2
    assert re.fullmatch(r"parexec: models \[sequential\] 2 operations in \d+\.\d\ds", after[0])
    assert re.fullmatch(r"parexec: logic \[sequential\] 1 operation in \d+\.\d\ds", after[1])

    # The last block before it: header, then one line per operation under its phase.
    block = [text for _, text in terminal.calls[last_erase - 6 : last_erase]]
    assert re.fullmatch(r"parexec: 3/3 done, 0 failed, \d+\.\ds", block[0])
    assert block[1] == "  models"
    assert [line.split()[:2] for line in block[2:4]] == [["schema_db", "passed"], ["users_db", "passed"]]
    assert block[4] == "  logic"
    assert block[5].split()[:2] == ["api_service", "passed"]


def test_block_header_counts_done_and_failed_and_rows_show_each_state() -> None:
    def broken() -> object:
        raise RuntimeError("no database")

    plan = make_plan(*SETUP_PLAN)
    terminal = FakeTerminal(isatty=True, hasmarkup=True)
    shown = progress(terminal, plan, "block")
    run = run_in_process(plan, {"schema_db": broken, "users_db": constant(1), "api_service": constant(2)})
    follow(run, Follower(len(run.plan), shown))

    headers = [line for line in terminal.lines if re.match(r"parexec: \d+/3 done", line)]
    assert headers[0].startswith("parexec: 0/3 done, 0 failed")
    assert headers[-1].startswith("parexec: 3/3 done, 1 failed")
    rows = terminal.lines
    assert any(re.match(r"\s+schema_db\s+running\s+\d+\.\d\ds on main$", row) for row in rows)
    assert any(re.match(r"\s+schema_db\s+failed\s+\d+\.\d\ds$", row) for row in rows)
    assert any(re.match(r"\s+api_service\s+skipped\s*$", row) for row in rows)
    assert any(re.match(r"\s+users_db\s+waiting\s*$", row) for row in rows)


def test_block_shows_a_retrying_operation() -> None:
    calls: list[int] = []

    def flaky() -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return 1

    plan = make_plan(Node("schema_db", "models"))
    terminal = FakeTerminal(isatty=True, hasmarkup=True)
    shown = progress(terminal, plan, "block")
    run = run_in_process(plan, {"schema_db": flaky}, retries=1)
    follow(run, Follower(len(run.plan), shown))
    states = [line.split()[1] for line in terminal.lines if line.strip().startswith("schema_db")]
    assert "retrying" in states
    assert states[-1] == "recovered"


def test_running_operation_with_a_learned_duration_has_a_progress_bar() -> None:
    plan = make_plan(*SETUP_PLAN)
    terminal = FakeTerminal(isatty=True, hasmarkup=True)
    shown = progress(terminal, plan, "block", expected={"schema_db": 2.0})
    shown.handle(started("schema_db", 0.0, worker="gw1"))
    shown.handle(started("users_db", 0.0, worker="gw2"))
    rows = {line.split()[0]: line for line in terminal.lines[-6:] if line.startswith("    ")}
    assert re.search(r"running\s+\d+\.\d\ds \[[#-]{10}\] of ~2\.00s on gw1$", rows["schema_db"])
    # No learned duration: elapsed time, no bar.
    assert "[" not in rows["users_db"]
    assert re.search(r"running\s+\d+\.\d\ds on gw2$", rows["users_db"])


def test_many_operations_show_only_those_running_and_a_count_of_the_rest() -> None:
    names = [f"step_{i:02d}" for i in range(BLOCK_LIMIT + 5)]
    plan = make_plan(*(Node(name, "other") for name in names))
    terminal = FakeTerminal(isatty=True, hasmarkup=True)
    shown = progress(terminal, plan, "block")
    shown.handle(started("step_03", 0.0))
    header, phase, row, rest = terminal.lines
    assert header.startswith(f"parexec: 0/{len(names)} done, 0 failed")
    assert phase == "  other"
    assert row.split()[:2] == ["step_03", "running"]
    assert rest == f"  ... {len(names) - 1} waiting, 0 finished"


# -- lines -------------------------------------------------------------------------


def test_lines_style_prints_a_line_per_start_and_end_without_escape_codes() -> None:
    plan = make_plan(*SETUP_PLAN)
    terminal = FakeTerminal(isatty=False, hasmarkup=False)
    shown = progress(terminal, plan, "lines")
    run = run_in_process(plan, {name: constant(name) for name in plan.order})
    follow(run, Follower(len(run.plan), shown))

    assert "\x1b" not in terminal.text
    assert all(kind == "line" for kind, _ in terminal.calls)
    for name in plan.order:
        assert count(rf"parexec: {STAMP} {name} started on main", terminal.lines) == 1
        assert count(rf"parexec: {STAMP} {name} passed on main \(\d+\.\d\ds\)", terminal.lines) == 1
    assert terminal.lines[-2].startswith("parexec: models [sequential] 2 operations in ")
    assert terminal.lines[-1].startswith("parexec: logic [sequential] 1 operation in ")


def test_lines_style_reports_retries_failures_and_skips() -> None:
    def broken() -> object:
        raise RuntimeError("no database")

    plan = make_plan(*SETUP_PLAN)
    terminal = FakeTerminal()
    shown = progress(terminal, plan, "lines")
    run = run_in_process(
        plan, {"schema_db": broken, "users_db": constant(1), "api_service": constant(2)}, retries=1
    )
    follow(run, Follower(len(run.plan), shown))
    events = [line.split("] ", 1)[1] for line in terminal.lines if line.startswith("parexec: [")]
    schema = [event for event in events if event.startswith("schema_db")]
    assert [event.split(" (")[0] for event in schema] == [
        "schema_db started on main",
        "schema_db retrying on main",
        "schema_db started on main",
        "schema_db failed on main",
    ]
    assert "api_service skipped" in events
    assert not any(event.startswith("api_service started") for event in events)


def test_event_lines_carry_the_time_name_worker_and_duration() -> None:
    terminal = FakeTerminal()
    shown = progress(terminal, make_plan(*SETUP_PLAN), "lines")
    shown.handle(started("schema_db", 0.02, worker="gw1"))
    shown.handle(finished("schema_db", 1.2, 1.18, worker="gw1"))
    shown.handle(finished("users_db", 75.5, 3.0, worker="gw2", ok=False))
    assert terminal.lines == [
        "parexec: [00:00.02] schema_db started on gw1",
        "parexec: [00:01.20] schema_db passed on gw1 (1.18s)",
        "parexec: [01:15.50] users_db failed on gw2 (3.00s)",
    ]


# -- quiet -------------------------------------------------------------------------


def test_quiet_style_writes_nothing_at_all() -> None:
    plan = make_plan(*SETUP_PLAN)
    terminal = FakeTerminal(isatty=True, hasmarkup=True)
    shown = progress(terminal, plan, "quiet", verbose=True)
    shown.before()
    run = run_in_process(plan, {name: constant(name) for name in plan.order})
    follow(run, Follower(len(run.plan), shown))
    assert terminal.calls == []
    assert run.events.empty()


# -- verbose -----------------------------------------------------------------------


def test_verbose_describes_each_phase_before_the_run() -> None:
    plan = make_plan(
        Node("schema_db", "models"),
        Node("users_db", "models"),
        Node("api_service", "logic", ("schema_db",)),
        Node("web_service", "logic", ("schema_db", "users_db")),
        Node("app_config", "configs", ("api_service",)),
        Node("cli_config", "configs", ("app_config",)),
    )
    terminal = FakeTerminal()
    shown = progress(terminal, plan, "lines", verbose=True, workers=2)
    shown.before()
    assert terminal.lines == [
        "parexec: 6 operations, parallel on 2 workers",
        "  models: 2 operations, 2 independent, shared dependencies: none; parallel; no learned duration yet",
        "  logic: 2 operations, 2 independent, shared dependencies: schema_db; parallel; "
        "no learned duration yet",
        "  configs: 2 operations, 1 independent, shared dependencies: none; sequential; "
        "no learned duration yet",
    ]


def test_verbose_expected_time_comes_from_learned_durations() -> None:
    plan = make_plan(Node("schema_db", "models"), Node("users_db", "models"), Node("app_config", "configs"))
    terminal = FakeTerminal()
    expected = {"schema_db": 1.0, "users_db": 2.0}
    shown = progress(terminal, plan, "lines", verbose=True, workers=2, expected=expected)
    shown.before()
    # Two lanes: the longer of the two, and not their sum.
    assert terminal.lines[1].endswith("; parallel; expected 2.00s (learned)")
    assert terminal.lines[2].endswith("; no learned duration yet")


def test_verbose_sequential_mode_says_so() -> None:
    terminal = FakeTerminal()
    shown = progress(terminal, make_plan(*SETUP_PLAN), "lines", verbose=True, workers=0, mode="sequential")
    shown.before()
    assert terminal.lines[0] == "parexec: 3 operations, sequential in the pytest process"
    assert "; sequential; " in terminal.lines[1]


def test_verbose_events_are_time_stamped_without_the_prefix() -> None:
    terminal = FakeTerminal()
    shown = progress(terminal, make_plan(*SETUP_PLAN), "lines", verbose=True)
    shown.handle(finished("schema_db", 1.2, 1.18, worker="gw1"))
    assert terminal.lines == ["[00:01.20] schema_db passed on gw1 (1.18s)"]


def test_not_verbose_describes_nothing_before_the_run() -> None:
    terminal = FakeTerminal()
    progress(terminal, make_plan(*SETUP_PLAN), "lines").before()
    assert terminal.calls == []


def test_result_events_set_the_final_state() -> None:
    terminal = FakeTerminal()
    shown = progress(terminal, make_plan(*SETUP_PLAN), "lines")
    shown.handle(ProgressEvent(EventKind.RESULT, "users_db", 1.0, status=Status.RECOVERED))
    shown.handle(ProgressEvent(EventKind.RESULT, "api_service", 1.0, status=Status.SKIPPED))
    assert shown.rows["users_db"].state == "recovered"
    assert shown.rows["api_service"].state == "skipped"
    assert terminal.lines == ["parexec: [00:01.00] api_service skipped"]


# -- acceptance ----------------------------------------------------------------------

CONFTEST = r'''
import os
import time
from pathlib import Path

from pytest_parexec import batchable

OUT = Path(__file__).parent / "out"
OUT.mkdir(exist_ok=True)


def rendezvous(me, other, timeout=60.0):
    """Return once ``other`` has started too: proves the two ran at the same time."""
    (OUT / f"{me}.here").touch()
    deadline = time.monotonic() + timeout
    while not (OUT / f"{other}.here").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{me}: {other} did not start within {timeout}s")
        time.sleep(0.01)


@batchable
def schema_db():
    rendezvous("schema_db", "users_db")
    return "schema"


@batchable
def users_db():
    rendezvous("users_db", "schema_db")
    return "users"


@batchable
def api_service(schema_db):
    return schema_db + "+api"


@batchable
def web_service(schema_db, users_db):
    return schema_db + users_db
'''

TESTS = """
def test_services(api_service, web_service):
    assert api_service == "schema+api"
    assert web_service == "schemausers"
"""

OPERATIONS = ("schema_db", "users_db", "api_service", "web_service")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_services=TESTS)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "parexec", *args)


def progress_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("parexec:")]


@pytest.mark.parametrize("color", ["--color=no", "--color=yes"])
def test_output_to_a_pipe_is_one_plain_line_per_start_and_end(suite: pytest.Pytester, color: str) -> None:
    result = run(suite, color)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert not ERASE.search(out)
    if color == "--color=no":
        assert "\x1b" not in out
    lines = progress_lines(result)
    assert "\x1b" not in "\n".join(lines)
    for name in OPERATIONS:
        assert count(rf"parexec: {STAMP} {name} started on gw\d+", lines) == 1
        assert count(rf"parexec: {STAMP} {name} passed on gw\d+ \(\d+\.\d\ds\)", lines) == 1
    assert re.fullmatch(r"parexec: models \[parallel\] 2 operations in \d+\.\d\ds", lines[-2])
    assert re.fullmatch(r"parexec: logic \[(parallel|sequential)\] 2 operations in \d+\.\d\ds", lines[-1])
    # No block: no header with counts.
    assert not any(re.match(r"parexec: \d+/\d+ done", line) for line in lines)


def test_pipe_output_shows_failures_retries_and_skips(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_parexec import batchable

        @batchable
        def broken_db():
            raise RuntimeError("no database")

        @batchable
        def api_service(broken_db):
            return broken_db
        """
    )
    pytester.makepyfile(
        test_it="""
        def test_api(api_service):
            pass
        """
    )
    result = run(pytester, "--parexec=parallel")
    result.assert_outcomes(errors=1)
    lines = progress_lines(result)
    assert "\x1b" not in result.stdout.str()
    assert count(rf"parexec: {STAMP} broken_db retrying on gw\d+ \(\d+\.\d\ds\)", lines) == 1
    assert count(rf"parexec: {STAMP} broken_db failed on gw\d+ \(\d+\.\d\ds\)", lines) == 1
    assert count(rf"parexec: {STAMP} api_service skipped", lines) == 1


def test_quiet_shows_no_progress_but_the_summary(suite: pytest.Pytester) -> None:
    result = run(suite, "-q")
    result.assert_outcomes(passed=1)
    assert progress_lines(result) == []
    assert not any(" started on " in line or " passed on " in line for line in result.outlines)
    result.stdout.fnmatch_lines(
        ["*= parallel execution summary =*", "4 operations on * workers (parallel mode: *)"]
    )


def test_verbose_describes_the_plan_and_time_stamps_events(suite: pytest.Pytester) -> None:
    result = run(suite, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "parexec: 4 operations, parallel on * workers",
            "  models: 2 operations, 2 independent, shared dependencies: none; parallel; "
            "no learned duration yet",
            "  logic: 2 operations, 2 independent, shared dependencies: schema_db; parallel; "
            "no learned duration yet",
        ]
    )
    for name in OPERATIONS:
        assert count(rf"{STAMP} {name} started on gw\d+", result.outlines) == 1
        assert count(rf"{STAMP} {name} passed on gw\d+ \(\d+\.\d\ds\)", result.outlines) == 1
    # Time-stamped events replace the plain "parexec: ..." event lines.
    assert not any(line.startswith("parexec: [") for line in result.outlines)


def run_in_terminal(pytester: pytest.Pytester, *args: str, columns: int = 200) -> tuple[int, str]:
    """Run pytest with a pseudo-terminal as stdin, stdout and stderr; return (exit code, output).

    The default window is wide, so that no line of the block wraps.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = pytester.popen(
        [sys.executable, "-m", "pytest", "-p", "parexec", f"--basetemp={pytester.path / 'basetemp'}", *args],
        stdout=slave,
        stderr=slave,
        stdin=slave,
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120  # a bound against hanging, not a speed claim
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("pytest in a pseudo-terminal did not finish within 120 s")
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every copy of the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_terminal_shows_a_block_redrawn_in_place_then_the_phase_lines(suite: pytest.Pytester) -> None:
    code, out = run_in_terminal(suite, "--color=yes")
    assert code == 0, out
    assert ERASE.search(out), out
    # The block: a header with counts, and operations under their phase with their state.
    assert re.search(
        r"parexec: 0/4 done, 0 failed, \d+\.\ds\r?\n  models\r?\n    schema_db +(waiting|running)", out
    )
    assert re.search(r"parexec: 4/4 done, 0 failed, \d+\.\ds", out)
    assert re.search(r"\n +api_service +running +\d+\.\d\ds on gw\d+", out)
    # No plain event lines on a terminal.
    assert " started on gw" not in out
    # The last redraw is replaced by one line per phase.
    assert re.search(
        r"\x1b\[\d+F\x1b\[Jparexec: models \[parallel\] 2 operations in \d+\.\d\ds\r?\n"
        r"parexec: logic \[(parallel|sequential)\] 2 operations in \d+\.\d\ds\r?\n",
        out,
    ), out
    assert "parallel execution summary" in out


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LONG_NAME = "schema_of_the_customer_relationship_management_database_with_every_migration"


def test_terminal_block_lines_fit_the_terminal_width(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        f"""
        from pytest_parexec import batchable

        @batchable
        def {LONG_NAME}():
            return 1

        @batchable
        def users_db():
            return 2
        """
    )
    pytester.makepyfile(test_it=f"def test_it({LONG_NAME}, users_db):\n    pass\n")
    code, out = run_in_terminal(pytester, "--color=yes", columns=80)
    assert code == 0, out
    rows = [ANSI.sub("", line) for line in out.replace("\r\n", "\n").split("\n")]
    # Rows are cut to the width, so a row is found by the start of the operation's name.
    block_rows = [row for row in rows if row.startswith(f"    {LONG_NAME[:40]}")]
    assert block_rows  # the block was drawn
    assert max(len(row) for row in block_rows) <= 80


def test_in_process_progress_is_printed_while_the_operation_runs(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_parexec import batchable

        @batchable
        def schema_db():
            print("schema_db is running now", flush=True)
            return 1
        """
    )
    pytester.makepyfile(test_it="def test_it(schema_db):\n    pass\n")
    result = run(pytester, "-s")  # auto: a single operation runs in-process
    result.assert_outcomes(passed=1)
    lines = result.outlines
    inside = lines.index("schema_db is running now")
    start = next(i for i, line in enumerate(lines) if line.endswith("schema_db started on main"))
    end = next(i for i, line in enumerate(lines) if "schema_db passed on main" in line)
    assert start < inside < end
