"""Acceptance tests for the core engine: what a user of ``@batchable`` sees.

Every scenario runs pytest in a subprocess (``runpytest_subprocess``), because the
plugin starts worker processes. Operations leave traces in ``out/`` next to the
scenario's conftest.py: a ``<name>.pid`` file with the process they ran in, a
shared ``log`` of the order they ran in, and rendezvous files that prove two
operations ran at the same time without measuring any time.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from _support import process_gone

#: The start of every scenario's conftest.py.
HELPERS = r'''
import os
import time
from pathlib import Path

from pytest_parexec import batchable

OUT = Path(__file__).parent / "out"
OUT.mkdir(exist_ok=True)


def record(name):
    """Remember that ``name`` ran, in which process, and in which order."""
    (OUT / f"{name}.pid").write_text(str(os.getpid()))
    with open(OUT / "log", "a") as log:
        log.write(name + "\n")


def rendezvous(me, *others, timeout=60.0):
    """Return once every one of ``others`` has started too.

    If the operations ran one after another, the first one gives up and fails.
    """
    (OUT / f"{me}.here").touch()
    deadline = time.monotonic() + timeout
    while not all((OUT / f"{other}.here").exists() for other in others):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{me}: {others} did not start within {timeout}s; not run at the same time")
        time.sleep(0.01)
'''

SUMMARY_TITLE = "parallel execution summary"

#: How each mode is asked for on the command line.
MODES = {
    "parallel": ("-p", "parexec", "--parexec=parallel"),
    "sequential": ("-p", "parexec", "--parexec=sequential"),
    "no-plugin": ("-p", "no:parexec"),
}


def make_suite(pytester: pytest.Pytester, conftest: str, **modules: str) -> None:
    """Write conftest.py (after HELPERS) and test modules."""
    pytester.makeconftest(HELPERS + textwrap.dedent(conftest))
    if modules:
        pytester.makepyfile(**{name: textwrap.dedent(source) for name, source in modules.items()})


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "parexec", *args)


def ran_log(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "out" / "log"
    return path.read_text().split() if path.exists() else []


def recorded_pids(pytester: pytest.Pytester) -> dict[str, int]:
    return {path.stem: int(path.read_text()) for path in (pytester.path / "out").glob("*.pid")}


def read_report(pytester: pytest.Pytester, path: str = "report.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / path).read_text())
    return data


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["name"]: op for op in report["operations"]}


def processes_with_env(tag: str) -> list[int]:
    """Live processes whose environment holds ``tag`` (zombies have an empty one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if tag.encode() in environ and not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_until_gone(pids: set[int], tag: str) -> None:
    """Fail unless ``pids`` and every process tagged with ``tag`` end soon.

    Reaping is asynchronous: this polls for up to 10 s, a bound, not a speed claim.
    """
    deadline = time.monotonic() + 10.0
    while True:
        alive = sorted({pid for pid in pids if not process_gone(pid)} | set(processes_with_env(tag)))
        if not alive:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"processes outlived pytest: {alive}")
        time.sleep(0.05)


# -- values -----------------------------------------------------------------------

VALUES_CONFTEST = r"""
import pathlib

VALUE = {
    "none": None,
    "true": True,
    "false": False,
    "int": -7,
    "big int": 2**100,
    "big negative ints": (-(2**31) - 1, -(2**63), -(2**100)),
    "float": 1.5,
    "inf": float("inf"),
    "complex": complex(1, -2),
    "str": "h\u00e9llo\nworld",
    "bytes": b"\x00\xff",
    "list": [1, [2, (3,)]],
    "tuple": (1, "a", ()),
    "set": {1, 2, "x"},
    "frozenset": frozenset({1, (2, 3)}),
    "empties": ([], (), {}, set(), frozenset(), "", b""),
    "path": pathlib.Path("/a/b"),
    "pure posix path": pathlib.PurePosixPath("x/y"),
    "pure windows path": pathlib.PureWindowsPath("C:/x"),
    "paths in containers": [pathlib.Path("rel"), (pathlib.PurePosixPath("t"),), {"p": pathlib.Path("/q")}],
    "paths in a set": {pathlib.PurePosixPath("s1"), pathlib.PurePosixPath("s2")},
    "path in a tuple in a set": {(1, pathlib.PurePosixPath("s3"))},
    "path in a tuple in a frozenset key": {frozenset({(pathlib.Path("/f"),)}): 1},
    "nested": {"a": [{"b": ({1, 2}, frozenset({"c"}))}]},
    (1, 2): "tuple key",
    3: "int key",
    None: "None key",
    frozenset({1}): "frozenset key",
    pathlib.PurePosixPath("k"): "path key",
    (1, pathlib.PurePosixPath("t")): "tuple key holding a path",
    "__parexec_tag__": "a key that looks like the codec's own",
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
    record("payload")
    return VALUE


@batchable
def echo(payload):
    '''What the dependency's value looked like inside this worker, and the value itself.'''
    record("echo")
    return shape(payload), payload
"""


