"""Acceptance tests under pytest-xdist: each operation once for the whole run.

Every scenario runs ``pytest -p parexec -n N --dist MODE`` in a subprocess
(``runpytest_subprocess``). Operations and tests append ``<what> <xdist worker>
<pid>`` lines to ``out/log`` next to the scenario's conftest.py, so that the log
says how often each operation ran, where, and in which order relative to the
tests. Which xdist worker gets which test follows from pytest-xdist's
documented scheduling (``load`` sends consecutive chunks of two tests per
worker, ``loadscope`` one module per worker, ``each`` every test to every
worker); nothing is timed.
"""

from __future__ import annotations

import collections
import json
import re
import textwrap

import pytest

pytest.importorskip("xdist")

#: The start of every scenario's conftest.py.
HELPERS = r'''
import os
import pathlib
import re
import time
from pathlib import Path

import pytest

from pytest_parexec import batchable

OUT = Path(__file__).parent / "out"
OUT.mkdir(exist_ok=True)


def worker():
    """This process's xdist worker id; "controller" in the controller."""
    return os.environ.get("PYTEST_XDIST_WORKER", "controller")


def log(what):
    with open(OUT / "log", "a") as stream:
        stream.write(f"{what} {worker()} {os.getpid()}\n")
'''

SUMMARY_TITLE = "parallel execution summary"


def make_suite(pytester: pytest.Pytester, conftest: str, **modules: str) -> None:
    pytester.makeconftest(HELPERS + textwrap.dedent(conftest))
    pytester.makepyfile(**{name: textwrap.dedent(source) for name, source in modules.items()})


def log_lines(pytester: pytest.Pytester) -> list[tuple[str, str, int]]:
    """``(what, xdist worker, pid)`` for every line of ``out/log``, in order."""
    path = pytester.path / "out" / "log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(what, where, int(pid)) for what, where, pid in (line.split() for line in lines)]


def runs_of(pytester: pytest.Pytester, names: list[str]) -> dict[str, list[int]]:
    """The pids each of ``names`` ran in, one entry per run."""
    runs: dict[str, list[int]] = {name: [] for name in names}
    for what, _, pid in log_lines(pytester):
        if what in runs:
            runs[what].append(pid)
    return runs


def summary_section(stdout: str) -> str:
    """The text of the parallel execution summary, up to the next section heading."""
    match = re.search(rf"=+ {SUMMARY_TITLE} =+\n(.*?)(?=\n=+ |\Z)", stdout, re.S)
    assert match is not None, stdout
    return match.group(1)


# -- each operation once, values intact ------------------------------------------

ONCE_CONFTEST = r"""
VALUE = {
    "tuple": (1, "a", (2.5, None)),
    "bytes": b"\x00\xffraw",
    "bytearray": bytearray(b"mutable"),
    "set": {1, 2, "x"},
    "frozenset": frozenset({(1, 2), "y"}),
    "path": pathlib.Path("/srv/data"),
    "pure path": pathlib.PurePosixPath("rel/p"),
    "paths in a set": {pathlib.PurePosixPath("s1"), (1, pathlib.PurePosixPath("s2"))},
    (1, pathlib.PurePosixPath("k")): "tuple key holding a path",
    "nested": [{"deep": ({3, 4}, frozenset({"z"}))}],
    "big": 2**100,
    "negative": -(2**63),
}


def shape(value):
    '''The types in ``value`` all the way down: == alone says True == 1 and Path == PurePath.'''
    if isinstance(value, dict):
        return ("dict", {repr(k): (shape(k), shape(v)) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [shape(v) for v in value])
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(repr(shape(v)) for v in value))
    return type(value).__name__


@batchable
def payload():
    log("payload")
    return VALUE


@batchable
def derived(payload):
    '''What the dependency looked like inside its worker, and the value itself.'''
    log("derived")
    return shape(payload), payload


@batchable
def lonely():
    log("lonely")
    return (b"needed by test_two.py only", pathlib.PurePosixPath("lonely"))


@pytest.hookimpl(optionalhook=True)
def pytest_parexec_operation_finished(result):
    log(f"finished:{result.name}:{result.status}")


@pytest.hookimpl(optionalhook=True)
def pytest_parexec_summary(summary, terminalreporter):
    names = ",".join(sorted(op["name"] for op in summary["operations"]))
    terminalreporter.write_line(f"summary hook: {names} led by {summary['xdist']['leader']}")


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session):
    # Innermost wrapper: after pytest-parexec's pytest_sessionfinish, before
    # pytest-xdist tells the controller that this worker finished.
    result = yield
    if worker() != "controller":
        seen = [name for name in ("report.json", "trace.json") if (session.config.rootpath / name).exists()]
        (OUT / f"files-seen-by-{worker()}").write_text(" ".join(seen))
    return result
"""

