"""Recommendations: each rule on a report built by hand to trigger it alone, none on a
balanced run, and the summary's ``advice:`` lines against the JSON report of a real run.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from typing import Any

import pytest
from _support import pytester_with_only_parexec  # noqa: F401 - the pytester fixture

from pytest_parexec.advice import IDLE_BELOW, SHORT_S, recommendations
from pytest_parexec.planner import critical_path
from pytest_parexec.report import Report


def op(
    name: str,
    duration: float | None,
    group: str = "models",
    depends: Sequence[str] = (),
    status: str = "passed",
) -> dict[str, Any]:
    """The fields of an operation report the rules read; the rest as a real report has them."""
    return {
        "name": name,
        "group": group,
        "status": status,
        "attempts": 1,
        "worker": "gw0",
        "pid": 1,
        "host": None,
        "spec": "popen",
        "start_s": 0.0,
        "end_s": duration,
        "duration_s": duration,
        "depends": list(depends),
        "expected_s": None,
        "error": None,
        "blocked_by": None,
        "teardown_error": None,
        "attempt_history": [],
    }


def phase(group: str, kind: str, members: Sequence[str], duration: float) -> dict[str, Any]:
    return {
        "group": group,
        "kind": kind,
        "operations": list(members),
        "start_s": 0.0,
        "end_s": duration,
        "duration_s": duration,
    }


def report(
    operations: Sequence[dict[str, Any]],
    phases: Sequence[dict[str, Any]],
    *,
    wall: float,
    workers: int = 2,
    mode: str = "parallel",
    tx: Sequence[str] = (),
) -> Report:
    """A report with the critical path and sums computed as build_report computes them."""
    durations = {o["name"]: o["duration_s"] for o in operations if o["status"] in ("passed", "recovered")}
    path, length = critical_path(
        {o["name"]: o["depends"] for o in operations if o["name"] in durations}, durations
    )
    sequential = sum(o["duration_s"] or 0.0 for o in operations)
    built: dict[str, Any] = {
        "version": 1,
        "mode": mode,
        "mode_reason": "test",
        "workers": workers,
        "setup_s": wall,
        "wall_s": wall,
        "sequential_s": sequential,
        "saved_s": sequential - wall,
        "efficiency": (sequential - wall) / sequential if sequential else 0.0,
        "critical_path": path,
        "critical_path_s": length,
        "counts": {},
        "phases": list(phases),
        "operations": list(operations),
        "recommendations": [],
        "worker_errors": [],
        "tx": list(tx),
    }
    return built  # type: ignore[return-value]


def balanced() -> Report:
    """Four 1 s operations, two phases of two, on two workers, all of it overlapped."""
    return report(
        [
            op("schema_db", 1.0),
            op("users_db", 1.0),
            op("api_service", 1.0, "logic"),
            op("web_service", 1.0, "logic"),
        ],
        [
            phase("models", "parallel", ["schema_db", "users_db"], 1.0),
            phase("logic", "parallel", ["api_service", "web_service"], 1.0),
        ],
        wall=2.0,
    )


def test_thresholds_are_those_of_the_spec() -> None:
    assert SHORT_S == 0.05
    assert IDLE_BELOW == 0.5


def test_a_balanced_run_gets_no_advice() -> None:
    assert recommendations(balanced()) == []


def test_no_advice_in_sequential_mode_on_short_independent_operations() -> None:
    r = report(
        [op("schema_db", 0.01), op("users_db", 0.01)],
        [phase("models", "sequential", ["schema_db", "users_db"], 0.02)],
        wall=0.02,
        workers=0,
        mode="sequential",
    )
    assert recommendations(r) == []


def test_dominant_operation_on_the_critical_path() -> None:
    # schema_db (3 s) -> api_service (1 s) is the 4 s critical path; users_db (1 s)
    # beside it. Without schema_db's time the longest chain is 1 s: up to 3 s saved.
    r = report(
        [op("schema_db", 3.0), op("users_db", 1.0), op("api_service", 1.0, "logic", ["schema_db"])],
        [
            phase("models", "parallel", ["schema_db", "users_db"], 3.0),
            phase("logic", "sequential", ["api_service"], 1.0),
        ],
        wall=4.0,
    )
    assert r["critical_path"] == ["schema_db", "api_service"]
    assert recommendations(r) == [
        "schema_db takes 3.00s, 75% of the 4.00s critical path: setup could be up to 3.00s shorter "
        "if it were faster or split"
    ]


def test_dominant_saving_is_bounded_by_the_next_longest_chain() -> None:
    # schema_db (3 s) alone; users_db (2 s) beside it: at best 1 s shorter.
    r = report(
        [op("schema_db", 3.0), op("users_db", 2.0)],
        [phase("models", "parallel", ["schema_db", "users_db"], 3.0)],
        wall=3.0,
    )
    (line,) = recommendations(r)
    assert line.startswith("schema_db takes 3.00s, 100% of the 3.00s critical path")
    assert "up to 1.00s shorter" in line


def test_no_dominant_advice_when_the_heaviest_is_under_half_the_path() -> None:
    # a (1 s) -> b (1 s) -> c (1.2 s): the heaviest is 40% of the path.
    r = report(
        [op("a_db", 1.0), op("b_db", 1.0, depends=["a_db"]), op("c_db", 1.2, depends=["b_db"])],
        [phase("models", "sequential", ["a_db", "b_db", "c_db"], 3.2)],
        wall=3.2,
        workers=1,
    )
    assert recommendations(r) == []


def test_short_operations() -> None:
    r = report(
        [op("schema_db", 1.0), op("users_db", 1.0), op("tiny_db", 0.01)],
        [phase("models", "parallel", ["schema_db", "users_db", "tiny_db"], 1.0)],
        wall=1.01,
    )
    assert recommendations(r) == [
        "1 operation took under 0.05s (tiny_db): in-process they would skip the worker round trip; "
        "a plain session fixture would be cheaper"
    ]


def test_short_operations_are_listed_up_to_five() -> None:
    names = [f"tiny_{i}" for i in range(7)]
    r = report(
        [op("schema_db", 1.0), op("users_db", 1.0), *(op(name, 0.001) for name in names)],
        [phase("models", "parallel", ["schema_db", "users_db", *names], 1.0)],
        wall=1.0,
    )
    (line,) = recommendations(r)
    assert line.startswith(
        "7 operations took under 0.05s (tiny_0, tiny_1, tiny_2, tiny_3, tiny_4 and 2 more)"
    )


def test_failed_short_operations_are_not_called_short() -> None:
    r = report(
        [op("schema_db", 1.0), op("users_db", 1.0), op("broken_db", 0.01, status="failed")],
        [phase("models", "parallel", ["schema_db", "users_db", "broken_db"], 1.0)],
        wall=1.0,
    )
    assert recommendations(r) == []


def test_idle_workers() -> None:
    # 2 s of work on 8 workers in 1 s: busy 25%; 2 workers would do.
    r = report(
        [op("schema_db", 1.0), op("users_db", 1.0)],
        [phase("models", "parallel", ["schema_db", "users_db"], 1.0)],
        wall=1.0,
        workers=8,
    )
    assert recommendations(r) == [
        "workers were busy 25% of the time: --parexec-workers=2 would do (this run used 8)"
    ]


def test_idle_remote_workers_are_counted_in_tx_specs() -> None:
    # The same run on --parexec-tx workers: the count comes from the specs, not --parexec-workers.
    r = report(
        [op("schema_db", 1.0), op("users_db", 1.0)],
        [phase("models", "parallel", ["schema_db", "users_db"], 1.0)],
        wall=1.0,
        workers=8,
        tx=["socket=127.0.0.1:8888"] * 8,
    )
    assert recommendations(r) == [
        "workers were busy 25% of the time: 2 --parexec-tx specs would do (this run used 8)"
    ]


def test_no_idle_advice_when_fewer_workers_would_not_do() -> None:
    # 1.2 s of work on 2 workers in 1 s: busy 60%, at or above the threshold.
    r = report(
        [op("schema_db", 0.6), op("users_db", 0.6)],
        [phase("models", "parallel", ["schema_db", "users_db"], 1.0)],
        wall=1.0,
        workers=2,
    )
    assert recommendations(r) == []


def test_phase_sequential_because_of_one_dependency() -> None:
    # models: users_db waits for schema_db, so the phase could not overlap; app_config
    # (2 s) runs beside them, so the critical path has no dominant operation.
    r = report(
        [op("schema_db", 1.0), op("users_db", 1.0, depends=["schema_db"]), op("app_config", 2.0, "configs")],
        [
            phase("models", "sequential", ["schema_db", "users_db"], 2.0),
            phase("configs", "sequential", ["app_config"], 2.0),
        ],
        wall=2.0,
    )
    assert recommendations(r) == [
        "phase models ran sequentially (2.00s) because users_db depends on schema_db"
    ]


def test_no_phase_advice_when_two_dependencies_chain_the_phase() -> None:
    # Removing one dependency would not let the phase overlap: no single culprit.
    three = report(
        [
            op("a_db", 1.0),
            op("b_db", 1.0, depends=["a_db"]),
            op("c_db", 1.0, depends=["b_db"]),
            op("app_config", 3.0, "configs"),
        ],
        [
            phase("models", "sequential", ["a_db", "b_db", "c_db"], 3.0),
            phase("configs", "sequential", ["app_config"], 3.0),
        ],
        wall=3.0,
    )
    assert recommendations(three) == []


def test_all_rules_at_once_in_their_order() -> None:
    r = report(
        [
            op("schema_db", 3.0),
            op("users_db", 0.5, depends=["schema_db"]),
            op("tiny_config", 0.01, "configs"),
        ],
        [
            phase("models", "sequential", ["schema_db", "users_db"], 3.5),
            phase("configs", "sequential", ["tiny_config"], 0.01),
        ],
        wall=3.5,
        workers=4,
    )
    lines = recommendations(r)
    assert [line.split()[0] for line in lines] == ["schema_db", "1", "workers", "phase"]


# -- acceptance -----------------------------------------------------------------------


def test_summary_advice_lines_are_the_json_recommendations(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        textwrap.dedent(
            """
            from pytest_parexec import batchable

            @batchable
            def schema_db():
                return 1

            @batchable
            def app_config():
                return 2
            """
        )
    )
    pytester.makepyfile(test_it="def test_it(schema_db, app_config):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "parexec", "--parexec=parallel", "--parexec-report=report.json"
    )
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "report.json").read_text())
    advice = [line.removeprefix("advice: ") for line in result.outlines if line.startswith("advice: ")]
    assert advice == data["recommendations"]
    # The JSON holds what the rules say of the JSON's own numbers.
    assert data["recommendations"] == recommendations(data)
    # Two operations that return at once, in workers: too short to be worth a round trip.
    short = [o["name"] for o in data["operations"] if o["duration_s"] < SHORT_S]
    assert short, "a function that returns a constant took 50 ms or more"
    assert any(line.startswith(f"{len(short)} operation") and "under 0.05s" in line for line in advice)
