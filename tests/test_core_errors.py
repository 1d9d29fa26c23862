"""Acceptance tests for the core engine's usage errors: options, ini values, bad plans.

Option and ini errors stop pytest before any operation runs, so they run in
process; plans run in a subprocess, because workers start while pytest collects.
"""

from __future__ import annotations

import json
import os
import re
import textwrap

import pytest

#: Every batchable function in these scenarios leaves this file behind if it runs.
RAN = "ran.txt"

#: --parexec-workers=auto for three independent operations: the plan's width, at most 2 per CPU.
AUTO_FOR_THREE = min(3, 2 * (os.cpu_count() or 1))


def make_conftest(pytester: pytest.Pytester, body: str) -> None:
    pytester.makeconftest(
        "from pathlib import Path\n\nfrom pytest_parexec import batchable\n\n"
        "MARK = Path(__file__).parent / " + repr(RAN) + "\n" + textwrap.dedent(body)
    )


def error_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stderr.lines if line.startswith("ERROR:")]


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        ("--parexec=bogus", "*argument --parexec: invalid choice: 'bogus'*parallel*sequential*"),
        ("--parexec-workers=0", "*argument --parexec-workers: '0'*>= 1*"),
        ("--parexec-workers=abc", "*argument --parexec-workers: 'abc'*not a number of workers*"),
    ],
)
def test_invalid_option_is_a_usage_error(pytester: pytest.Pytester, option: str, pattern: str) -> None:
    pytester.makepyfile("def test_never_runs():\n    raise AssertionError\n")
    result = pytester.runpytest("-p", "parexec", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([pattern])
    assert "Traceback" not in result.stderr.str()
    assert len([line for line in result.stderr.lines if ": error: " in line]) == 1


@pytest.mark.parametrize(
    ("ini", "pattern"),
    [
        ("parexec_workers = 0", "ERROR: ini option parexec_workers = '0'*>= 1*"),
        ("parexec_workers = abc", "ERROR: ini option parexec_workers = 'abc'*not a number of workers*"),
        ("parexec_mode = bogus", "ERROR: ini option parexec_mode = 'bogus'*parallel, sequential*"),
    ],
)
def test_invalid_ini_value_is_a_one_line_usage_error(
    pytester: pytest.Pytester, ini: str, pattern: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_never_runs():\n    raise AssertionError\n")
    result = pytester.runpytest("-p", "parexec")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([pattern])
    assert len([line for line in result.stderr.lines if line.strip()]) == 1, result.stderr.str()


@pytest.mark.parametrize(
    ("ini", "options", "expected"),
    [
        ("parexec_workers = 2", (), {"workers": 2, "mode": "parallel"}),
        # auto: as many workers as operations can run at once, not the ini's 2.
        ("parexec_workers = 2", ("--parexec-workers=auto",), {"workers": AUTO_FOR_THREE, "mode": "parallel"}),
        ("parexec_mode = sequential", (), {"mode": "sequential"}),
        (
            "parexec_mode = sequential",
            ("--parexec=parallel",),
            # The worker count --parexec=parallel picks is checked in test_core.py.
            {"mode": "parallel"},
        ),
    ],
    ids=["ini workers", "command line auto wins", "ini mode", "command line mode wins"],
)
def test_ini_values_apply_and_the_command_line_wins(
    pytester: pytest.Pytester, ini: str, options: tuple[str, ...], expected: dict[str, object]
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    make_conftest(
        pytester,
        """
        import os

        @batchable
        def left_data():
            return os.getpid()

        @batchable
        def middle_data():
            return os.getpid()

        @batchable
        def right_data():
            return os.getpid()
        """,
    )
    in_process = expected["mode"] == "sequential"
    pytester.makepyfile(
        f"""
        import os

        def test_all(left_data, middle_data, right_data):
            pids = (left_data, middle_data, right_data)
            assert [pid == os.getpid() for pid in pids] == [{in_process}] * 3
        """
    )
    result = pytester.runpytest_subprocess("-p", "parexec", *options, "--parexec-report=report.json")
    result.assert_outcomes(passed=1)
    report = json.loads((pytester.path / "report.json").read_text())
    assert {key: report[key] for key in expected} == expected


# -- plans ----------------------------------------------------------------------------------


def run_plan(pytester: pytest.Pytester, conftest: str, test: str) -> pytest.RunResult:
    make_conftest(pytester, conftest)
    pytester.makepyfile(test_plan=textwrap.dedent(test))
    result = pytester.runpytest_subprocess("-p", "parexec")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert not (pytester.path / RAN).exists(), "an operation ran despite the plan error"
    return result


@pytest.mark.parametrize("kind", ["unknown name", "ordinary fixture"])
def test_parameter_that_is_not_an_operation(pytester: pytest.Pytester, kind: str) -> None:
    result = run_plan(
        pytester,
        """
        import pytest

        @pytest.fixture(scope="session")
        def plain_fixture():
            return 1

        @batchable
        def base_data():
            MARK.touch()

        @batchable
        def api_service(base_data, PARAM):
            MARK.touch()
        """.replace("PARAM", "no_such_operation" if kind == "unknown name" else "plain_fixture"),
        "def test_api(api_service):\n    pass\n",
    )
    param = "no_such_operation" if kind == "unknown name" else "plain_fixture"
    result.stderr.fnmatch_lines([f"ERROR: *parameter '{param}' of batchable operation 'api_service'*"])


def test_after_name_that_is_not_an_operation(pytester: pytest.Pytester) -> None:
    result = run_plan(
        pytester,
        """
        @batchable(after=("no_such_operation",))
        def api_service():
            MARK.touch()
        """,
        "def test_api(api_service):\n    pass\n",
    )
    result.stderr.fnmatch_lines(["ERROR: *'no_such_operation'*'api_service'*"])


@pytest.mark.parametrize(
    ("conftest", "cycle"),
    [
        (
            """
            @batchable
            def alpha(beta):
                MARK.touch()

            @batchable
            def beta(alpha):
                MARK.touch()
            """,
            ["alpha", "beta"],
        ),
        (
            """
            @batchable
            def alpha(beta):
                MARK.touch()

            @batchable(after=("gamma",))
            def beta():
                MARK.touch()

            @batchable
            def gamma(alpha):
                MARK.touch()

            @batchable
            def outside(alpha):
                MARK.touch()
            """,
            ["alpha", "beta", "gamma"],
        ),
    ],
    ids=["parameters", "with after"],
)
def test_cycle_is_named_in_order(pytester: pytest.Pytester, conftest: str, cycle: list[str]) -> None:
    result = run_plan(pytester, conftest, "def test_cycle(alpha):\n    pass\n")
    (line,) = error_lines(result)
    # Any rotation of the cycle, closed: "a -> b -> a" or "b -> a -> b".
    rotations = [cycle[i:] + cycle[:i] for i in range(len(cycle))]
    shown = [" -> ".join([*r, r[0]]) for r in rotations]
    assert any(text in line for text in shown), line
    assert "cycle" in line
    assert "outside" not in line


def test_unknown_group_is_named_with_the_valid_ones(pytester: pytest.Pytester) -> None:
    make_conftest(
        pytester,
        """
        @batchable(group="databases")
        def schema():
            MARK.touch()
        """,
    )
    pytester.makepyfile("def test_schema(schema):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "parexec")
    assert result.ret != pytest.ExitCode.OK
    output = result.stdout.str() + result.stderr.str()
    assert re.search(r"'databases'.*models, logic, configs, other, tests", output), output
    assert not (pytester.path / RAN).exists()