TEST_ONE = """
    import pytest

    from conftest import VALUE, log, shape


    @pytest.mark.parametrize("i", range(4))
    def test_one(payload, derived, i):
        log(f"test_one[{i}]")
        assert payload == VALUE
        assert shape(payload) == shape(VALUE)
        shape_in_worker, value = derived
        assert shape_in_worker == shape(VALUE)
        assert value == VALUE
        assert shape(value) == shape(VALUE)
"""

TEST_TWO = """
    import pathlib

    import pytest

    from conftest import VALUE, log, shape


    @pytest.mark.parametrize("i", range(2))
    def test_two(payload, lonely, i):
        log(f"test_two[{i}]")
        assert shape(payload) == shape(VALUE)
        assert payload == VALUE
        assert lonely == (b"needed by test_two.py only", pathlib.PurePosixPath("lonely"))
        assert type(lonely[1]) is pathlib.PurePosixPath
"""

OPERATIONS = ["payload", "derived", "lonely"]


@pytest.mark.parametrize(
    ("dist", "workers", "testing"),
    [
        # 6 tests on 3 workers: two each; test_two.py's two (the only users of lonely) on one.
        pytest.param("load", 3, 3, id="load-n3"),
        # One module per worker: lonely is needed on one worker only.
        pytest.param("loadscope", 2, 2, id="loadscope-n2"),
        # Two modules for three workers: one worker runs no test at all.
        pytest.param("loadscope", 3, 2, id="loadscope-n3"),
    ],
)
def test_each_operation_runs_once_for_the_whole_run(
    pytester: pytest.Pytester, dist: str, workers: int, testing: int
) -> None:
    make_suite(pytester, ONCE_CONFTEST, test_one=TEST_ONE, test_two=TEST_TWO)
    result = pytester.runpytest_subprocess(
        "-p",
        "parexec",
        "-n",
        str(workers),
        "--dist",
        dist,
        # parallel, not auto: the values must cross from the operations' worker processes.
        "--parexec=parallel",
        "--parexec-report=report.json",
        "--parexec-trace=trace.json",
    )
    result.assert_outcomes(passed=6)
    xdist_workers = [f"gw{i}" for i in range(workers)]

    # Exactly one run of each operation, whatever the number of xdist workers.
    runs = runs_of(pytester, OPERATIONS)
    assert {name: len(pids) for name, pids in runs.items()} == dict.fromkeys(OPERATIONS, 1)
    tests = [(what, where) for what, where, _ in log_lines(pytester) if what.startswith("test_")]
    assert len(tests) == 6
    users = {
        "payload": {where for _, where in tests},
        "derived": {where for what, where in tests if what.startswith("test_one")},
        "lonely": {where for what, where in tests if what.startswith("test_two")},
    }
    # The values reached the tests of several workers; lonely's users sit on one worker.
    assert len(users["payload"]) == testing
    assert len(users["lonely"]) == 1

    # The controller wrote the report, once: no worker had written it when it finished.
    seen = {path.name: path.read_text() for path in (pytester.path / "out").glob("files-seen-by-*")}
    assert seen == {f"files-seen-by-{w}": "" for w in xdist_workers}
    report = json.loads((pytester.path / "report.json").read_text())
    xdist = report["xdist"]
    leader = xdist["leader"]
    assert xdist["workers"] == xdist_workers
    assert leader in xdist_workers
    assert sorted(xdist["waited_s"]) == xdist_workers
    assert all(seconds >= 0 for seconds in xdist["waited_s"].values())
    operations = {op["name"]: op for op in report["operations"]}
    assert sorted(operations) == sorted(OPERATIONS)
    for name, op in operations.items():
        assert op["status"] == "passed"
        assert op["xdist_worker"] == leader
        assert op["pid"] == runs[name][0]
        # Every other worker whose tests needed the operation waited for it.
        assert op["waited_by"] == sorted(users[name] - {leader}), name

    # The trace: one bar per operation, from the process that ran it.
    trace = json.loads((pytester.path / "trace.json").read_text())
    bars = [event for event in trace["traceEvents"] if event["ph"] == "X" and event["name"] in OPERATIONS]
    assert sorted(bar["name"] for bar in bars) == sorted(OPERATIONS)
    assert {bar["name"]: bar["args"]["pid"] for bar in bars} == {n: pids[0] for n, pids in runs.items()}

    # One summary, in the controller's terminal, covering every operation.
    stdout = result.stdout.str()
    assert stdout.count(SUMMARY_TITLE) == 1
    summary = summary_section(stdout)
    for name in OPERATIONS:
        assert re.search(rf"\b{name}\b", summary), (name, summary)
    # Hooks: each attempt reported once, by the worker that ran it; the summary hook on the controller.
    finished = [(what, where) for what, where, _ in log_lines(pytester) if what.startswith("finished:")]
    assert sorted(finished) == sorted((f"finished:{name}:passed", leader) for name in OPERATIONS)
    assert stdout.count("summary hook: ") == 1
    assert f"summary hook: derived,lonely,payload led by {leader}" in summary
    line = re.search(r"^xdist: each operation ran once, on (gw\d+); (.*)$", summary, re.M)
    assert line is not None, summary
    assert line.group(1) == leader
    for waiting in set().union(*(set(op["waited_by"]) for op in operations.values())):
        assert re.search(rf"\b{waiting} waited \d+\.\d\ds", line.group(2)), line.group(0)


