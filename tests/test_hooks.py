"""Acceptance tests for the hooks pytest-parexec offers other plugins.

Each scenario's conftest.py implements one hook, as another plugin would, with
``@pytest.hookimpl(optionalhook=True)``, and records what it received in a JSON
lines file ``calls`` beside it; the test reads that file after pytest ran in a
subprocess.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

#: The start of every scenario's conftest.py.
HELPERS = """
import json
import os
from pathlib import Path

import pytest

from pytest_parexec import batchable

CALLS = Path(__file__).parent / "calls"


def record(**data):
    with open(CALLS, "a") as stream:
        stream.write(json.dumps(data) + "\\n")


@batchable
def schema_db():
    return "db"


@batchable
def api_service(schema_db):
    return schema_db + "+api"


@batchable
def app_config():
    return "config"
"""

TEST = """
def test_it(api_service, app_config):
    assert api_service == "db+api"
    assert app_config == "config"
"""


def make_suite(pytester: pytest.Pytester, conftest: str, test: str = TEST) -> None:
    pytester.makeconftest(HELPERS + textwrap.dedent(conftest))
    pytester.makepyfile(test_it=textwrap.dedent(test))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "parexec", "--parexec-report=report.json", *args)


def calls(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    path = pytester.path / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def groups_in_report(pytester: pytest.Pytester) -> dict[str, str]:
    report = json.loads((pytester.path / "report.json").read_text())
    return {op["name"]: op["group"] for op in report["operations"]}


# -- pytest_parexec_classify ------------------------------------------------------


def test_classify_overrides_the_group(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        """
        @pytest.hookimpl(optionalhook=True)
        def pytest_parexec_classify(operation):
            record(name=operation.name, group=operation.group)
            if operation.name == "schema_db":
                return "configs"
            if operation.name == "api_service":
                return "tests"
            return None  # app_config keeps the group its name gives it
        """,
    )
    run(pytester).assert_outcomes(passed=1)
    # Called once per operation, with the group the operation would otherwise have.
    assert sorted((c["name"], c["group"]) for c in calls(pytester)) == [
        ("api_service", "logic"),
        ("app_config", "configs"),
        ("schema_db", "models"),
    ]
    assert groups_in_report(pytester) == {
        "schema_db": "configs",
        "api_service": "tests",
        "app_config": "configs",
    }


def test_classify_firstresult_wins_over_a_later_implementation(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        """
        @pytest.hookimpl(optionalhook=True, tryfirst=True)
        def pytest_parexec_classify(operation):
            return "other"


        class Later:
            @pytest.hookimpl(optionalhook=True, trylast=True)
            def pytest_parexec_classify(self, operation):
                record(name=operation.name)
                return "models"


        def pytest_configure(config):
            config.pluginmanager.register(Later(), "later-classifier")
        """,
    )
    run(pytester).assert_outcomes(passed=1)
    assert set(groups_in_report(pytester).values()) == {"other"}
    assert calls(pytester) == []


def test_classify_returning_an_unknown_group_is_a_usage_error(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        """
        @pytest.hookimpl(optionalhook=True)
        def pytest_parexec_classify(operation):
            return "bogus" if operation.name == "api_service" else None
        """,
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-parexec: pytest_parexec_classify returned 'bogus' for operation 'api_service'; "
            "return one of models, logic, configs, other, tests, or None to keep 'logic'"
        ]
    )
    assert not (pytester.path / "report.json").exists()


# -- pytest_parexec_plan -----------------------------------------------------------

PLAN_CONFTEST = """
import dataclasses
import operator


def attempt(change):
    try:
        change()
    except (dataclasses.FrozenInstanceError, TypeError, AttributeError) as exc:
        return type(exc).__name__
    return "changed"


@pytest.hookimpl(optionalhook=True)
def pytest_parexec_plan(plan):
    record(
        operations=list(plan.operations),
        dependencies={k: list(v) for k, v in plan.dependencies.items()},
        groups=dict(plan.groups),
        expected_s=dict(plan.expected_s),
        mode=plan.mode,
        workers=plan.workers,
        refused={
            "operations": attempt(lambda: setattr(plan, "operations", ())),
            "groups": attempt(lambda: setattr(plan, "groups", {})),
            "dependencies[...]": attempt(lambda: operator.setitem(plan.dependencies, "schema_db", ("x",))),
            "groups[...]": attempt(lambda: operator.setitem(plan.groups, "schema_db", "tests")),
            "del expected_s[...]": attempt(lambda: operator.delitem(plan.expected_s, "schema_db")),
        },
    )
