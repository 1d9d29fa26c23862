"""Acceptance tests for setup commands from the ``parexec_commands`` ini option.

Every scenario runs pytest in a subprocess (``runpytest_subprocess``): commands run
on worker processes, through the shell. Commands prove what they did with files in
the rootdir (a command that must run after another checks for its file), never with
time measurements.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any

import pytest
from _support import process_gone

from pytest_parexec import infer_group
from pytest_parexec.commands import SYNTAX

#: Hypothesis's plugin takes most of a subprocess's start-up time and none of these tests need it.
FAST = ("-p", "no:hypothesispytest")

#: How each mode is asked for on the command line.
MODES = {
    "parallel": ("--parexec=parallel", "--parexec-workers=2"),
    "sequential": ("--parexec=sequential",),
}

#: This interpreter, quoted for the shell: ``python`` may not be on PATH.
PYTHON = shlex.quote(sys.executable)


def make_ini(pytester: pytest.Pytester, *commands: str, extra: str = "") -> None:
    lines = "\n".join(f"    {command}" for command in commands)
    pytester.makeini(f"[pytest]\n{extra}parexec_commands =\n{lines}\n")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "parexec", *FAST, "--parexec-report=report.json", *args)


def report(pytester: pytest.Pytester) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / "report.json").read_text())
    return data


def report_ops(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    return {op["name"]: op for op in report(pytester)["operations"]}


# -- values ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_command_is_a_session_fixture_whose_value_is_its_stdout(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    make_ini(
        pytester,
        "greeting: echo hello world",
        f'where: {PYTHON} -c "import os; print(os.getcwd())"',
        "counted: echo run >> counted.log; printf 'no newline'",
    )
    pytester.mkdir("sub")
    pytester.makepyfile(
        **{
            "sub/test_values": f"""
            def test_stdout(greeting):
                assert greeting == "hello world\\n"

            def test_runs_in_the_rootdir(where):
                assert where == {str(pytester.path.resolve()) + chr(10)!r}

            def test_once_a(counted):
                assert counted == "no newline"

            def test_once_b(counted):
                assert counted == "no newline"
            """
        }
    )
    # Invoked from a subdirectory: commands still run in the rootdir.
    monkeypatch.chdir(pytester.path / "sub")
    result = pytester.runpytest_subprocess("-p", "parexec", *FAST, *MODES[mode])
    result.assert_outcomes(passed=4)
    assert (pytester.path / "counted.log").read_text() == "run\n"


def test_a_command_in_pyproject_toml_is_a_list_item(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        parexec_commands = ["answer [configs]: echo 42", "other (after answer): echo {}"]
        """
    )
    pytester.makepyfile(
        test_it="""
        def test_it(answer, other):
            assert int(answer) == 42
            assert other == "{}\\n"
        """
    )
    run(pytester).assert_outcomes(passed=1)
    assert report_ops(pytester)["answer"]["group"] == "configs"


def test_batchable_operations_can_use_a_command_as_parameter_or_after(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "migrate: printf yes > migrated && echo m")
    pytester.makeconftest(
        """
        from pathlib import Path
        from pytest_parexec import batchable

        @batchable
        def uses_param(migrate):
            return migrate.strip() + ":" + Path("migrated").read_text()

        @batchable(after=["migrate"])
        def uses_after():
            return Path("migrated").read_text()
        """
    )
    pytester.makepyfile(
        test_it="""
        def test_param(uses_param):
            assert uses_param == "m:yes"

        def test_after(uses_after):
            assert uses_after == "yes"
        """
    )
    run(pytester, *MODES["parallel"]).assert_outcomes(passed=2)
    ops = report_ops(pytester)
    assert ops["uses_param"]["depends"] == ["migrate"]
    assert ops["uses_after"]["depends"] == ["migrate"]


def test_a_command_a_generator_uses_runs_once_before_collection(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "version: echo $$ >> version.log; echo 3.1")
    pytester.makeconftest(
        """
        from pytest_parexec import generator

        @generator
        def versioned(version):
            v = version.strip()
            return {"generated/test_version.py":
                    f"def test_version(version):\\n    assert version.strip() == {v!r}\\n"}
        """
    )
    run(pytester, *MODES["parallel"]).assert_outcomes(passed=1)
    assert len((pytester.path / "version.log").read_text().split()) == 1
    ops = report_ops(pytester)
    assert ops["version"]["kind"] == "command"
    assert ops["versioned"]["depends"] == ["version"]


# -- when commands run ----------------------------------------------------------


def test_commands_run_whenever_a_test_runs_even_unrequested(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "stamp: echo ran > stamped.txt")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    run(pytester).assert_outcomes(passed=1)
    assert (pytester.path / "stamped.txt").read_text() == "ran\n"
    op = report_ops(pytester)["stamp"]
    assert (op["kind"], op["status"]) == ("command", "passed")