# -- failures --------------------------------------------------------------------

FAILURE_CONFTEST = r"""
@batchable(retries=0)
def broken():
    log("broken")
    print("output of broken")
    raise RuntimeError("broken on purpose")


@batchable
def dependent(broken):
    log("dependent")
    return broken


@batchable(retries=1)
def flaky():
    log("flaky")
    raise ValueError("fails on every attempt")


@batchable
def fine():
    log("fine")
    return "fine"


def pytest_runtest_logreport(report):
    # In each xdist worker: the error text that worker shows for each test.
    if worker() != "controller" and report.failed:
        errors = OUT / "errors"
        errors.mkdir(exist_ok=True)
        test = re.sub(r"\W", "_", report.nodeid.split("::")[-1])
        (errors / f"{test}@{worker()}").write_text(report.longreprtext)
"""

TEST_FAILURES = """
    def test_broken(broken):
        pass


    def test_dependent(dependent):
        pass


    def test_flaky(flaky):
        pass


    def test_fine(fine):
        assert fine == "fine"
"""


def test_a_leader_running_in_process_publishes_every_result(pytester: pytest.Pytester) -> None:
    # Regression: with --parexec=sequential (or auto choosing it) the leading xdist worker ran
    # the plan in its own process and published nothing, so the others waited forever.
    make_suite(pytester, ONCE_CONFTEST, test_one=TEST_ONE, test_two=TEST_TWO)
    result = pytester.runpytest_subprocess(
        "-p", "parexec", "-n", "2", "--dist", "load", "--parexec=sequential", timeout=120
    )
    result.assert_outcomes(passed=6)
    runs = runs_of(pytester, OPERATIONS)
    assert {name: len(pids) for name, pids in runs.items()} == dict.fromkeys(OPERATIONS, 1)


