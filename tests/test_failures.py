"""Acceptance tests for failure semantics: what a user sees when setup goes wrong.

Every scenario reproduces its fault for real in a pytest subprocess
(``runpytest_subprocess``), because the plugin starts worker processes.
Operations leave traces in ``out/`` next to the scenario's conftest.py: a
``pids`` file with one ``<label> <pid>`` line for every process they ran in or
started, a ``log`` of what ran in which order, and marker files. Nothing is
timed: concurrency is shown with files, and the only waits are bounded polls
for a process to be gone or a file to appear.
"""

from __future__ import annotations

import itertools
import json
import re
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from _support import process_gone

#: The start of every scenario's conftest.py.
HELPERS = r'''
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_parexec import batchable

OUT = Path(__file__).parent / "out"
OUT.mkdir(exist_ok=True)


def log(line):
    with open(OUT / "log", "a") as stream:
        stream.write(line + "\n")


def note_pid(label):
    """Record the process this code runs in, to check afterwards that it is gone."""
    with open(OUT / "pids", "a") as stream:
        stream.write(f"{label} {os.getpid()}\n")


def start_child(label):
    child = subprocess.Popen(["sleep", "300"])
    with open(OUT / "pids", "a") as stream:
        stream.write(f"{label} {child.pid}\n")
    return child


def wait_for(path, timeout=30.0):
    """Return once ``path`` exists; fail if it does not appear in time."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} did not appear within {timeout}s")
        time.sleep(0.01)


def process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
'''

#: How each mode is asked for on the command line.
MODES = {
    "parallel": ("-p", "parexec"),
    "sequential": ("-p", "parexec", "--parexec=sequential"),
    "no-plugin": ("-p", "no:parexec"),
}

#: No scenario may hang the suite.
RUN_TIMEOUT_S = 120


def make_suite(pytester: pytest.Pytester, conftest: str, tests: str, ini: str = "") -> None:
    pytester.makeconftest(HELPERS + textwrap.dedent(conftest))
    pytester.makepyfile(test_suite=textwrap.dedent(tests))
    if ini:
        pytester.makeini("[pytest]\n" + textwrap.dedent(ini))


def run(pytester: pytest.Pytester, *args: str, mode: str = "parallel") -> pytest.RunResult:
    """Run the scenario; with the plugin, write the JSON report to report.json."""
    report = () if mode == "no-plugin" else ("--parexec-report=report.json",)
    return pytester.runpytest_subprocess(*MODES[mode], *report, *args, timeout=RUN_TIMEOUT_S)


def out(pytester: pytest.Pytester, name: str) -> Path:
    return pytester.path / "out" / name


def read_log(pytester: pytest.Pytester) -> list[str]:
    path = out(pytester, "log")
    return path.read_text().splitlines() if path.exists() else []


def recorded_pids(pytester: pytest.Pytester) -> dict[str, list[int]]:
    """``label -> pids`` from out/pids, in the order they were written."""
    found: dict[str, list[int]] = {}
    path = out(pytester, "pids")
    for line in path.read_text().splitlines() if path.exists() else []:
        label, pid = line.split()
        found.setdefault(label, []).append(int(pid))
    return found


