"""Acceptance tests for ``@generator``: test files written in parallel before collection.

Every scenario runs pytest in a subprocess (``runpytest_subprocess``) because the
plugin starts worker processes. Generators and the batchable operation they use
leave traces in ``out/``: ``gen.log`` gets a line per generator call (so a test
can tell which operations really ran) and ``threshold.log`` the pid of every run
of the dependency.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

#: A generator fanned out over specs/*.json, with a batchable dependency the
#: generated tests use too. A spec is {"value": N} (test: N < threshold) and may
#: hold "cases": a list of names (one file per case) or "explode": a message.
CONFTEST = r'''
import json
import os
from pathlib import Path

from pytest_parexec import batchable, generator

HERE = Path(__file__).parent
OUT = HERE / "out"
OUT.mkdir(exist_ok=True)


def log(name, line):
    with open(OUT / name, "a") as stream:
        stream.write(line + "\n")


@batchable
def threshold():
    """The dependency: its value comes from threshold.txt (default 10)."""
    log("threshold.log", str(os.getpid()))
    path = HERE / "threshold.txt"
    return int(path.read_text()) if path.exists() else 10


TEMPLATE = """
def test_{name}(threshold):
    assert {value} < threshold
    assert threshold == {threshold}
"""


@generator(inputs="specs/*.json")
def gen(source, threshold):
    log("gen.log", source.relative_to(HERE).as_posix())
    spec = json.loads(source.read_text())
    if "explode" in spec:
        raise RuntimeError(spec["explode"])
    cases = spec.get("cases", [source.stem])
    return {
        f"generated/test_{case}.py": TEMPLATE.format(name=case, value=spec["value"], threshold=threshold)
        for case in cases
    }
'''

SUMMARY_TITLE = "parallel execution summary"

MODES = {
    "auto": (),
    "parallel": ("--parexec=parallel", "--parexec-workers=3"),
    "sequential": ("--parexec=sequential",),
}


#: Hypothesis's plugin takes most of a subprocess's start-up time and none of these tests need it.
FAST = ("-p", "no:hypothesispytest")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest -p parexec, writing the JSON report to report.json."""
    return pytester.runpytest_subprocess("-p", "parexec", *FAST, "--parexec-report=report.json", *args)


def report_ops(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    data: dict[str, Any] = json.loads((pytester.path / "report.json").read_text())
    return {op["name"]: op for op in data["operations"]}


def statuses(pytester: pytest.Pytester) -> dict[str, str]:
    return {name: op["status"] for name, op in report_ops(pytester).items() if op["kind"] == "generator"}


def log_lines(pytester: pytest.Pytester, name: str) -> list[str]:
    path = pytester.path / "out" / name
    return path.read_text().split() if path.exists() else []


def clear_logs(pytester: pytest.Pytester) -> None:
    for path in (pytester.path / "out").glob("*.log"):
        path.unlink()


def write_specs(pytester: pytest.Pytester, **specs: dict[str, Any]) -> None:
    for stem, spec in specs.items():
        path = pytester.path / "specs" / f"{stem}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(spec))


def make_project(pytester: pytest.Pytester, conftest: str = CONFTEST) -> None:
    """The conftest above and three specs: a, b, c."""
    pytester.makeconftest(conftest)
    write_specs(pytester, a={"value": 1}, b={"value": 2}, c={"value": 3})


def generated(pytester: pytest.Pytester) -> list[str]:
    folder = pytester.path / "generated"
    return sorted(p.name for p in folder.glob("*.py")) if folder.exists() else []


ALL = {"gen[specs/a.json]", "gen[specs/b.json]", "gen[specs/c.json]"}


# -- fan-out, dependencies, collection in the same run -----------------------------


def test_one_operation_per_input_and_the_files_are_collected_in_the_same_run(
    pytester: pytest.Pytester,
) -> None:
    make_project(pytester)
    result = run(pytester, "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "generated/test_a.py::test_a PASSED*",
            "generated/test_b.py::test_b PASSED*",
            "generated/test_c.py::test_c PASSED*",
        ]
    )
    ops = report_ops(pytester)
    generators = {name for name, op in ops.items() if op["kind"] == "generator"}
    assert generators == ALL
    for stem in "abc":
        op = ops[f"gen[specs/{stem}.json]"]
        assert op["status"] == "passed"
        assert op["group"] == "tests"
        assert op["depends"] == ["threshold"]
        assert op["files_written"] == [f"generated/test_{stem}.py"]
        assert op["files_unchanged"] == []
        assert op["files_deleted"] == []
    assert sorted(log_lines(pytester, "gen.log")) == ["specs/a.json", "specs/b.json", "specs/c.json"]
    # Written atomically: no temporary file is left beside the outputs.
    assert sorted(p.name for p in (pytester.path / "generated").iterdir()) == [
        "test_a.py",
        "test_b.py",
        "test_c.py",
    ]
    # The summary lists generator operations like any other.
    summary = result.stdout.str().split(SUMMARY_TITLE, 1)[1]
    assert "gen[specs/a.json]" in summary
    assert "threshold" in summary