def test_a_failure_is_reported_to_every_worker_that_needs_it_without_rerunning(
    pytester: pytest.Pytester,
) -> None:
    make_suite(pytester, FAILURE_CONFTEST, test_failures=TEST_FAILURES)
    # --dist each: every worker runs every test, so every worker needs every operation.
    result = pytester.runpytest_subprocess(
        "-p", "parexec", "-n", "3", "--dist", "each", "--parexec=parallel", "--parexec-report=report.json"
    )
    result.assert_outcomes(passed=3, errors=9)

    # broken ran once, flaky once plus its one retry, dependent never: not once per worker.
    runs = runs_of(pytester, ["broken", "dependent", "flaky", "fine"])
    assert {name: len(pids) for name, pids in runs.items()} == {
        "broken": 1,
        "dependent": 0,
        "flaky": 2,
        "fine": 1,
    }

    texts: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for path in (pytester.path / "out" / "errors").iterdir():
        test, where = path.name.split("@")
        texts[test][where] = path.read_text()
    assert sorted(texts) == ["test_broken", "test_dependent", "test_flaky"]
    for test, by_worker in texts.items():
        # Every worker shows the same error, down to the traceback and the pid.
        assert sorted(by_worker) == ["gw0", "gw1", "gw2"], test
        assert len(set(by_worker.values())) == 1, (test, by_worker)

    broken = texts["test_broken"]["gw0"]
    assert re.match(rf"batchable operation 'broken' failed on \w+ \(pid {runs['broken'][0]}\):\n", broken)
    assert "Traceback (most recent call last):" in broken
    assert 'raise RuntimeError("broken on purpose")' in broken
    assert "RuntimeError: broken on purpose" in broken
    assert "output of broken" in broken
    # dependent's fixture requests broken's first: its tests show broken's error.
    assert texts["test_dependent"]["gw0"] == broken
    flaky = texts["test_flaky"]["gw0"]
    assert re.match(
        rf"batchable operation 'flaky' failed on \w+ \(pid {runs['flaky'][1]}\) after 2 attempts", flaky
    )
    assert "ValueError: fails on every attempt" in flaky

    report = json.loads((pytester.path / "report.json").read_text())
    statuses = {op["name"]: (op["status"], op["attempts"]) for op in report["operations"]}
    assert statuses == {
        "broken": ("failed", 1),
        "dependent": ("skipped", 0),
        "flaky": ("failed", 2),
        "fine": ("passed", 1),
    }


# -- teardown after the last worker ----------------------------------------------

TEARDOWN_CONFTEST = r"""
@batchable
def service():
    '''A generator operation: the code after its yield is its teardown.

    Its value is the pid of the process that started its worker: the xdist
    worker that leads the run.
    '''
    log("service")
    yield os.getppid()
    log("service-teardown")


@pytest.fixture(scope="session", autouse=True)
def fixtures_finalized():
    # Set up first, finalized last: after every other session fixture of this worker.
    yield
    (OUT / f"fixtures-finalized-{os.getpid()}").touch()


def own_work(name, leader_pid):
    '''A test's own work. On the follower it is held until the leader has finished
    all of its tests and finalized its session fixtures (bounded: a follower that
    waits in vain goes on after 30 s, which fails nothing), so that a teardown
    run when the leader's tests end, too early, shows in the log before this line.
    '''
    if os.getpid() != leader_pid:
        marker = OUT / f"fixtures-finalized-{leader_pid}"
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    log(name)
"""

TEST_TEARDOWN = """
    from conftest import own_work


    def test_first(service):
        own_work("test_first", service)


    def test_second(service):
        own_work("test_second", service)
"""


def test_generator_teardown_runs_once_after_the_last_worker_finished(pytester: pytest.Pytester) -> None:
    make_suite(pytester, TEARDOWN_CONFTEST, test_teardown=TEST_TEARDOWN)
    # Two tests on two workers: one each (pytest-xdist sends fewer than 2 per worker round-robin).
    result = pytester.runpytest_subprocess("-p", "parexec", "-n", "2", "--dist", "load", "--parexec=parallel")
    result.assert_outcomes(passed=2)
    lines = log_lines(pytester)
    order = [what for what, _, _ in lines]
    assert order.count("service") == 1
    assert order.count("service-teardown") == 1
    assert sorted(where for what, where, _ in lines if what.startswith("test_")) == ["gw0", "gw1"]
    # The teardown ran in the process that ran the setup, after every test of every worker.
    assert order.index("service-teardown") > max(order.index("test_first"), order.index("test_second"))
    pids = {what: pid for what, _, pid in lines}
    assert pids["service-teardown"] == pids["service"]