def test_operations_run_in_workers_and_values_cross_intact(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        VALUES_CONFTEST,
        test_values="""
            import os

            from conftest import OUT, VALUE, shape


            def test_value_arrives_intact(payload):
                assert payload == VALUE
                assert shape(payload) == shape(VALUE)


            def test_dependency_value_arrives_intact_in_the_dependent(echo):
                shape_in_worker, value = echo
                assert shape_in_worker == shape(VALUE)
                assert value == VALUE
                assert shape(value) == shape(VALUE)


            def test_operations_ran_outside_the_pytest_process(payload, echo):
                for name in ("payload", "echo"):
                    assert int((OUT / f"{name}.pid").read_text()) != os.getpid()
        """,
    )
    # parallel, not auto: auto would run this chain in-process, and the values would not cross.
    run(pytester, "--parexec=parallel").assert_outcomes(passed=3)
    assert sorted(ran_log(pytester)) == ["echo", "payload"]


@pytest.mark.parametrize("import_mode", ["prepend", "importlib"])
def test_operations_defined_in_test_modules_and_nested_conftests(
    pytester: pytest.Pytester, import_mode: str
) -> None:
    # Each operation returns the pid it ran in; the tests compare it with their own.
    make_suite(
        pytester,
        """
        @batchable
        def root_data():
            return ["root"], os.getpid()
        """,
        test_top="""
            import os

            from pytest_parexec import batchable

            @batchable
            def top_data(root_data):
                return root_data[0] + ["top"], os.getpid()

            def test_top(top_data):
                assert top_data[0] == ["root", "top"]
                assert top_data[1] != os.getpid()
        """,
    )
    sub = pytester.mkdir("sub")
    (sub / "conftest.py").write_text(
        textwrap.dedent("""
            import os

            from pytest_parexec import batchable

            @batchable
            def sub_data(root_data):
                return root_data[0] + ["sub"], os.getpid()
        """)
    )
    (sub / "test_sub.py").write_text(
        textwrap.dedent("""
            import os

            def test_sub(sub_data, root_data):
                assert sub_data[0] == ["root", "sub"]
                assert sub_data[1] != os.getpid()
                assert root_data[1] != os.getpid()
        """)
    )
    pkg = pytester.mkpydir("pkg")
    (pkg / "test_pkg.py").write_text(
        textwrap.dedent("""
            import os

            from pytest_parexec import batchable

            @batchable
            def pkg_data(root_data):
                return root_data[0] + ["pkg"], os.getpid()

            def test_pkg(pkg_data):
                assert pkg_data[0] == ["root", "pkg"]
                assert pkg_data[1] != os.getpid()
        """)
    )
    options = ("--parexec=parallel", f"--import-mode={import_mode}", "--parexec-report=report.json")
    result = run(pytester, *options)
    result.assert_outcomes(passed=3)
    assert set(by_name(read_report(pytester))) == {"root_data", "top_data", "sub_data", "pkg_data"}


@pytest.mark.parametrize("mode", list(MODES))
def test_tmp_path_is_a_fresh_empty_directory_under_basetemp(pytester: pytest.Pytester, mode: str) -> None:
    make_suite(
        pytester,
        """
        @batchable
        def first_dir(tmp_path):
            found = sorted(p.name for p in tmp_path.iterdir())
            (tmp_path / "mine").write_text("first")
            return tmp_path, found

        @batchable
        def second_dir(tmp_path):
            found = sorted(p.name for p in tmp_path.iterdir())
            (tmp_path / "mine").write_text("second")
            return tmp_path, found
        """,
        test_tmp="""
            from pathlib import Path

            def test_tmp_paths(first_dir, second_dir, tmp_path_factory):
                base = tmp_path_factory.getbasetemp().resolve()
                for (path, found), text in ((first_dir, "first"), (second_dir, "second")):
                    assert type(path) is type(Path())
                    assert found == []
                    assert path.is_dir()
                    assert path.resolve().is_relative_to(base)
                    assert (path / "mine").read_text() == text
                assert first_dir[0] != second_dir[0]
        """,
    )
    pytester.runpytest_subprocess(*MODES[mode]).assert_outcomes(passed=1)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_tmp_path_is_fresh_for_a_retried_attempt(pytester: pytest.Pytester, mode: str) -> None:
    make_suite(
        pytester,
        """
        @batchable
        def flaky_data(tmp_path):
            found = sorted(p.name for p in tmp_path.iterdir())
            (tmp_path / "partial").write_text("left by this attempt")
            record("flaky_data")
            if len(ran_log_lines()) == 1:
                raise RuntimeError("fails the first time only")
            return found

        def ran_log_lines():
            return (OUT / "log").read_text().split()
        """,
        test_retry="""
            def test_fresh(flaky_data):
                assert flaky_data == []
        """,
    )
    run(pytester, *MODES[mode][2:], "-o", "parexec_retries=1").assert_outcomes(passed=1)
    assert ran_log(pytester) == ["flaky_data", "flaky_data"]