@pytest.mark.parametrize("args", [("--collect-only",), ("-k", "no_such_test")], ids=["collect-only", "none"])
def test_commands_do_not_run_in_a_session_without_tests(pytester: pytest.Pytester, args: tuple[str]) -> None:
    make_ini(pytester, "stamp: echo ran > stamped.txt")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(pytester, *args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    result.stdout.fnmatch_lines(["collected 1 item*"])
    assert not (pytester.path / "stamped.txt").exists()


def test_after_orders_commands(pytester: pytest.Pytester) -> None:
    make_ini(
        pytester,
        "first: echo first >> order.log; echo done > first.done",
        "second (after first): test -f first.done && echo second >> order.log && echo done > second.done",
        "third (after first, second): test -f second.done && echo third >> order.log",
        # Independent of the others: may run at any time.
        "free: echo free > free.done",
    )
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    run(pytester, *MODES["parallel"]).assert_outcomes(passed=1)
    assert (pytester.path / "order.log").read_text().split() == ["first", "second", "third"]
    ops = report_ops(pytester)
    assert {name: op["status"] for name, op in ops.items()} == dict.fromkeys(
        ["first", "second", "third", "free"], "passed"
    )
    assert ops["third"]["depends"] == ["first", "second"]


def test_after_names_a_batchable_operation_a_test_uses(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "check (after prepare): test -f prepared && echo ok")
    pytester.makeconftest(
        """
        from pathlib import Path
        from pytest_parexec import batchable

        @batchable
        def prepare():
            Path("prepared").write_text("x")
            return 1
        """
    )
    pytester.makepyfile(test_it="def test_it(prepare, check):\n    assert check == 'ok\\n'\n")
    run(pytester, *MODES["parallel"]).assert_outcomes(passed=1)


def test_after_names_a_batchable_operation_no_test_uses(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "check (after prepare): test -f prepared && echo ok > checked")
    pytester.makeconftest(
        """
        from pathlib import Path
        from pytest_parexec import batchable

        @batchable
        def prepare():
            Path("prepared").write_text("x")
            return 1
        """
    )
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    run(pytester).assert_outcomes(passed=1)
    assert (pytester.path / "checked").read_text() == "ok\n"


RENDEZVOUS = r"""
import sys
import time
from pathlib import Path

def rendezvous(me, other, timeout=30.0):
    '''Return once ``other`` has started too; fail if it does not within ``timeout``.'''
    out = Path(__file__).parent
    (out / f"{me}.here").touch()
    deadline = time.monotonic() + timeout
    while not (out / f"{other}.here").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{me}: {other} did not start: not run at the same time")
        time.sleep(0.01)

if __name__ == "__main__":
    rendezvous(sys.argv[1], sys.argv[2])
    print("met")
"""


def test_a_command_runs_at_the_same_time_as_other_operations(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(rendezvous=RENDEZVOUS)
    make_ini(pytester, f"meet: {PYTHON} rendezvous.py command batchable")
    pytester.makeconftest(
        """
        from pytest_parexec import batchable
        from rendezvous import rendezvous

        @batchable
        def data():
            rendezvous("batchable", "command")
            return "met"
        """
    )
    pytester.makepyfile(test_it="def test_it(data):\n    assert data == 'met'\n")
    # auto mode, first run (no learned durations), two independent operations: parallel.
    run(pytester, "--parexec-workers=2").assert_outcomes(passed=1)
    data = report(pytester)
    assert (data["mode"], data["workers"]) == ("parallel", 2)
    assert report_ops(pytester)["meet"]["status"] == "passed"


# -- the report -------------------------------------------------------------------


def test_commands_appear_in_the_report_with_their_group(pytester: pytest.Pytester) -> None:
    make_ini(
        pytester,
        "migrate_db [models]: echo m",
        "bundle [configs] (after migrate_db): echo b",
        "warm_cache: echo w",
    )
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    ops = report_ops(pytester)
    assert {name: (op["kind"], op["group"]) for name, op in ops.items()} == {
        "migrate_db": ("command", "models"),
        "bundle": ("command", "configs"),
        "warm_cache": ("command", infer_group("warm_cache")),
    }
    assert ops["bundle"]["depends"] == ["migrate_db"]
    phases = {phase["group"]: phase["operations"] for phase in report(pytester)["phases"]}
    assert phases["models"] == ["migrate_db"]
    assert phases["configs"] == ["bundle"]
    result.stdout.fnmatch_lines(["*parallel execution summary*", "models * migrate_db: *"])


# -- failures --------------------------------------------------------------------

#: 30 lines on stderr, then a line on stdout, then exit status 3.
NOISY_FAILURE = (
    f"{PYTHON} -c \"import sys; [print(f'err-line-{{i}}', file=sys.stderr) for i in range(30)]; "
    "print('out-line'); sys.exit(3)\""
)


def test_a_failed_command_shows_its_exit_code_and_the_end_of_its_output(pytester: pytest.Pytester) -> None:
    make_ini(pytester, f"broken: {NOISY_FAILURE}", "dependent (after broken): echo never > never.txt")
    pytester.makepyfile(
        test_it="""
        def test_uses_broken(broken):
            pass

        def test_uses_dependent(dependent):
            pass

        def test_independent():
            pass
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=2)
    text = result.stdout.str()
    assert "setup command 'broken'" in text
    assert "exited with status 3" in text
    assert "err-line-29" in text
    assert "err-line-10" in text
    assert "err-line-9\n" not in text  # only the last lines
    assert "out-line" in text
    # The test that uses the dependent is told why: the command it waits for failed.
    result.stdout.fnmatch_lines(["*ERROR at setup of test_uses_dependent*", "setup command 'broken' failed*"])
    assert not (pytester.path / "never.txt").exists()
    ops = report_ops(pytester)
    assert ops["broken"]["status"] == "failed"
    assert ops["broken"]["attempts"] == 2  # retried once, like any operation
    assert "exited with status 3" in ops["broken"]["error"]
    assert (ops["dependent"]["status"], ops["dependent"]["blocked_by"]) == ("skipped", "broken")


def test_a_flaky_command_is_retried(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "flaky: if [ -e tried ]; then echo second; else touch tried; exit 1; fi")
    pytester.makepyfile(test_it="def test_it(flaky):\n    assert flaky == 'second\\n'\n")
    run(pytester, *MODES["parallel"]).assert_outcomes(passed=1)
    op = report_ops(pytester)["flaky"]
    assert (op["status"], op["attempts"]) == ("recovered", 2)


def test_a_command_over_its_timeout_is_stopped_with_its_children(pytester: pytest.Pytester) -> None:
    make_ini(
        pytester,
        "slow: sleep 60 & echo $! > sleep.pid; wait",
        extra="parexec_retries = 0\nparexec_timeout = 0.5\n",
    )
    pytester.makepyfile(
        test_it="""
        def test_uses_slow(slow):
            pass

        def test_independent():
            pass
        """
    )
    result = run(pytester, *MODES["parallel"])
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*setup command 'slow' failed*", "*timed out after 0.5 seconds*"])
    pid = int((pytester.path / "sleep.pid").read_text())
    deadline = time.monotonic() + 10.0  # reaping is asynchronous: a bound, not a speed claim
    while not process_gone(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"the command's child {pid} outlived its timeout")
        time.sleep(0.05)


def test_an_unrequested_failed_command_fails_the_session(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "broken: echo err-line >&2; exit 3")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(pytester)
    assert report_ops(pytester)["broken"]["status"] == "failed"
    assert "exited with status 3" in result.stdout.str()
    assert result.ret != pytest.ExitCode.OK


def test_a_successful_command_with_non_utf8_output_gives_its_stdout(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "latin: printf 'caf\\351'")
    pytester.makepyfile(test_it="def test_it(latin):\n    assert latin.startswith('caf')\n")
    run(pytester).assert_outcomes(passed=1)
    assert report_ops(pytester)["latin"]["status"] == "passed"


# -- malformed lines --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("this line has no colon", "cannot parse {line!r}; the syntax is " + SYNTAX),
        ("2fast: echo x", "cannot parse {line!r}; the syntax is " + SYNTAX),
        ("empty:", "cannot parse 'empty:'; the syntax is " + SYNTAX),
        ("name (before other): echo x", "cannot parse {line!r}; the syntax is " + SYNTAX),
        ("name [nowhere]: echo x", "{line!r}: unknown group 'nowhere'; valid groups: "),
        ("name (after a b): echo x", "{line!r}: 'a b' in (after ...) is not an operation name"),
    ],
    ids=["no colon", "bad name", "no command", "not after", "unknown group", "bad after"],
)
def test_a_malformed_line_is_a_usage_error_quoting_it(
    pytester: pytest.Pytester, line: str, message: str
) -> None:
    make_ini(pytester, "fine: echo fine", line)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message.format(line=line) in result.stderr.str()
    assert "parexec_commands" in result.stderr.str()


def test_a_command_defined_twice_is_a_usage_error(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "same: echo one", "same: echo two")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "'same: echo two': a command named 'same' is defined twice" in result.stderr.str()


def test_an_unknown_after_is_a_usage_error(pytester: pytest.Pytester) -> None:
    make_ini(pytester, "late (after nothing_like_it): echo x")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "'late'" in result.stderr.str()
    assert "'nothing_like_it'" in result.stderr.str()