"""


def test_plan_hook_sees_a_read_only_plan(pytester: pytest.Pytester) -> None:
    make_suite(pytester, PLAN_CONFTEST)
    # With the cache: the second run knows how long each operation took in the first.
    for run_number in (1, 2):
        run(pytester, "--parexec=parallel", "--parexec-workers=2").assert_outcomes(passed=1)
        (call,) = calls(pytester)[run_number - 1 :]
        assert call["operations"].index("schema_db") < call["operations"].index("api_service")
        assert sorted(call["operations"]) == ["api_service", "app_config", "schema_db"]
        assert call["dependencies"] == {"schema_db": [], "api_service": ["schema_db"], "app_config": []}
        assert call["groups"] == {"schema_db": "models", "api_service": "logic", "app_config": "configs"}
        assert (call["mode"], call["workers"]) == ("parallel", 2)
        assert call["refused"] == {
            "operations": "FrozenInstanceError",
            "groups": "FrozenInstanceError",
            "dependencies[...]": "TypeError",
            "groups[...]": "TypeError",
            "del expected_s[...]": "TypeError",
        }
        expected = call["expected_s"]
        assert sorted(expected) == sorted(call["operations"])
        if run_number == 1:
            assert set(expected.values()) == {None}
        else:
            assert all(isinstance(seconds, float) and seconds >= 0 for seconds in expected.values())
    # The attempts to change the plan changed nothing.
    assert groups_in_report(pytester) == {
        "schema_db": "models",
        "api_service": "logic",
        "app_config": "configs",
    }


# -- pytest_parexec_operation_finished -------------------------------------------


def test_operation_finished_reports_every_attempt(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        """
        @batchable(retries=1)
        def flaky():
            first = Path(__file__).parent / "flaky-ran-once"
            if not first.exists():
                first.touch()
                raise ConnectionError("first attempt fails")
            return "recovered"


        @batchable(retries=0)
        def broken():
            raise RuntimeError("always fails")


        @pytest.hookimpl(optionalhook=True)
        def pytest_parexec_operation_finished(result):
            record(
                name=result.name,
                status=result.status,
                attempt=result.attempt,
                duration_s=result.duration_s,
                worker=result.worker,
                error=result.error,
                pid=os.getpid(),
            )


        def pytest_configure(config):
            (Path(__file__).parent / "pytest-pid").write_text(str(os.getpid()))
        """,
        test="""
        def test_it(api_service, app_config, flaky):
            assert flaky == "recovered"


        def test_broken(broken):
            pass
        """,
    )
    result = run(pytester, "--parexec=parallel")
    result.assert_outcomes(passed=1, errors=1)
    seen = calls(pytester)
    # Called in the pytest process, after each attempt.
    assert {c.pop("pid") for c in seen} == {int((pytester.path / "pytest-pid").read_text())}
    for call in seen:
        assert isinstance(call.pop("duration_s"), float)
        assert isinstance(call.pop("worker"), str)
    by_name: dict[str, list[tuple[str, int, str | None]]] = {}
    for call in seen:
        error = call["error"]
        by_name.setdefault(call["name"], []).append((call["status"], call["attempt"], error))
    assert sorted(by_name) == ["api_service", "app_config", "broken", "flaky", "schema_db"]
    for name in ("api_service", "app_config", "schema_db"):
        assert by_name[name] == [("passed", 1, None)]
    (retrying, passed) = by_name["flaky"]
    assert retrying[:2] == ("retrying", 1)
    assert retrying[2] is not None
    assert "ConnectionError: first attempt fails" in retrying[2]
    assert passed == ("passed", 2, None)
    ((status, attempt, error),) = by_name["broken"]
    assert (status, attempt) == ("failed", 1)
    assert error is not None
    assert "RuntimeError: always fails" in error


# -- pytest_parexec_summary ------------------------------------------------------


def test_summary_hook_adds_a_line_inside_the_summary(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        """
        @pytest.hookimpl(optionalhook=True)
        def pytest_parexec_summary(summary, terminalreporter):
            names = ", ".join(sorted(op["name"] for op in summary["operations"]))
            terminalreporter.write_line(f"my plugin: {len(summary['operations'])} operations ({names})")
        """,
    )
    result = run(pytester, "--parexec=parallel")
    result.assert_outcomes(passed=1)
    lines = result.stdout.lines
    heading = next(i for i, line in enumerate(lines) if "parallel execution summary" in line)
    mine = next(i for i, line in enumerate(lines) if line.startswith("my plugin: "))
    following = next(i for i, line in enumerate(lines) if i > heading and line.startswith("="))
    # After the summary's heading and its own lines, before the next section.
    assert heading < mine < following
    assert lines[mine] == "my plugin: 3 operations (api_service, app_config, schema_db)"
    assert any(line.startswith("sequential estimate: ") for line in lines[heading:mine])

    # Without pytest-parexec, a conftest.py implementing its hooks still loads (optionalhook).
    result = pytester.runpytest_subprocess("-p", "no:parexec")
    result.assert_outcomes(passed=1)
    assert "my plugin" not in result.stdout.str()