# -- generators under xdist: run once by the controller, before any worker collects ----

GENERATORS_CONFTEST = r"""
from pytest_parexec import generator


@batchable
def schema_db():
    log("schema_db")
    return {"tables": ("users", "orders")}


@batchable
def other_model():
    log("other_model")
    return 5


@generator(inputs="specs/*.txt")
def spec_tests(source, schema_db):
    log(f"generate-{source.stem}")
    body = (
        f"def test_{source.stem}(schema_db, other_model):\n"
        "    assert schema_db == {'tables': ('users', 'orders')}\n"
        "    assert other_model == 5\n"
    )
    return {f"generated/test_{source.stem}.py": body}
"""


def test_generators_run_on_the_controller_and_the_report_covers_both_plans(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HELPERS + textwrap.dedent(GENERATORS_CONFTEST))  # no hand-written test
    for stem in ("alpha", "beta", "gamma"):
        pytester.path.joinpath("specs").mkdir(exist_ok=True)
        pytester.path.joinpath("specs", f"{stem}.txt").write_text(stem)
    result = pytester.runpytest_subprocess(
        "-p", "parexec", "-n", "2", "--parexec=parallel", "--parexec-report=report.json"
    )
    # The generated files were collected by the xdist workers in the same run.
    result.assert_outcomes(passed=3)
    lines = log_lines(pytester)
    order = [what for what, _, _ in lines]
    generated = ["generate-alpha", "generate-beta", "generate-gamma"]
    # Each operation once for the whole run: schema_db, which the generators needed,
    # is not run again for the tests that use it.
    assert sorted(order) == sorted(["schema_db", "other_model", *generated])
    # Generators and their dependency ran before collection, other_model after it.
    assert order.index("other_model") > max(order.index(name) for name in ["schema_db", *generated])

    report = json.loads((pytester.path / "report.json").read_text())
    ops = {op["name"]: op for op in report["operations"]}
    spec_ops = [f"spec_tests[specs/{stem}.txt]" for stem in ("alpha", "beta", "gamma")]
    assert sorted(ops) == sorted(["schema_db", "other_model", *spec_ops])
    assert {name: ops[name]["xdist_worker"] for name in ["schema_db", *spec_ops]} == dict.fromkeys(
        ["schema_db", *spec_ops], "controller"
    )
    assert ops["other_model"]["xdist_worker"] == report["xdist"]["leader"]
    # Counts and phases cover both plans: the controller's and the leader's.
    assert report["counts"]["passed"] == 5
    assert [(p["group"], sorted(p["operations"])) for p in report["phases"]] == [
        ("models", ["other_model", "schema_db"]),
        ("tests", spec_ops),
    ]
    # One clock for both plans: what ran later starts later.
    for name in ["schema_db", *spec_ops]:
        assert ops[name]["end_s"] <= ops["other_model"]["start_s"], (name, ops)
    for name in spec_ops:
        assert ops["schema_db"]["end_s"] <= ops[name]["start_s"]
    models = report["phases"][0]
    assert (models["start_s"], models["end_s"]) == (ops["schema_db"]["start_s"], ops["other_model"]["end_s"])
    assert report["wall_s"] == pytest.approx(
        ops["other_model"]["end_s"] - ops["schema_db"]["start_s"], abs=1e-3
    )
    summary = summary_section(result.stdout.str())
    assert "5 operations on" in summary
    assert "tests [parallel]" in summary or "tests [sequential]" in summary


LATE_JOIN_CONFTEST = r"""
@batchable
def service():
    log("service")
    yield "up"
    log("service-teardown")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session):
    # gw1 holds back before its test loop until gw0 has finished its tests: it
    # reaches pytest-parexec's part of the loop only after the leader's tests are done
    # (bounded: after 30 s it goes on, which fails nothing).
    if worker() == "gw1":
        shared = Path(session.config.option.basetemp).parent
        deadline = time.monotonic() + 30
        while not list(shared.glob("parexec-*/done-gw0")) and time.monotonic() < deadline:
            time.sleep(0.01)
        log("gw1-starts")
    return (yield)
"""