def test_name_after_and_group_options(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        """
        @batchable(name="users_db")
        def make_users():
            record("users_db")
            return ["ann", "bob"]

        @batchable
        def migrations():
            record("migrations")
            (OUT / "migrated").touch()
            return "unused"

        @batchable(after=("migrations",), group="tests")
        def seed_data(users_db):
            record("seed_data")
            return {"users": users_db, "migrated first": (OUT / "migrated").exists()}
        """,
        test_options="""
            def test_named_and_ordered(users_db, seed_data):
                assert users_db == ["ann", "bob"]
                assert seed_data == {"users": ["ann", "bob"], "migrated first": True}

            def test_function_name_is_not_a_fixture(make_users):
                pass
        """,
    )
    result = run(pytester, "--parexec-report=report.json")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'make_users' not found*"])
    ops = by_name(read_report(pytester))
    assert set(ops) == {"users_db", "migrations", "seed_data"}
    # The group is inferred from name=, not from the function's name; group= wins over inference.
    assert ops["users_db"]["group"] == "models"
    assert ops["seed_data"]["group"] == "tests"
    assert sorted(ops["seed_data"]["depends"]) == ["migrations", "users_db"]
    assert ops["seed_data"]["start_s"] >= ops["migrations"]["end_s"]


GROUP_CASES = {
    "user_model": "models",
    "schemas": "models",
    "db": "models",
    "run_migrations": "models",
    "load_data": "models",
    "payment_service": "logic",
    "user_controller": "logic",
    "business_logic": "logic",
    "event_handler": "logic",
    "api": "logic",
    "routes": "logic",
    "app_config": "configs",
    "settings": "configs",
    "env": "configs",
    "generated_cases": "tests",
    "test_users": "tests",
    "userModel": "models",
    "orderHandler": "logic",
    "appSettings": "configs",
    "cache": "other",
    "something_else": "other",
}


def test_group_is_inferred_from_the_name(pytester: pytest.Pytester) -> None:
    conftest = "".join(f"\n@batchable\ndef {name}():\n    return {name!r}\n" for name in GROUP_CASES)
    conftest += '\n@batchable(group="other")\ndef explicit_db():\n    return 1\n'
    names = [*GROUP_CASES, "explicit_db"]
    make_suite(pytester, conftest, test_groups=f"def test_all({', '.join(names)}):\n    pass\n")
    run(pytester, "--parexec-workers=2", "--parexec-report=report.json").assert_outcomes(passed=1)
    report = read_report(pytester)
    groups = {name: op["group"] for name, op in by_name(report).items()}
    assert groups == {**GROUP_CASES, "explicit_db": "other"}
    # --parexec-workers=2 caps the pool, however many operations are ready.
    assert report["workers"] == 2
    assert len({op["pid"] for op in report["operations"]}) <= 2


# -- which operations run ------------------------------------------------------------

SELECTION_CONFTEST = """
@batchable
def shared_base():
    record("shared_base")
    return 1

@batchable
def unwanted_base():
    record("unwanted_base")
    return 2

@batchable
def wanted_data(shared_base):
    record("wanted_data")
    return shared_base + 10

@batchable
def unwanted_data(shared_base, unwanted_base):
    record("unwanted_data")
    return shared_base + unwanted_base
"""

SELECTION_TESTS = """
import pytest

def test_wanted(wanted_data):
    assert wanted_data == 11

@pytest.mark.slow
def test_unwanted(unwanted_data):
    assert unwanted_data == 3

def test_plain():
    pass
"""


@pytest.mark.parametrize(
    "selection",
    [
        ("-k", "not unwanted"),
        ("-m", "not slow"),
        ("test_selection.py::test_wanted", "test_selection.py::test_plain"),
    ],
    ids=["-k", "-m", "node-ids"],
)
def test_operations_no_selected_test_needs_do_not_run(
    pytester: pytest.Pytester, selection: tuple[str, ...]
) -> None:
    make_suite(pytester, SELECTION_CONFTEST, test_selection=SELECTION_TESTS)
    pytester.makeini("[pytest]\nmarkers =\n    slow: a slow test\n")
    run(pytester, "--parexec-report=report.json", *selection).assert_outcomes(passed=2)
    assert sorted(ran_log(pytester)) == ["shared_base", "wanted_data"]
    assert set(by_name(read_report(pytester))) == {"shared_base", "wanted_data"}