def test_inputs_take_a_list_of_globs_and_each_file_runs_once(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_parexec import generator

        @generator(inputs=["specs/*.json", "specs/a.*", "more/**/*.txt"], name="multi")
        def anything_else(source):
            stem = source.name.replace(".", "_")
            return {f"generated/test_{stem}.py": f"def test_{stem}():\\n    pass\\n"}
        """
    )
    write_specs(pytester, a={}, b={})
    (pytester.path / "more" / "deep").mkdir(parents=True)
    (pytester.path / "more" / "deep" / "x.txt").write_text("x")
    run(pytester).assert_outcomes(passed=3)
    assert set(statuses(pytester)) == {"multi[specs/a.json]", "multi[specs/b.json]", "multi[more/deep/x.txt]"}


def test_a_generator_without_inputs_runs_once_without_a_source(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_parexec import generator

        @generator
        def tables():
            return {f"generated/test_table_{n}.py": f"def test_{n}():\\n    assert {n} * 1 == {n}\\n"
                    for n in range(4)}

        @generator(group="configs")
        def plain():
            return {"generated/test_plain.py": "def test_plain():\\n    pass\\n"}
        """
    )
    run(pytester).assert_outcomes(passed=5)
    ops = report_ops(pytester)
    assert statuses(pytester) == {"tables": "passed", "plain": "passed"}
    assert ops["plain"]["group"] == "configs"
    assert len(ops["tables"]["files_written"]) == 4

    run(pytester).assert_outcomes(passed=5)
    assert statuses(pytester) == {"tables": "up-to-date", "plain": "up-to-date"}


@pytest.mark.parametrize("mode", MODES)
def test_a_dependency_of_a_generator_runs_once_for_generators_and_tests(
    pytester: pytest.Pytester, mode: str
) -> None:
    make_project(pytester)
    run(pytester, *MODES[mode]).assert_outcomes(passed=3)
    assert len(log_lines(pytester, "threshold.log")) == 1
    ops = report_ops(pytester)
    assert ops["threshold"]["status"] == "passed"
    assert ops["threshold"]["attempts"] == 1


def test_the_operations_of_a_generator_run_at_the_same_time(pytester: pytest.Pytester) -> None:
    """Each of the three operations waits until the other two have started."""
    pytester.makeconftest(
        """
        import time
        from pathlib import Path
        from pytest_parexec import batchable, generator

        OUT = Path(__file__).parent / "out"
        OUT.mkdir(exist_ok=True)

        @batchable
        def base():
            return 1

        @batchable
        def derived(base):
            return base + 1

        @generator(inputs="specs/*.json")
        def gen(source, derived):
            me = source.stem
            (OUT / f"{me}.here").touch()
            others = {"a", "b", "c"} - {me}
            deadline = time.monotonic() + 30  # a bound for the failure case, not a speed claim
            while not all((OUT / f"{o}.here").exists() for o in others):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{me}: {others} did not start: not run at the same time")
                time.sleep(0.01)
            return {f"generated/test_{me}.py": f"def test_{me}(derived):\\n    assert derived == 2\\n"}
        """
    )
    write_specs(pytester, a={}, b={}, c={})
    # auto mode, first run: no learned durations, three independent operations -> parallel.
    run(pytester, "--parexec-workers=3").assert_outcomes(passed=3)
    assert set(statuses(pytester).values()) == {"passed"}
    assert report_ops(pytester)["derived"]["depends"] == ["base"]