def test_a_worker_slow_to_start_its_tests_is_waited_for(pytester: pytest.Pytester) -> None:
    """Teardown waits for every xdist worker, including one that had not yet started its
    test loop when the leader finished: workers join the run during collection."""
    tests = """
        from conftest import log


        def test_first(service):
            log("test_first")


        def test_second(service):
            log("test_second")
    """
    make_suite(pytester, LATE_JOIN_CONFTEST, test_late=tests)
    result = pytester.runpytest_subprocess("-p", "parexec", "-n", "2", "--dist", "load", "--parexec=parallel")
    result.assert_outcomes(passed=2)
    lines = log_lines(pytester)
    order = [what for what, _, _ in lines]
    assert sorted(order) == sorted(["service", "test_first", "test_second", "gw1-starts", "service-teardown"])
    where = {what: worker for what, worker, _ in lines}
    # gw0 led (gw1 was held back) and ran its test; gw1 ran the other one, after gw0 was done.
    assert (where["service"], where["gw1-starts"]) == ("gw0", "gw1")
    assert {where["test_first"], where["test_second"]} == {"gw0", "gw1"}
    # The teardown waited for gw1's test.
    assert order[-1] == "service-teardown", order


# -- a leader that dies holding the lead lock ------------------------------------

CRASH_CONFTEST = r"""
@batchable
def shared_db():
    # Run in the leading xdist worker's own process (--parexec=sequential): the first
    # run waits until another xdist worker's test waits for the result, then kills
    # the leader, which holds the lead lock. The run after it succeeds.
    log("shared_db")
    marker = OUT / "crashed-once"
    if not marker.exists():
        marker.touch()
        deadline = time.monotonic() + 30
        while not set(OUT.glob("waiting-*")) - {OUT / f"waiting-{worker()}"}:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        os._exit(3)
    return "ready"


@pytest.fixture(scope="session", autouse=True)
def announce():
    # Instantiated before shared_db (autouse first within a scope): this worker's
    # first test is about to wait for the result.
    (OUT / f"waiting-{worker()}").touch()
"""


def test_a_leader_that_dies_holding_the_lock_is_replaced_and_nothing_hangs(pytester: pytest.Pytester) -> None:
    tests = """
        from conftest import log


        def test_a(shared_db):
            log("test_a")
            assert shared_db == "ready"


        def test_b(shared_db):
            log("test_b")
            assert shared_db == "ready"
    """
    make_suite(pytester, CRASH_CONFTEST, test_crash=tests)
    result = pytester.runpytest_subprocess(
        "-p", "parexec", "-n", "2", "--parexec=sequential", "--parexec-report=report.json", timeout=120
    )
    stdout = result.stdout.str()
    assert "replacing crashed worker" in stdout
    outcomes = result.parseoutcomes()
    # The test xdist had sent to the dying leader is reported crashed; the others pass.
    assert outcomes.get("passed", 0) >= 1
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2
    assert outcomes.get("failed", 0) <= 1
    if outcomes.get("failed"):
        assert "crashed while running" in stdout
    lines = log_lines(pytester)
    runs = [(where, pid) for what, where, pid in lines if what == "shared_db"]
    # Run twice: by the leader that died, then by the xdist worker that took over the lock.
    assert len(runs) == 2
    (_, dead_pid), (new_where, new_pid) = runs
    assert dead_pid != new_pid
    # Every test that ran, ran after the takeover, in a live xdist worker.
    tested = {pid for what, _, pid in lines if what.startswith("test_")}
    assert len(tested) >= 1
    assert dead_pid not in tested
    report = json.loads((pytester.path / "report.json").read_text())
    (op,) = report["operations"]
    assert (op["name"], op["status"], op["pid"]) == ("shared_db", "passed", new_pid)
    assert report["xdist"]["leader"] == new_where