@pytest.mark.parametrize("case", ["no batchable fixtures", "all users deselected", "collect only"])
def test_nothing_printed_when_no_operation_ran(pytester: pytest.Pytester, case: str) -> None:
    if case == "no batchable fixtures":
        make_suite(pytester, "", test_plain="def test_plain():\n    pass\n")
        result = run(pytester, "--parexec-report=report.json")
        result.assert_outcomes(passed=1)
    elif case == "all users deselected":
        make_suite(pytester, SELECTION_CONFTEST, test_selection=SELECTION_TESTS)
        result = run(pytester, "--parexec-report=report.json", "-k", "plain")
        result.assert_outcomes(passed=1, deselected=2)
    else:
        make_suite(pytester, SELECTION_CONFTEST, test_selection=SELECTION_TESTS)
        pytester.makeini("[pytest]\nmarkers =\n    slow: a slow test\n")
        result = run(pytester, "--parexec-report=report.json", "--collect-only")
        assert result.ret == pytest.ExitCode.OK
        result.stdout.fnmatch_lines(["*3 tests collected*"])
    assert SUMMARY_TITLE not in result.stdout.str()
    assert ran_log(pytester) == []


# -- scheduling ------------------------------------------------------------------------


def test_independent_operations_run_at_the_same_time(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        """
        @batchable
        def left_data():
            record("left_data")
            rendezvous("left_data", "middle_data", "right_data")
            return "left"

        @batchable
        def middle_data():
            record("middle_data")
            rendezvous("middle_data", "left_data", "right_data")
            return "middle"

        @batchable
        def right_data():
            record("right_data")
            rendezvous("right_data", "left_data", "middle_data")
            return "right"
        """,
        test_meet="""
            def test_all_met(left_data, middle_data, right_data):
                assert (left_data, middle_data, right_data) == ("left", "middle", "right")
        """,
    )
    run(pytester, "--parexec-workers=3", "--parexec-report=report.json").assert_outcomes(passed=1)
    report = read_report(pytester)
    assert report["workers"] == 3
    assert [(p["group"], p["kind"]) for p in report["phases"]] == [("models", "parallel")]
    pids = recorded_pids(pytester)
    assert len(set(pids.values())) == 3
    assert {op["pid"] for op in report["operations"]} == set(pids.values())


def test_parallel_mode_without_a_worker_count_uses_auto_workers(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        """
        @batchable
        def left_data():
            return 1

        @batchable
        def middle_data():
            return 2

        @batchable
        def right_data():
            return 3
        """,
        test_three="def test_three(left_data, middle_data, right_data):\n    pass\n",
    )
    run(pytester, "--parexec=parallel", "--parexec-report=report.json").assert_outcomes(passed=1)
    # auto: the plan's width (3), at most two workers per CPU.
    assert read_report(pytester)["workers"] == min(3, 2 * (os.cpu_count() or 1))


ORDER_CONFTEST = """
# Alphabetical order and definition order both disagree with the expected order.
@batchable(group="tests", after=("configs_b",))
def tests_b():
    record("tests_b")

@batchable(group="other")
def other_a():
    record("other_a")

@batchable(group="configs", after=("logic_b",))
def configs_a():
    record("configs_a")

@batchable(group="configs")
def configs_b():
    record("configs_b")

@batchable(group="logic")
def logic_a():
    record("logic_a")

@batchable(group="logic", after=("models_b",))
def logic_b():
    record("logic_b")

@batchable(group="models")
def models_a():
    record("models_a")

@batchable(group="models")
def models_b():
    record("models_b")
"""

#: Ready operations go in group order; within a group, the longest remaining path first:
#: models_b (models_b -> logic_b -> configs_a) before models_a, logic_b before logic_a,
#: configs_b (configs_b -> tests_b) before configs_a, and other_a before tests_b.
EXPECTED_ORDER = [
    "models_b",
    "models_a",
    "logic_b",
    "logic_a",
    "configs_b",
    "configs_a",
    "other_a",
    "tests_b",
]