def test_parallel_mode_runs_generators_on_the_workers_asked_for(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    run(pytester, "--parexec=parallel", "--parexec-workers=3").assert_outcomes(passed=3)
    data = json.loads((pytester.path / "report.json").read_text())
    assert (data["mode"], data["workers"]) == ("parallel", 3)
    assert len(log_lines(pytester, "threshold.log")) == 1


def test_generators_run_in_group_order(pytester: pytest.Pytester) -> None:
    """Sequentially, an earlier group's generator runs first, whatever the names."""
    pytester.makeconftest(
        """
        from pathlib import Path
        from pytest_parexec import generator

        LOG = Path(__file__).parent / "order.log"

        def note(name):
            with open(LOG, "a") as stream:
                stream.write(name + "\\n")

        @generator(group="tests")
        def aaa_tests():
            note("tests")
            return {}

        @generator(group="models")
        def zzz_models():
            note("models")
            return {}

        @generator(group="configs")
        def mmm_configs():
            note("configs")
            return {}
        """
    )
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    run(pytester, "--parexec=sequential").assert_outcomes(passed=1)
    assert (pytester.path / "order.log").read_text().split() == ["models", "configs", "tests"]


# -- up to date, invalidation, mtimes ------------------------------------------------


def test_the_second_run_skips_up_to_date_operations_and_keeps_mtimes(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    run(pytester).assert_outcomes(passed=3)
    files = [pytester.path / "generated" / f"test_{stem}.py" for stem in "abc"]
    mtimes = [path.stat().st_mtime_ns for path in files]
    clear_logs(pytester)

    result = run(pytester)
    result.assert_outcomes(passed=3)
    assert statuses(pytester) == dict.fromkeys(ALL, "up-to-date")
    assert log_lines(pytester, "gen.log") == []  # no generator ran
    assert [path.stat().st_mtime_ns for path in files] == mtimes
    ops = report_ops(pytester)
    op = ops["gen[specs/a.json]"]
    assert op["files_unchanged"] == ["generated/test_a.py"]
    assert op["files_written"] == []
    # Up to date: no time spent on it.
    assert op["attempts"] == 0
    assert op["duration_s"] is None
    data = json.loads((pytester.path / "report.json").read_text())
    assert data["counts"]["up-to-date"] == 3
    # The tests that use the dependency still get it.
    assert len(log_lines(pytester, "threshold.log")) == 1
    # Each is said to be up to date once, while the generators run (the main plan,
    # which continues theirs, does not repeat it).
    for name in ALL:
        said = [line for line in result.outlines if line.startswith("parexec: ") and name in line]
        assert len(said) == 1, said
        assert said[0].endswith(f"{name} up-to-date")


def _edit_input(pytester: pytest.Pytester) -> None:
    write_specs(pytester, b={"value": 5})


def _edit_conftest(pytester: pytest.Pytester) -> None:
    conftest = pytester.path / "conftest.py"
    conftest.write_text(conftest.read_text() + "\n# an edit\n")


def _change_dependency(pytester: pytest.Pytester) -> None:
    (pytester.path / "threshold.txt").write_text("20")


def _delete_output(pytester: pytest.Pytester) -> None:
    (pytester.path / "generated" / "test_c.py").unlink()


def _modify_output(pytester: pytest.Pytester) -> None:
    path = pytester.path / "generated" / "test_a.py"
    path.write_text(path.read_text() + "\n# edited by hand\n")


@pytest.mark.parametrize(
    ("change", "rerun"),
    [
        pytest.param(_edit_input, {"gen[specs/b.json]"}, id="input edited"),
        pytest.param(_edit_conftest, ALL, id="generator source edited"),
        pytest.param(_change_dependency, ALL, id="dependency value changed"),
        pytest.param(_delete_output, {"gen[specs/c.json]"}, id="output deleted"),
        pytest.param(_modify_output, {"gen[specs/a.json]"}, id="output modified"),
    ],
)
def test_a_change_invalidates_exactly_the_affected_operations(
    pytester: pytest.Pytester, change: Any, rerun: set[str]
) -> None:
    make_project(pytester)
    run(pytester).assert_outcomes(passed=3)
    before = {p.name: p.read_text() for p in (pytester.path / "generated").glob("*.py")}
    change(pytester)
    clear_logs(pytester)

    run(pytester).assert_outcomes(passed=3)
    expected = {name: "passed" if name in rerun else "up-to-date" for name in ALL}
    assert statuses(pytester) == expected
    ran = {f"gen[{line}]" for line in log_lines(pytester, "gen.log")}
    assert ran == rerun
    # What was generated again is what the generator returns now.
    after = {p.name: p.read_text() for p in (pytester.path / "generated").glob("*.py")}
    assert set(after) == set(before)
    if change is _modify_output:
        assert after == before  # the hand edit is replaced by the generated content
    if change is _change_dependency:
        assert "threshold == 20" in after["test_a.py"]

    # And then everything is up to date again.
    clear_logs(pytester)
    run(pytester).assert_outcomes(passed=3)
    assert statuses(pytester) == dict.fromkeys(ALL, "up-to-date")
    assert log_lines(pytester, "gen.log") == []


def test_an_operation_that_returns_the_same_content_leaves_the_file_untouched(
    pytester: pytest.Pytester,
) -> None:
    make_project(pytester)
    run(pytester).assert_outcomes(passed=3)
    path = pytester.path / "generated" / "test_b.py"
    mtime = path.stat().st_mtime_ns
    # The input changes, the output does not.
    (pytester.path / "specs" / "b.json").write_text('{ "value" :   2 }\n')

    run(pytester).assert_outcomes(passed=3)
    op = report_ops(pytester)["gen[specs/b.json]"]
    assert op["status"] == "passed"
    assert op["files_unchanged"] == ["generated/test_b.py"]
    assert op["files_written"] == []
    assert path.stat().st_mtime_ns == mtime


def test_regenerate_runs_every_generator_and_still_keeps_unchanged_files(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    run(pytester).assert_outcomes(passed=3)
    files = sorted((pytester.path / "generated").glob("*.py"))
    mtimes = [path.stat().st_mtime_ns for path in files]
    clear_logs(pytester)

    run(pytester, "--parexec-regenerate").assert_outcomes(passed=3)
    assert statuses(pytester) == dict.fromkeys(ALL, "passed")
    assert sorted(log_lines(pytester, "gen.log")) == ["specs/a.json", "specs/b.json", "specs/c.json"]
    assert report_ops(pytester)["gen[specs/c.json]"]["files_unchanged"] == ["generated/test_c.py"]
    assert [path.stat().st_mtime_ns for path in files] == mtimes


# -- stale files ------------------------------------------------------------------


def test_the_output_of_a_removed_input_is_deleted(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    (pytester.path / "generated").mkdir()
    hand_written = pytester.path / "generated" / "test_by_hand.py"
    hand_written.write_text("def test_by_hand():\n    pass\n")
    run(pytester).assert_outcomes(passed=4)

    (pytester.path / "specs" / "c.json").unlink()
    (pytester.path / "specs" / "b.json").rename(pytester.path / "specs" / "d.json")
    run(pytester).assert_outcomes(passed=3)
    assert generated(pytester) == ["test_a.py", "test_by_hand.py", "test_d.py"]
    ops = report_ops(pytester)
    assert set(statuses(pytester)) == {"gen[specs/a.json]", "gen[specs/d.json]"}
    deleted = [f for op in ops.values() for f in op.get("files_deleted", [])]
    assert sorted(deleted) == ["generated/test_b.py", "generated/test_c.py"]
    assert ops["gen[specs/d.json]"]["files_written"] == ["generated/test_d.py"]
    assert hand_written.exists()  # no generator wrote it: never deleted


def test_the_outputs_are_deleted_when_every_input_is_removed(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    run(pytester).assert_outcomes(passed=4)
    for spec in (pytester.path / "specs").iterdir():
        spec.unlink()
    result = run(pytester)
    assert generated(pytester) == []
    result.assert_outcomes(passed=1)
    # No operation is left to list them in the report: the terminal says it.
    result.stdout.fnmatch_lines(
        [
            "parexec: generator 'gen' matches no input any more: deleted "
            "generated/test_a.py, generated/test_b.py, generated/test_c.py"
        ]
    )


def test_files_a_generator_no_longer_returns_are_deleted(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    write_specs(pytester, a={"value": 1, "cases": ["one", "two", "three"]})
    run(pytester).assert_outcomes(passed=5)
    assert generated(pytester) == ["test_b.py", "test_c.py", "test_one.py", "test_three.py", "test_two.py"]

    write_specs(pytester, a={"value": 1, "cases": ["one"]})
    run(pytester).assert_outcomes(passed=3)
    assert generated(pytester) == ["test_b.py", "test_c.py", "test_one.py"]
    op = report_ops(pytester)["gen[specs/a.json]"]
    assert op["files_deleted"] == ["generated/test_three.py", "generated/test_two.py"]
    assert op["files_unchanged"] == ["generated/test_one.py"]


# -- hand-written files, unsafe paths ---------------------------------------------------


def test_a_hand_written_file_is_never_overwritten(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    (pytester.path / "generated").mkdir()
    mine = pytester.path / "generated" / "test_b.py"
    mine.write_text("def test_mine():\n    pass\n")

    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=3, errors=1)  # test_a, test_c, test_mine; the generator error
    result.stdout.fnmatch_lines(["*gen[[]specs/b.json[]]*refusing to overwrite 'generated/test_b.py'*"])
    assert mine.read_text() == "def test_mine():\n    pass\n"
    assert report_ops(pytester)["gen[specs/b.json]"]["status"] == "failed"

    # Still refused next time: a refused operation is not up to date.
    result = run(pytester)
    result.assert_outcomes(passed=3, errors=1)
    assert mine.read_text() == "def test_mine():\n    pass\n"


def test_cache_clear_does_not_turn_generated_files_into_hand_written_ones(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    run(pytester).assert_outcomes(passed=3)
    result = run(pytester, "--cache-clear")
    assert "refusing to overwrite" not in result.stdout.str()
    result.assert_outcomes(passed=3)


def _absolute(pytester: pytest.Pytester, outside: Path) -> str:
    return str(outside / "test_escaped.py")


def _dotdot(pytester: pytest.Pytester, outside: Path) -> str:
    return os.path.relpath(outside / "test_escaped.py", pytester.path)


def _symlink(pytester: pytest.Pytester, outside: Path) -> str:
    os.symlink(outside, pytester.path / "link", target_is_directory=True)
    return "link/test_escaped.py"


@pytest.mark.parametrize("make_path", [_absolute, _dotdot, _symlink], ids=["absolute", "dotdot", "symlink"])
def test_a_path_outside_the_rootdir_is_refused_and_nothing_of_the_operation_is_written(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, make_path: Any
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    target = make_path(pytester, outside)
    pytester.makeconftest(
        f"""
        from pytest_parexec import generator

        @generator
        def sneaky():
            return {{
                "generated/test_fine.py": "def test_fine():\\n    pass\\n",
                {target!r}: "def test_escaped():\\n    pass\\n",
            }}

        @generator
        def honest():
            return {{"generated/test_honest.py": "def test_honest():\\n    pass\\n"}}
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=1)
    text = result.stdout.str()
    assert "'sneaky'" in text
    assert f"refusing to write {target!r}" in text
    assert list(outside.iterdir()) == []
    assert generated(pytester) == ["test_honest.py"]
    ops = report_ops(pytester)
    assert ops["sneaky"]["status"] == "failed"
    assert ops["honest"]["status"] == "passed"
    # Its attempt passed in the worker; the progress says what became of it.
    result.stdout.fnmatch_lines([f"parexec: sneaky failed: *refusing to write {target!r}*"])


def test_a_generator_returning_something_else_than_a_dict_of_str_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_parexec import generator

        @generator
        def not_a_dict():
            return ["generated/test_x.py"]

        @generator
        def bytes_content():
            return {"generated/test_y.py": b"def test_y(): pass"}
        """
    )
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "*'not_a_dict' returned list; a generator returns a dict*",
            "*'bytes_content'*content of 'generated/test_y.py' is bytes*",
        ]
    )
    assert generated(pytester) == []


# -- failures -------------------------------------------------------------------


def test_a_failed_generator_is_an_error_and_keeps_its_earlier_outputs(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    run(pytester).assert_outcomes(passed=3)
    before = (pytester.path / "generated" / "test_b.py").read_text()
    write_specs(pytester, b={"value": 7, "explode": "spec b is broken"})

    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # test_a, test_c and the kept test_b pass; the failed generator is one error.
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR*gen[[]specs/b.json[]]*",
        ]
    )
    assert "RuntimeError: spec b is broken" in result.stdout.str()
    summary = result.stdout.str().split(SUMMARY_TITLE, 1)[1]
    assert "gen[specs/b.json]" in summary
    assert "outcomes: 1 failed" in summary
    assert (pytester.path / "generated" / "test_b.py").read_text() == before
    assert statuses(pytester) == {
        "gen[specs/a.json]": "up-to-date",
        "gen[specs/b.json]": "failed",
        "gen[specs/c.json]": "up-to-date",
    }

    # Fixed: it runs again (a failure is never up to date).
    write_specs(pytester, b={"value": 7})
    run(pytester).assert_outcomes(passed=3)
    assert statuses(pytester)["gen[specs/b.json]"] == "passed"
    assert "assert 7 < threshold" in (pytester.path / "generated" / "test_b.py").read_text()


def test_every_generator_operation_lists_its_files_in_the_json_report(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    write_specs(pytester, b={"value": 2, "explode": "broken"})
    run(pytester).assert_outcomes(passed=2, errors=1)
    for name in ALL:
        op = report_ops(pytester)[name]
        assert {"files_written", "files_unchanged", "files_deleted"} <= set(op), name


def test_setup_wait_is_never_negative(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_parexec import generator

        @generator
        def only():
            return {"generated/test_only.py": "def test_only():\\n    pass\\n"}
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert json.loads((pytester.path / "report.json").read_text())["setup_s"] >= 0
    assert "setup wait: -" not in result.stdout.str()


def test_two_generators_with_one_name_are_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_parexec import generator

        @generator
        def gen():
            return {"generated/test_one.py": "def test_one():\\n    pass\\n"}

        @generator(name="gen")
        def other():
            return {"generated/test_two.py": "def test_two():\\n    pass\\n"}
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "'gen'" in result.stderr.str()


def test_a_failed_dependency_fails_its_generators_and_other_tests_still_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        from pytest_parexec import batchable, generator

        @batchable
        def broken():
            raise ValueError("no data today")

        @generator
        def needs_broken(broken):
            return {"generated/test_never.py": "def test_never():\\n    pass\\n"}

        @generator
        def fine():
            return {"generated/test_fine.py": "def test_fine():\\n    pass\\n"}
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=1)
    text = result.stdout.str()
    assert "generator operation 'needs_broken' did not run because its dependency 'broken' failed" in text
    assert "ValueError: no data today" in text
    assert generated(pytester) == ["test_fine.py"]


# -- where generators may be defined ------------------------------------------------


def test_a_generator_in_a_conftest_found_during_collection_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    late = pytester.path / "tests" / "sub" / "conftest.py"
    late.parent.mkdir(parents=True)
    late.write_text(
        "from pytest_parexec import generator\n\n"
        "@generator\n"
        "def too_late():\n"
        "    return {'tests/sub/test_gen.py': 'def test_gen():\\n    pass\\n'}\n"
    )
    (late.parent / "test_plain.py").write_text("def test_plain():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*generator 'too_late' is defined in {late.resolve()}, which pytest imports only during*"]
    )
    assert "Move it to the rootdir's conftest.py" in result.stderr.str()
    assert not (late.parent / "test_gen.py").exists()


def test_a_generator_in_a_test_module_is_a_usage_error(pytester: pytest.Pytester) -> None:
    module = pytester.makepyfile(
        test_mod="""
        from pytest_parexec import generator

        @generator
        def in_a_test_module():
            return {}

        def test_plain():
            pass
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*generator 'in_a_test_module' is defined in*test_mod.py*Move it*"])
    assert str(module.resolve()) in result.stderr.str()


def test_a_generator_in_a_plugin_module_runs_and_its_output_can_be_named_on_the_command_line(
    pytester: pytest.Pytester,
) -> None:
    """``generated`` does not exist when pytest starts; it does when pytest collects."""
    pytester.makepyfile(
        gen_plugin="""
        from pytest_parexec import generator

        @generator
        def from_plugin():
            return {"generated/test_plugin.py": "def test_plugin():\\n    pass\\n"}
        """
    )
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess(
        "-p", "parexec", *FAST, "-p", "gen_plugin", "--parexec-report=report.json", "generated"
    )
    result.assert_outcomes(passed=1)
    assert statuses(pytester) == {"from_plugin": "passed"}