def assert_processes_gone(pytester: pytest.Pytester, *labels: str) -> None:
    """Every process the scenario recorded is gone within 10 s; ``labels`` were recorded."""
    recorded = recorded_pids(pytester)
    assert set(labels) <= set(recorded), recorded
    pids = {pid for group in recorded.values() for pid in group}
    deadline = time.monotonic() + 10
    while not all(process_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {(label, pid) for label, group in recorded.items() for pid in group if not process_gone(pid)}
    assert left == set()


def report_ops(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    data = json.loads((pytester.path / "report.json").read_text())
    return {op["name"]: op for op in data["operations"]}


def sections(result: pytest.RunResult) -> dict[str, str]:
    """The report sections of the output (``ERROR at setup of test_x``...), by title."""
    text = re.split(
        r"^=+ (?:short test summary info|parallel execution summary) =+$", result.stdout.str(), flags=re.M
    )[0]
    parts = re.split(r"^_{2,} (.+?) _{2,}$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def line_of(pytester: pytest.Pytester, fragment: str) -> int:
    """The line number of the one conftest.py line that contains ``fragment``."""
    lines = (pytester.path / "conftest.py").read_text().splitlines()
    (number,) = [i + 1 for i, line in enumerate(lines) if fragment in line]
    return number


def outcomes_line(result: pytest.RunResult) -> str:
    (line,) = [line for line in result.outlines if line.startswith("outcomes: ")]
    return line


# -- 1, 2: an operation that raises, and what depends on it --------------------------------


FAILING_CONFTEST = """
    @batchable(retries=0)
    def broken_data():
        note_pid("broken_data")
        print("stdout line from broken_data")
        print("stderr line from broken_data", file=sys.stderr)
        raise ValueError("schema.sql: syntax error at line 3")


    @batchable
    def child_service(broken_data):
        (OUT / "child_service.ran").touch()


    @batchable(after=["child_service"])
    def grandchild_config():
        (OUT / "grandchild_config.ran").touch()


    @pytest.fixture
    def ordinary(broken_data):
        return broken_data


    @batchable
    def healthy_model():
        note_pid("healthy_model")
        return 42
"""

FAILING_TESTS = """
    def test_direct(broken_data):
        pass

    def test_through_ordinary_fixture(ordinary):
        pass

    def test_through_batchable(child_service):
        pass

    def test_through_after(grandchild_config):
        pass

    def test_healthy(healthy_model):
        assert healthy_model == 42

    def test_plain():
        pass
"""


def test_failed_operation_errors_every_test_that_needs_it(pytester: pytest.Pytester) -> None:
    make_suite(pytester, FAILING_CONFTEST, FAILING_TESTS)
    result = run(pytester)
    result.assert_outcomes(errors=4, passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    raise_line = line_of(pytester, 'raise ValueError("schema.sql')
    found = sections(result)
    for test in ("direct", "through_ordinary_fixture", "through_batchable", "through_after"):
        text = found[f"ERROR at setup of test_{test}"]
        # Dependents do not run: their tests error with the root operation's failure.
        assert re.search(r"batchable operation 'broken_data' failed on gw\d+ \(pid \d+\)", text), text
        assert re.search(
            rf'conftest\.py", line {raise_line}, in broken_data\n\s+raise ValueError\("schema\.sql', text
        ), text
        assert "ValueError: schema.sql: syntax error at line 3" in text
        captured = text.split("----- captured output of 'broken_data' -----\n", 1)[1]
        assert "stdout line from broken_data\n" in captured
        assert "stderr line from broken_data\n" in captured
    assert not out(pytester, "child_service.ran").exists()
    assert not out(pytester, "grandchild_config.ran").exists()

    ops = report_ops(pytester)
    assert (ops["broken_data"]["status"], ops["broken_data"]["attempts"]) == ("failed", 1)
    assert ops["healthy_model"]["status"] == "passed"
    for name in ("child_service", "grandchild_config"):
        # blocked_by is the root, even two steps away through an after= edge.
        assert (ops[name]["status"], ops[name]["blocked_by"], ops[name]["attempts"]) == (
            "skipped",
            "broken_data",
            0,
        )
    assert_processes_gone(pytester, "broken_data", "healthy_model")


# -- 3: retries -----------------------------------------------------------------------------


ALONE_CONFTEST = """
    # a_flaky fails its first attempt while b_slow runs, and passes on its retry.
    # Each operation but a_flaky holds a running-<name> file while it runs, and the
    # retry holds retry-running: whichever of two overlapping operations starts
    # second sees the other's file.
    # b_slow finishes only once the pytest process has been told of the failure (the
    # hook below), so the scheduler knows of it before a worker frees up for c or d.


    def pytest_parexec_operation_finished(result):
        if result.name == "a_flaky" and result.status == "retrying":
            (OUT / "failure-seen").touch()

    def running(name):
        (OUT / f"running-{name}").touch()


    def stopped(name):
        (OUT / f"running-{name}").unlink()


    @batchable
    def a_flaky():
        note_pid("a_flaky")
        if not (OUT / "a_flaky.failed").exists():
            wait_for(OUT / "running-b_slow")
            (OUT / "a_flaky.failed").touch()
            raise RuntimeError("first attempt fails on purpose")
        (OUT / "retry-running").touch()
        (OUT / "retry-saw").write_text(" ".join(sorted(p.name for p in OUT.glob("running-*"))))
        (OUT / "retry-running").unlink()
        (OUT / "a_flaky.ok").touch()
        return "second time lucky"


    @batchable
    def b_slow():
        running("b_slow")
        note_pid("b_slow")
        wait_for(OUT / "failure-seen")
        stopped("b_slow")


    def later(name):
        running(name)
        note_pid(name)
        saw = "retry-running" if (OUT / "retry-running").exists() else "-"
        (OUT / f"{name}.saw").write_text(f"{saw} retry-done={(OUT / 'a_flaky.ok').exists()}")
        stopped(name)


    @batchable
    def c_later():
        later("c_later")


    @batchable
    def d_later():
        later("d_later")
"""

ALONE_TESTS = """
    def test_a(a_flaky):
        assert a_flaky == "second time lucky"

    def test_b(b_slow):
        pass

    def test_c(c_later):
        pass

    def test_d(d_later):
        pass
"""


def test_retry_runs_alone_on_a_fresh_worker(pytester: pytest.Pytester) -> None:
    make_suite(pytester, ALONE_CONFTEST, ALONE_TESTS)
    # Two workers: a_flaky and b_slow run first (by name), c and d wait for a worker.
    result = run(pytester, "--parexec-workers=2")
    result.assert_outcomes(passed=4)
    assert outcomes_line(result) == "outcomes: 1 recovered, 1 retried"

    ops = report_ops(pytester)
    flaky = ops["a_flaky"]
    assert (flaky["status"], flaky["attempts"]) == ("recovered", 2)
    first, retry = flaky["attempt_history"]
    assert (first["status"], retry["status"]) == ("failed", "passed")
    assert "RuntimeError: first attempt fails on purpose" in first["error"]
    # On another process, which is the one the operation saw itself run in.
    assert first["pid"] != retry["pid"]
    assert recorded_pids(pytester)["a_flaky"] == [first["pid"], retry["pid"]]
    # A fresh worker: not one that ran anything before the retry started.
    earlier = [
        attempt
        for op in ops.values()
        for attempt in op["attempt_history"]
        if attempt is not retry and attempt["start_s"] <= retry["start_s"]
    ]
    assert retry["worker"] not in {a["worker"] for a in earlier}, (retry, earlier)
    assert retry["pid"] not in {a["pid"] for a in earlier}

    # Alone: b_slow, running when the first attempt failed, had finished before the retry
    # started, and c and d, ready all along, started after it had finished.
    assert out(pytester, "retry-saw").read_text() == ""
    for name in ("c_later", "d_later"):
        assert out(pytester, f"{name}.saw").read_text() == "- retry-done=True"
    # The same, from the scheduler's records: no attempt's interval overlaps the retry's.
    for op in ops.values():
        for attempt in op["attempt_history"]:
            if attempt is not retry:
                assert attempt["end_s"] <= retry["start_s"] or attempt["start_s"] >= retry["end_s"], (
                    op["name"],
                    attempt,
                    retry,
                )
    assert_processes_gone(pytester, "a_flaky", "b_slow", "c_later", "d_later")


RETRY_COUNT_CONFTEST = """
    @batchable
    def flaky_default():
        note_pid("flaky_default")
        marker = OUT / "flaky_default.failed"
        if not marker.exists():
            marker.touch()
            raise RuntimeError("flaky_default fails once")
        return "ok"


    @batchable
    def always_default():
        note_pid("always_default")
        raise RuntimeError("always_default always fails")


    @batchable(retries=2)
    def always_two():
        note_pid("always_two")
        raise RuntimeError("always_two always fails")
"""

RETRY_COUNT_TESTS = """
    def test_flaky_default(flaky_default):
        assert flaky_default == "ok"

    def test_always_default(always_default):
        pass

    def test_always_two(always_two):
        pass
"""


@pytest.mark.parametrize(
    ("ini", "attempts", "outcomes"),
    [
        # parexec_retries defaults to 1: one retry.
        ("", {"flaky_default": 2, "always_default": 2}, "outcomes: 2 failed, 1 recovered, 3 retried"),
        (
            "parexec_retries = 0\n",
            {"flaky_default": 1, "always_default": 1},
            "outcomes: 3 failed, 1 retried",
        ),
    ],
    ids=["default ini", "parexec_retries = 0"],
)
def test_retry_counts_from_ini_and_decorator(
    pytester: pytest.Pytester, ini: str, attempts: dict[str, int], outcomes: str
) -> None:
    make_suite(pytester, RETRY_COUNT_CONFTEST, RETRY_COUNT_TESTS, ini=ini)
    result = run(pytester)
    ops = report_ops(pytester)
    recovered = attempts["flaky_default"] == 2
    result.assert_outcomes(passed=int(recovered), errors=3 - int(recovered))
    assert outcomes_line(result) == outcomes
    assert (ops["flaky_default"]["status"], ops["flaky_default"]["attempts"]) == (
        "recovered" if recovered else "failed",
        attempts["flaky_default"],
    )
    assert (ops["always_default"]["status"], ops["always_default"]["attempts"]) == (
        "failed",
        attempts["always_default"],
    )
    # retries=2 on the decorator wins over the ini value: three attempts, each on its own worker.
    assert (ops["always_two"]["status"], ops["always_two"]["attempts"]) == ("failed", 3)
    pids = recorded_pids(pytester)
    assert len(set(pids["always_two"])) == 3
    assert pids["always_two"] == [a["pid"] for a in ops["always_two"]["attempt_history"]]
    text = sections(result)["ERROR at setup of test_always_two"]
    assert re.search(r"batchable operation 'always_two' failed on gw\d+ \(pid \d+\) after 3 attempts", text)
    assert "RuntimeError: always_two always fails" in text
    assert_processes_gone(pytester, "flaky_default", "always_default", "always_two")


# -- 4: timeouts ----------------------------------------------------------------------------


TIMEOUT_CONFTEST = """
    @batchable(timeout=1, retries=0)
    def hang_explicit():
        note_pid("hang_explicit")
        start_child("hang_explicit-child")
        time.sleep(60)


    @batchable(retries=0)
    def hang_ini():
        note_pid("hang_ini")
        start_child("hang_ini-child")
        time.sleep(60)


    @batchable(timeout=60)  # not the ini's 2 s: nothing here depends on the machine's speed
    def quick():
        note_pid("quick")
        return "quick"
"""

TIMEOUT_TESTS = """
    import time
    from pathlib import Path

    from conftest import process_gone


    def test_explicit(hang_explicit):
        pass

    def test_ini(hang_ini):
        pass

    def test_quick(quick):
        assert quick == "quick"

    def test_killed_when_the_timeout_expired():
        # Tests run once every operation has a result: the processes of the timed-out
        # operations must be gone now, not only when the session ends.
        lines = (Path(__file__).parent / "out" / "pids").read_text().splitlines()
        pids = {label: int(pid) for label, pid in (line.split() for line in lines)}
        hung = {label: pid for label, pid in pids.items() if label.startswith("hang_")}
        assert len(hung) == 4
        deadline = time.monotonic() + 10
        while not all(map(process_gone, hung.values())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [label for label, pid in hung.items() if not process_gone(pid)] == []
"""


def test_timeout_kills_the_worker_and_its_children(pytester: pytest.Pytester) -> None:
    make_suite(pytester, TIMEOUT_CONFTEST, TIMEOUT_TESTS, ini="parexec_timeout = 2\nparexec_retries = 0\n")
    result = run(pytester)
    result.assert_outcomes(errors=2, passed=2)
    pids = recorded_pids(pytester)
    found = sections(result)
    for test, name, seconds in (("explicit", "hang_explicit", "1 second"), ("ini", "hang_ini", "2 seconds")):
        (pid,) = pids[name]
        assert re.search(
            rf"operation '{name}' timed out after {seconds}; its worker process gw\d+ \(pid {pid}\) "
            "and that process's children were killed",
            found[f"ERROR at setup of test_{test}"],
        ), found[f"ERROR at setup of test_{test}"]
    ops = report_ops(pytester)
    assert ops["hang_explicit"]["status"] == ops["hang_ini"]["status"] == "failed"
    assert_processes_gone(
        pytester, "hang_explicit", "hang_explicit-child", "hang_ini", "hang_ini-child", "quick"
    )


# -- 5: a worker dies -----------------------------------------------------------------------


DEATH_CONFTEST = """
    @batchable(retries=0)
    def a_exits():
        note_pid("a_exits")
        os._exit(3)


    @batchable(retries=0)
    def b_segfaults():
        note_pid("b_segfaults")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the project
        os.kill(os.getpid(), signal.SIGSEGV)


    def survivor(name):
        note_pid(name)
        return name


    @batchable
    def c_survives():
        return survivor("c_survives")


    @batchable
    def d_survives():
        return survivor("d_survives")


    @batchable
    def e_survives():
        return survivor("e_survives")
"""

DEATH_TESTS = """
    def test_exits(a_exits):
        pass

    def test_segfaults(b_segfaults):
        pass

    def test_survivors(c_survives, d_survives, e_survives):
        assert (c_survives, d_survives, e_survives) == ("c_survives", "d_survives", "e_survives")
"""


def test_dead_worker_fails_its_operation_and_the_plan_goes_on(pytester: pytest.Pytester) -> None:
    make_suite(pytester, DEATH_CONFTEST, DEATH_TESTS)
    # Two workers, both taken by the operations that kill them (they come first by name).
    result = run(pytester, "--parexec-workers=2")
    result.assert_outcomes(errors=2, passed=1)
    pids = recorded_pids(pytester)
    found = sections(result)
    for test, name, how in (
        ("exits", "a_exits", "exit status 3"),
        ("segfaults", "b_segfaults", "killed by signal SIGSEGV"),
    ):
        (pid,) = pids[name]
        text = found[f"ERROR at setup of test_{test}"]
        assert re.search(
            rf"the worker process gw\d+ \(pid {pid}\) died while running operation '{name}': {how}", text
        ), text
    dead = {pids["a_exits"][0], pids["b_segfaults"][0]}
    ops = report_ops(pytester)
    for name in ("c_survives", "d_survives", "e_survives"):
        assert ops[name]["status"] == "passed"
        assert pids[name][0] not in dead
    assert_processes_gone(pytester, "a_exits", "b_segfaults", "c_survives", "d_survives", "e_survives")


# -- 6: values that cannot cross to the pytest process ---------------------------------------


VALUE_CONFTEST = """
    class Custom:
        pass


    @batchable(retries=0)
    def lock_value():
        return threading.Lock()


    @batchable(retries=0)
    def socket_value():
        return socket.socket()


    @batchable(retries=0)
    def nested_value():
        return {"outer": [1, Custom()]}


    @batchable(retries=0)
    def generator_value():
        log("generator_value setup")
        yield threading.Lock()
        log("generator_value teardown")


    @batchable(retries=0)
    def never_yields():
        if False:
            yield


    @batchable
    def fine_value():
        return {"ok": [1, 2]}
"""

VALUE_TESTS = """
    def test_lock(lock_value):
        pass

    def test_socket(socket_value):
        pass

    def test_nested(nested_value):
        pass

    def test_generator(generator_value):
        pass

    def test_never_yields(never_yields):
        pass

    def test_fine(fine_value):
        assert fine_value == {"ok": [1, 2]}
"""


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_value_that_cannot_cross_is_an_error_naming_the_operation(
    pytester: pytest.Pytester, mode: str
) -> None:
    make_suite(pytester, VALUE_CONFTEST, VALUE_TESTS)
    result = run(pytester, mode=mode)
    result.assert_outcomes(errors=5, passed=1)
    found = sections(result)
    for test, name, where, kind in (
        ("lock", "lock_value", "the value", "_thread.lock"),
        ("socket", "socket_value", "the value", "socket.socket"),
        ("nested", "nested_value", "the value['outer'][1]", "Custom"),
        ("generator", "generator_value", "the value", "_thread.lock"),
    ):
        text = " ".join(found[f"ERROR at setup of test_{test}"].split())
        assert f"batchable operation '{name}' returned a value that cannot cross" in text, text
        assert re.search(rf"{re.escape(where)} is of type \S*{re.escape(kind)}\.", text), text
        assert "Return plain data" in text
        assert f"in an ordinary fixture that depends on '{name}'" in text
    never = found["ERROR at setup of test_never_yields"]
    assert "generator 'never_yields' returned without yielding" in never, never
    # The generator's teardown ran once, right away, though its value was refused.
    assert read_log(pytester) == ["generator_value setup", "generator_value teardown"]


# -- 7: plans that cannot run ----------------------------------------------------------------


#: Each bad plan, and the edges (operation -> what it depends on) it declares.
CYCLES = {
    "parameters": (
        """
        @batchable
        def alpha(beta):
            log("alpha")

        @batchable
        def beta(alpha):
            log("beta")
        """,
        {"alpha": ["beta"], "beta": ["alpha"]},
    ),
    "after": (
        """
        @batchable(after=["beta"])
        def alpha():
            log("alpha")

        @batchable(after=["alpha"])
        def beta():
            log("beta")
        """,
        {"alpha": ["beta"], "beta": ["alpha"]},
    ),
    "parameters and after": (
        """
        @batchable
        def alpha(beta):
            log("alpha")

        @batchable(after=["gamma"])
        def beta():
            log("beta")

        @batchable
        def gamma(alpha, outside):
            log("gamma")

        @batchable
        def outside():
            log("outside")
        """,
        {"alpha": ["beta"], "beta": ["gamma"], "gamma": ["alpha", "outside"], "outside": []},
    ),
}


def usage_error(result: pytest.RunResult) -> str:
    """The one ERROR line of a usage error, after checking the exit code."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    assert "Traceback" not in result.stderr.str()
    (line,) = [line for line in result.errlines if line.startswith("ERROR:")]
    return line


@pytest.mark.parametrize("case", CYCLES)
def test_cycle_is_a_usage_error_that_names_the_cycle(pytester: pytest.Pytester, case: str) -> None:
    conftest, edges = CYCLES[case]
    make_suite(pytester, conftest, "def test_alpha(alpha):\n    pass\n")
    line = usage_error(run(pytester))
    match = re.search(r"dependency cycle: (\w+(?: -> \w+)+)$", line)
    assert match, line
    chain = match.group(1).split(" -> ")
    assert chain[0] == chain[-1], chain
    assert len(set(chain)) == len(chain) - 1, chain
    for name, dep in itertools.pairwise(chain):
        assert dep in edges[name], f"{name} -> {dep} is not an edge of {edges}"
    assert "outside" not in chain
    assert read_log(pytester) == []


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("after=['no_such_step']", r"after= entry 'no_such_step' of batchable operation 'api_step'"),
        ("no_such_step", r"parameter 'no_such_step' of batchable operation 'api_step'.*not a batchable"),
        ("plain_fixture", r"parameter 'plain_fixture' of batchable operation 'api_step'.*not a batchable"),
        ("after=['plain_fixture']", r"after= entry 'plain_fixture' of .*'api_step'.*not a batchable"),
    ],
    ids=["unknown after", "unknown parameter", "ordinary fixture parameter", "ordinary fixture after"],
)
def test_dependency_that_is_not_an_operation_is_named(
    pytester: pytest.Pytester, how: str, expected: str
) -> None:
    decorator, param = ("@batchable(" + how + ")", "") if how.startswith("after") else ("@batchable", how)
    make_suite(
        pytester,
        f"""
        @pytest.fixture(scope="session")
        def plain_fixture():
            return 1

        {decorator}
        def api_step({param}):
            log("api_step")
        """,
        "def test_api(api_step):\n    pass\n",
    )
    line = usage_error(run(pytester))
    assert re.search(expected, line), line
    assert read_log(pytester) == []


def test_function_that_is_not_module_level_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_lambda="""
            from pytest_parexec import batchable

            anonymous = batchable(lambda: 1)
        """,
        test_nested="""
            from pytest_parexec import batchable

            def make():
                @batchable
                def inner():
                    return 1
                return inner

            inner = make()
        """,
        test_method="""
            from pytest_parexec import batchable

            class Holder:
                @batchable
                def method(self):
                    return 1
        """,
    )
    result = pytester.runpytest_subprocess("-p", "parexec", timeout=RUN_TIMEOUT_S)
    result.assert_outcomes(errors=3)
    found = sections(result)
    for module, qualname in (
        ("test_lambda", "<lambda>"),
        ("test_nested", "make.<locals>.inner"),
        ("test_method", "Holder.method"),
    ):
        text = found[f"ERROR collecting {module}.py"]
        assert re.search(rf"ParexecError: @batchable '{re.escape(qualname)}'.*module-level", text), text


# -- 8: options that make no sense ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "ini", "expected"),
    [
        (["--parexec-workers=0"], "", "argument --parexec-workers: '0'"),
        (["--parexec-workers=abc"], "", "argument --parexec-workers: 'abc'"),
        (["--parexec=fast"], "", "argument --parexec: invalid choice: 'fast'"),
        ([], "parexec_timeout = -1", "ini option parexec_timeout = '-1'"),
        ([], "parexec_retries = x", "ini option parexec_retries = 'x'"),
        ([], "parexec_mode = fast", "ini option parexec_mode = 'fast'"),
    ],
)
def test_bad_option_is_a_one_line_usage_error(
    pytester: pytest.Pytester, args: list[str], ini: str, expected: str
) -> None:
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_never_runs():\n    raise AssertionError\n")
    # The options are checked before any worker starts: in process is enough.
    result = pytester.runpytest("-p", "parexec", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = result.stderr.str()
    assert "Traceback" not in errors
    # One line says what is wrong, naming the option (argparse adds a usage line).
    (line,) = [line for line in result.errlines if "error:" in line.lower() and "usage:" not in line]
    assert expected in line, errors
    assert "test_never_runs" not in result.stdout.str()


# -- 9: teardown ----------------------------------------------------------------------------


TEARDOWN_CONFTEST = """
    def step(name, value):
        log(f"setup {name} {os.getpid()}")
        yield value
        log(f"teardown {name} {os.getpid()}")


    @batchable
    def base_db():
        yield from step("base_db", "db")


    @batchable
    def app_service(base_db):
        yield from step("app_service", base_db + "+app")


    @batchable(after=["base_db"])
    def bad_step():
        yield from step("bad_step", "bad")
        raise RuntimeError("bad_step teardown fails on purpose")


    @batchable
    def twice_step():
        yield from step("twice_step", 1)
        yield 2


    @batchable
    def skipped_step():
        yield from step("skipped_step", "never used")
"""

TEARDOWN_TESTS = """
    import os

    import pytest

    from conftest import log


    def test_app(app_service):
        log(f"test test_app {os.getpid()}")
        assert app_service == "db+app"

    def test_bad(bad_step):
        assert bad_step == "bad"

    def test_twice(twice_step):
        assert twice_step == 1

    @pytest.mark.skip(reason="on purpose")
    def test_skipped(skipped_step):
        pass

    def test_last():
        log("test test_last")
"""


@pytest.mark.parametrize("mode", list(MODES))
def test_teardown_at_session_end_in_reverse_dependency_order(pytester: pytest.Pytester, mode: str) -> None:
    make_suite(pytester, TEARDOWN_CONFTEST, TEARDOWN_TESTS)
    result = run(pytester, mode=mode)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["skipped"]) == (4, 1), outcomes

    log = read_log(pytester)
    events = {tuple(line.split()[:2]): line.split()[2:] for line in log}
    assert len(events) == len(log), log  # nothing set up or torn down twice
    test_pid = int(events[("test", "test_app")][0])
    last_test = log.index("test test_last")
    set_up = {name for kind, name in events if kind == "setup"}
    assert {"base_db", "app_service", "bad_step", "twice_step"} <= set_up
    for name in set_up:
        # Every operation that was set up is torn down, after the last test, in its process.
        assert ("teardown", name) in events, (name, log)
        assert events[("setup", name)] == events[("teardown", name)], (name, log)
        assert log.index(f"teardown {name} {events[('teardown', name)][0]}") > last_test
        in_pytest = int(events[("setup", name)][0]) == test_pid
        assert in_pytest is (mode != "parallel"), (name, log)
    teardowns = [line.split()[1] for line in log if line.startswith("teardown")]
    # Dependents first; base_db's teardown runs although bad_step's raised before it.
    assert teardowns.index("app_service") < teardowns.index("base_db")
    assert teardowns.index("bad_step") < teardowns.index("base_db")

    raise_line = line_of(pytester, 'raise RuntimeError("bad_step teardown')
    output = result.stdout.str()
    assert re.search(
        # (without the plugin, pytest prints it inside an exception group, lines prefixed "|")
        rf'conftest\.py", line {raise_line}, in bad_step\n[\s|]+raise RuntimeError\("bad_step',
        output,
    ), output
    assert "RuntimeError: bad_step teardown fails on purpose" in output
    assert "generator 'twice_step' yielded more than once" in output
    if mode == "no-plugin":
        # A plain session fixture: pytest reports the errors at teardown of the last test.
        assert outcomes["errors"] == 1
        return
    assert "errors" not in outcomes
    section = output.split("- teardown errors (2) -", 1)[1]
    assert "teardown of batchable operation 'bad_step' failed:" in section
    assert "teardown of batchable operation 'twice_step' failed:" in section
    assert "RuntimeError: bad_step teardown fails on purpose" in section
    ops = report_ops(pytester)
    assert "RuntimeError: bad_step teardown fails on purpose" in ops["bad_step"]["teardown_error"]
    assert ops["base_db"]["teardown_error"] is None


def test_operation_used_only_by_skipped_tests_is_set_up_and_torn_down(pytester: pytest.Pytester) -> None:
    """The plan takes in skipped tests (pytest decides at setup): the teardown must follow."""
    make_suite(pytester, TEARDOWN_CONFTEST, TEARDOWN_TESTS)
    result = run(pytester, "-k", "skipped or last")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    (setup,) = [line for line in read_log(pytester) if line.startswith("setup")]
    assert setup.split()[1] == "skipped_step"
    assert read_log(pytester)[-1] == setup.replace("setup", "teardown")


# -- 11: temporary files --------------------------------------------------------------------


TEMP_CONFTEST = """
    @batchable
    def tmp_step(tmp_path):
        (tmp_path / "made-by-tmp_step").write_text("x")
        print("tmp_step output")
        return tmp_path


    @batchable
    def gen_step():
        print("gen_step setup output")
        yield 1
        print("gen_step teardown output")


    @batchable
    def flaky_step():
        print("flaky_step output")
        marker = OUT / "flaky_step.failed"
        if not marker.exists():
            marker.touch()
            raise RuntimeError("once")
"""

TEMP_TESTS = """
    def test_all(tmp_step, gen_step, flaky_step):
        assert (tmp_step / "made-by-tmp_step").exists()
"""


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_plugin_writes_nothing_outside_the_base_temp(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_suite(pytester, TEMP_CONFTEST, TEMP_TESTS)
    basetemp = tmp_path_factory.mktemp("basetemp") / "inner"
    system_tmp = tmp_path_factory.mktemp("system-tmp")
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    before = tree(pytester.path)
    result = run(pytester, f"--basetemp={basetemp}")
    result.assert_outcomes(passed=1)
    assert report_ops(pytester)["flaky_step"]["status"] == "recovered"

    new = tree(pytester.path) - before
    # pytester keeps the output in stdout and stderr, and makes an (unused) base temp
    # runpytest-N, with a link runpytest-current, before it passes ours.
    pytester_dirs = {p for p in new if re.fullmatch(r"runpytest-(\d+|current)", p)}
    assert all(not any((pytester.path / p).iterdir()) for p in pytester_dirs)
    pytester_dirs |= {"stdout", "stderr"}
    ours = {"out", "out/flaky_step.failed", "report.json"}
    unexpected = {p for p in new - ours - pytester_dirs if not p.startswith(".pytest_cache")}
    assert unexpected == set()
    assert list(system_tmp.iterdir()) == []
    # The plugin's files went to the base temp.
    assert (basetemp / "parexec-workers").is_dir()
    assert any(basetemp.glob("parexec-tmp_step*/made-by-tmp_step"))