@pytest.mark.parametrize("mode", ["one worker", "sequential"])
def test_ready_operations_run_in_group_order_then_longest_path_first(
    pytester: pytest.Pytester, mode: str
) -> None:
    make_suite(
        pytester,
        ORDER_CONFTEST,
        test_order="""
            import os

            from conftest import record

            def test_everything(tests_b, other_a, configs_a, logic_a, models_a):
                record("pytest")
        """,
    )
    options = (
        ("--parexec=parallel", "--parexec-workers=1") if mode == "one worker" else ("--parexec=sequential",)
    )
    run(pytester, *options, "--parexec-report=report.json").assert_outcomes(passed=1)
    assert ran_log(pytester) == [*EXPECTED_ORDER, "pytest"]
    report = read_report(pytester)
    pids = recorded_pids(pytester)
    pytest_pid = pids.pop("pytest")
    assert {op["pid"] for op in report["operations"]} == set(pids.values())
    if mode == "one worker":
        assert report["workers"] == 1
        assert {op["worker"] for op in report["operations"]} == {"gw0"}
        assert len(set(pids.values())) == 1
        assert pytest_pid not in pids.values()
    else:
        assert report["mode"] == "sequential"
        assert set(pids.values()) == {pytest_pid}


# -- the summary and the JSON report ---------------------------------------------------

RICH_CONFTEST = """
@batchable
def schema():
    record("schema")
    return "schema"

@batchable
def left_model(schema):
    record("left_model")
    rendezvous("left_model", "right_model")
    return schema + "+left"

@batchable
def right_model(schema):
    record("right_model")
    rendezvous("right_model", "left_model")
    return schema + "+right"

@batchable
def api_service(left_model, right_model):
    record("api_service")
    return [left_model, right_model]
"""

RICH_TESTS = """
from conftest import record

def test_api(api_service):
    record("pytest")
    assert api_service == ["schema+left", "schema+right"]
"""


def test_summary_section_after_the_tests(pytester: pytest.Pytester) -> None:
    make_suite(pytester, RICH_CONFTEST, test_rich=RICH_TESTS)
    result = run(pytester, "--parexec-report=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_rich.py .*", f"*= {SUMMARY_TITLE} =*"])
    result.stdout.re_match_lines(
        [
            r"models \[parallel\] schema, (left_model, right_model|right_model, left_model): \d+\.\d\ds$",
            r"logic \[sequential\] api_service: \d+\.\d\ds$",
            r".*\b4 operations\b.*\b2 workers\b",
            r"sequential estimate: \d+\.\d\ds$",
            r"parallel actual: \d+\.\d\ds$",
            r"time saved: -?\d+\.\d\ds \(efficiency -?\d+%\)$",
            r"critical path: schema -> (left|right)_model -> api_service \(\d+\.\d\ds\)$",
        ],
        consecutive=False,
    )
    report = read_report(pytester)
    chain = " -> ".join(report["critical_path"])
    result.stdout.fnmatch_lines([f"critical path: {chain} ({report['critical_path_s']:.2f}s)"])
    result.stdout.fnmatch_lines([f"sequential estimate: {report['sequential_s']:.2f}s"])


def test_json_report(pytester: pytest.Pytester) -> None:
    make_suite(pytester, RICH_CONFTEST, test_rich=RICH_TESTS)
    # A relative PATH is relative to where pytest was started; missing directories are made.
    run(pytester, "--parexec-report=reports/setup/run.json").assert_outcomes(passed=1)
    report = read_report(pytester, "reports/setup/run.json")
    pids = recorded_pids(pytester)

    assert report.keys() >= {
        "version",
        "mode",
        "workers",
        "setup_s",
        "wall_s",
        "sequential_s",
        "saved_s",
        "efficiency",
        "critical_path",
        "critical_path_s",
        "phases",
        "operations",
    }
    assert (report["version"], report["mode"], report["workers"]) == (1, "parallel", 2)
    assert (report["worker_errors"], report["tx"]) == ([], [])  # local workers, all started
    for key in ("setup_s", "wall_s", "sequential_s", "critical_path_s"):
        assert isinstance(report[key], float)
        assert report[key] >= 0
    assert report["saved_s"] == pytest.approx(report["sequential_s"] - report["wall_s"], abs=1e-3)
    assert report["efficiency"] == pytest.approx(report["saved_s"] / report["sequential_s"], abs=1e-2)

    ops = by_name(report)
    assert set(ops) == {"schema", "left_model", "right_model", "api_service"}
    expected_depends = {
        "schema": [],
        "left_model": ["schema"],
        "right_model": ["schema"],
        "api_service": ["left_model", "right_model"],
    }
    for name, op in ops.items():
        assert op.keys() >= {
            "name",
            "group",
            "status",
            "attempts",
            "worker",
            "pid",
            "start_s",
            "end_s",
            "duration_s",
            "depends",
            "error",
        }
        assert (op["status"], op["attempts"], op["error"]) == ("passed", 1, None)
        assert op["group"] == ("logic" if name == "api_service" else "models")
        assert op["worker"].startswith("gw")
        assert op["worker"][2:].isdigit()
        assert op["pid"] == pids[name]
        assert op["pid"] != pids["pytest"]
        assert 0 <= op["start_s"] <= op["end_s"]
        assert op["duration_s"] >= 0
        assert sorted(op["depends"]) == expected_depends[name]
        for dep in op["depends"]:
            assert op["start_s"] >= ops[dep]["end_s"], f"{name} started before {dep} ended"
    assert ops["left_model"]["pid"] != ops["right_model"]["pid"]
    assert ops["left_model"]["worker"] != ops["right_model"]["worker"]

    path = report["critical_path"]
    assert path in (["schema", "left_model", "api_service"], ["schema", "right_model", "api_service"])
    assert report["critical_path_s"] == pytest.approx(sum(ops[n]["duration_s"] for n in path), abs=1e-3)

    phases = report["phases"]
    assert [(p["group"], p["kind"]) for p in phases] == [("models", "parallel"), ("logic", "sequential")]
    assert sorted(phases[0]["operations"]) == ["left_model", "right_model", "schema"]
    assert phases[1]["operations"] == ["api_service"]
    for phase in phases:
        members = [ops[n] for n in phase["operations"]]
        assert phase["start_s"] == pytest.approx(min(op["start_s"] for op in members), abs=1e-3)
        assert phase["end_s"] == pytest.approx(max(op["end_s"] for op in members), abs=1e-3)


# -- modes and plugin loading ------------------------------------------------------------

MODES_CONFTEST = """
@batchable
def base_data():
    record("base_data")
    return [1, 2]

@batchable
def api_service(base_data):
    record("api_service")
    return sum(base_data)
"""

MODES_TESTS = """
from conftest import record

def test_first_uses_no_operation():
    record("test_first")

def test_total(api_service):
    record("pytest")
    assert api_service == 3

def test_fails_on_purpose(base_data):
    assert base_data == [2, 1]

def test_value_shared_by_tests(base_data, api_service):
    assert (base_data, api_service) == ([1, 2], 3)
"""


@pytest.mark.parametrize("mode", list(MODES))
def test_modes_give_the_same_test_results(pytester: pytest.Pytester, mode: str) -> None:
    make_suite(pytester, MODES_CONFTEST, test_modes=MODES_TESTS)
    report_option = () if mode == "no-plugin" else ("--parexec-report=report.json",)
    result = pytester.runpytest_subprocess(*MODES[mode], *report_option)
    result.assert_outcomes(passed=3, failed=1)
    log = ran_log(pytester)
    # Session fixtures: each operation runs once, however many tests use it.
    assert sorted(log) == ["api_service", "base_data", "pytest", "test_first"]
    pids = recorded_pids(pytester)
    pytest_pid = pids.pop("pytest")
    assert pids.pop("test_first") == pytest_pid
    in_process = {name: pid == pytest_pid for name, pid in pids.items()}
    if mode == "parallel":
        assert in_process == {"base_data": False, "api_service": False}
    else:
        assert in_process == {"base_data": True, "api_service": True}
    if mode == "no-plugin":
        # Lazily, in the pytest process, when the first test that needs them runs.
        assert log == ["test_first", "base_data", "api_service", "pytest"]
        assert SUMMARY_TITLE not in result.stdout.str()
    else:
        result.stdout.fnmatch_lines([f"*= {SUMMARY_TITLE} =*"])
        report = read_report(pytester)
        assert report["mode"] == mode
        assert {op["name"]: op["pid"] for op in report["operations"]} == pids


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(
            "parallel",
        ),
        "sequential",
        "no-plugin",
    ],
)
def test_modes_agree_when_pytest_starts_below_the_rootdir(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    pytester.makeini("[pytest]\n")
    sub = pytester.mkdir("sub")
    (sub / "conftest.py").write_text(
        textwrap.dedent("""
            import os
            from pathlib import Path

            from pytest_parexec import batchable

            @batchable
            def left_data():
                return os.getcwd(), Path("input.txt").read_text()

            @batchable
            def right_data():
                return os.getcwd(), Path("input.txt").read_text()
        """)
    )
    (sub / "input.txt").write_text("read relative to where pytest started")
    (sub / "test_sub.py").write_text(
        textwrap.dedent("""
            import os

            def test_relative_paths(left_data, right_data):
                expected = (os.getcwd(), "read relative to where pytest started")
                assert left_data == right_data == expected
        """)
    )
    monkeypatch.chdir(sub)
    result = pytester.runpytest_subprocess(*MODES[mode])
    result.stdout.fnmatch_lines([f"rootdir: {pytester.path}"])
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("load", [True, False], ids=["-p parexec", "not loaded"])
def test_entry_point_loads_with_autoload_disabled(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, load: bool
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    make_suite(pytester, MODES_CONFTEST, test_modes=MODES_TESTS)
    result = pytester.runpytest_subprocess(*(("-p", "parexec", "--parexec=parallel") if load else ()))
    result.assert_outcomes(passed=3, failed=1)
    pids = recorded_pids(pytester)
    assert (pids["base_data"] != pids["pytest"]) is load
    assert (SUMMARY_TITLE in result.stdout.str()) is load


# -- worker life cycle ---------------------------------------------------------------------

LIFECYCLE_CONFTEST = """
@batchable
def left_data():
    record("left_data")
    rendezvous("left_data", "right_data")
    return 1

@batchable
def right_data():
    record("right_data")
    rendezvous("right_data", "left_data")
    return 2

@batchable
def solo_data():
    record("solo_data")
    return 3
"""

LIFECYCLE_CASES = {
    "tests pass": (("-k", "passes"), {"passed": 1}),
    "first test fails with -x": (("-x", "-k", "not cycle and not solo"), {"failed": 1}),
    # Workers start while pytest collects; auto then runs the one operation in-process.
    "auto chooses in-process": (("-k", "solo"), {"passed": 1}),
    # Workers start while pytest collects; the cycle is found after collection.
    "plan error": ((), None),
}


@pytest.mark.parametrize("case", list(LIFECYCLE_CASES))
def test_no_worker_outlives_pytest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    tag = f"parexec-lifecycle-{uuid.uuid4().hex}"
    monkeypatch.setenv("PAREXEC_TEST_TAG", tag)
    conftest = LIFECYCLE_CONFTEST
    if case == "plan error":
        conftest += "\n@batchable\ndef ping(pong):\n    pass\n\n@batchable\ndef pong(ping):\n    pass\n"
    make_suite(
        pytester,
        conftest,
        test_life="""
            def test_fails(left_data, right_data):
                assert left_data == right_data

            def test_passes(left_data, right_data):
                assert (left_data, right_data) == (1, 2)

            def test_solo(solo_data):
                assert solo_data == 3

            def test_cycle(ping):
                pass
        """,
    )
    options, outcomes = LIFECYCLE_CASES[case]
    result = run(pytester, *options)
    if outcomes is None:
        assert result.ret == pytest.ExitCode.USAGE_ERROR
    else:
        result.assert_outcomes(**outcomes)
    pids = set(recorded_pids(pytester).values())
    if case in ("tests pass", "first test fails with -x"):
        assert len(pids) == 2  # one worker for each of the operations that met
    wait_until_gone(pids, tag)


# -- where workers come from ---------------------------------------------------------

FORK_CONFTEST = r"""
import sys
import threading
import types

# Something the pytest process holds that a fresh interpreter would not: a module
# object without a file (as an installed library's would be, it is kept in a copy).
# Importing this file again in a copy finds it there already.
INHERITED = "parexec_probe" in sys.modules
sys.modules.setdefault("parexec_probe", types.ModuleType("parexec_probe"))
with open(OUT / "conftest-imports", "a") as imports:
    imports.write(f"{os.getpid()}\n")
if os.environ.get("START_A_THREAD"):
    threading.Thread(target=threading.Event().wait, daemon=True).start()


def where():
    return os.getpid(), INHERITED


@batchable
def first():
    return where()


@batchable
def second():
    return where()
"""

FORK_TESTS = """
import json
from pathlib import Path


def test_both(first, second):
    values = {"first": first, "second": second}
    (Path(__file__).parent / "out" / "values.json").write_text(json.dumps(values))
"""


@pytest.mark.skipif(
    not __import__("sys").platform.startswith("linux"), reason="the fork server is Linux-only"
)
@pytest.mark.parametrize(
    ("thread", "copied"),
    [
        pytest.param("", True, id="forked-from-the-pytest-process"),
        # A thread makes forking unsafe: the workers come from a fresh interpreter.
        pytest.param("1", False, id="thread-running-fresh-interpreter"),
    ],
)
def test_workers_are_copies_of_the_pytest_process_that_import_the_project_again(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, thread: str, copied: bool
) -> None:
    monkeypatch.setenv("START_A_THREAD", thread)
    make_suite(pytester, FORK_CONFTEST, test_fork=FORK_TESTS)
    run(
        pytester, "--parexec=parallel", "--parexec-workers=2", "--parexec-report=report.json"
    ).assert_outcomes(passed=1)
    report = read_report(pytester)
    ops = by_name(report)
    pids = {ops[name]["pid"] for name in ("first", "second")}
    assert os.getpid() not in pids
    # The conftest.py ran in the pytest process and again in every worker that ran an
    # operation: the project's own modules are never taken over from the copy.
    imports = [int(line) for line in (pytester.path / "out" / "conftest-imports").read_text().split()]
    pytest_pid = imports[0]
    assert pytest_pid not in pids
    assert sorted(imports[1:]) == sorted(pids)
    # Whether a worker is a copy of the pytest process shows in what it had loaded.
    values = json.loads((pytester.path / "out" / "values.json").read_text())
    assert values == {name: [ops[name]["pid"], copied] for name in ("first", "second")}


#: Two operations that can run at once, each returning the pid of its worker.
TWO_OPERATIONS = """

@batchable
def first():
    return os.getpid()


@batchable
def second():
    return os.getpid()
"""


COPY_SAFETY_CONFTEST = (
    r"""
import sys


def pytest_configure(config):
    # Buffered, not flushed, when pytest-parexec (trylast) forks its fork server.
    sys.stdout.write("configured-once\n")
    # A project module that only sys.modules holds (imported in a hook), which owns a
    # temporary directory: dropping it in the copy must not delete the directory.
    import owns_a_dir  # noqa: F401
"""
    + TWO_OPERATIONS
)


OWNS_A_DIR = """
import tempfile
from pathlib import Path

HOLD = tempfile.TemporaryDirectory(prefix="parexec-held-")
(Path(__file__).parent / "out" / "held-dir").write_text(HOLD.name)
"""


@pytest.mark.skipif(
    not __import__("sys").platform.startswith("linux"), reason="the fork server is Linux-only"
)
def test_the_copy_of_the_pytest_process_repeats_no_output_and_frees_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # stdout to a pipe is buffered
    make_suite(pytester, COPY_SAFETY_CONFTEST, owns_a_dir=OWNS_A_DIR)
    pytester.makepyfile(
        test_copy="""
        import os
        from pathlib import Path


        def test_copy(first, second):
            held = Path((Path(__file__).parent / "out" / "held-dir").read_text())
            assert held.is_dir(), "the pytest process's temporary directory was deleted"
            assert os.getpid() not in (first, second)
        """
    )
    result = run(pytester, "--parexec=parallel", "--parexec-workers=2")
    result.assert_outcomes(passed=1)
    assert result.stdout.str().count("configured-once") == 1, result.stdout.str()


FORK_SERVER_DIES_CONFTEST = r"""
import signal


@batchable
def kills_its_fork_server():
    marker = OUT / "killed-once"
    if not marker.exists():
        marker.write_text(str(os.getppid()))
        os.kill(os.getppid(), signal.SIGKILL)  # this worker dies with it
        time.sleep(60)
    return os.getppid()


@batchable
def other():
    return os.getpid()
"""


@pytest.mark.skipif(
    not __import__("sys").platform.startswith("linux"), reason="the fork server is Linux-only"
)
def test_a_dead_fork_server_is_replaced(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        FORK_SERVER_DIES_CONFTEST,
        test_dies="""
        def test_dies(kills_its_fork_server, other):
            pass
        """,
    )
    result = run(pytester, "--parexec=parallel", "--parexec-workers=2", "--parexec-report=report.json")
    result.assert_outcomes(passed=1)
    ops = by_name(read_report(pytester))
    op = ops["kills_its_fork_server"]
    assert (op["status"], op["attempts"]) == ("recovered", 2)
    first, retry = op["attempt_history"]
    assert "died while running operation 'kills_its_fork_server'" in first["error"]
    # Workers die with their fork server: other, if it was still running, is retried too.
    assert ops["other"]["status"] in ("passed", "recovered")
    # The retry's worker came from another fork server than the one that was killed.
    killed = int((pytester.path / "out" / "killed-once").read_text())
    assert process_gone(killed)
    assert retry["pid"] != first["pid"]


LAZY_CONFTEST = (
    r"""
import importlib.util
import sys

# A module loaded lazily (importlib.util.LazyLoader): it runs when first used.
spec = importlib.util.find_spec("lazy_thing")
spec.loader = importlib.util.LazyLoader(spec.loader)
lazy = importlib.util.module_from_spec(spec)
sys.modules["lazy_thing"] = lazy
spec.loader.exec_module(lazy)
del spec, lazy  # pytest looks at every name of a conftest.py (that would load it)
"""
    + TWO_OPERATIONS
)


LAZY_THING = """
from pathlib import Path

(Path(__file__).parent / "out" / "lazy-thing-loaded").touch()
"""


def test_looking_at_loaded_modules_loads_no_lazy_module(pytester: pytest.Pytester) -> None:
    """Whether a module is half imported (before forking the fork server) is read from
    each module's namespace: asking a lazy module for an attribute would load it."""
    make_suite(
        pytester,
        LAZY_CONFTEST,
        lazy_thing=LAZY_THING,
        test_lazy="""
        def test_lazy(first, second):
            pass
        """,
    )
    run(pytester, "--parexec=parallel", "--parexec-workers=2").assert_outcomes(passed=1)
    assert not (pytester.path / "out" / "lazy-thing-loaded").exists()
