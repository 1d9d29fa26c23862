"""``--parexec=auto``: parallel only where it can pay, and the simulation behind it.

Unit tests for :func:`choose_mode` and :func:`simulate` on small plans whose
makespans are computed by hand; acceptance tests run pytest in a subprocess and
look at the JSON report and at the process each operation ran in.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from _support import pytester_with_only_parexec  # noqa: F401 - the pytester fixture

from pytest_parexec.planner import Node, Plan, build_plan, choose_mode, simulate


def plan_of(*nodes: Node) -> Plan:
    return build_plan(nodes)


def independent(*names: str, group: str = "models") -> Plan:
    return plan_of(*(Node(name, group) for name in names))


def chain(*names: str) -> Plan:
    return plan_of(*(Node(name, "models", (names[i - 1],) if i else ()) for i, name in enumerate(names)))


# -- choose_mode -------------------------------------------------------------------


def test_a_single_operation_runs_in_process() -> None:
    mode, reason = choose_mode(independent("schema_db"), {}, workers=4, start_cost_s=None)
    assert mode == "sequential"
    assert reason == "a single operation: nothing can run beside it"


def test_a_single_operation_runs_in_process_even_when_it_is_long() -> None:
    mode, _ = choose_mode(independent("schema_db"), {"schema_db": 600.0}, workers=4, start_cost_s=0.1)
    assert mode == "sequential"


def test_a_chain_runs_in_process() -> None:
    mode, reason = choose_mode(chain("schema_db", "seed_db", "api_service"), {}, workers=4, start_cost_s=None)
    assert mode == "sequential"
    assert reason == "the 3 operations form a chain: none can run beside another"


def test_a_chain_hidden_in_a_diamond_without_width_is_not_a_chain() -> None:
    # a -> (b, c) -> d: b and c can overlap.
    plan = plan_of(
        Node("a", "models"),
        Node("b", "models", ("a",)),
        Node("c", "models", ("a",)),
        Node("d", "logic", ("b", "c")),
    )
    assert choose_mode(plan, {}, workers=2, start_cost_s=None)[0] == "parallel"


def test_one_worker_runs_in_process() -> None:
    mode, reason = choose_mode(independent("schema_db", "users_db"), {}, workers=1, start_cost_s=None)
    assert mode == "sequential"
    assert reason == "one worker: operations would run one at a time anyway"


def test_expected_saving_below_the_start_cost_runs_in_process() -> None:
    # Alone: 1 + 1 = 2 s; on two workers 1 s; saving 1 s < 1.5 s to start workers.
    expected = {"schema_db": 1.0, "users_db": 1.0}
    mode, reason = choose_mode(independent("schema_db", "users_db"), expected, workers=2, start_cost_s=1.5)
    assert mode == "sequential"
    assert reason == "expected saving 1.00s is less than the 1.50s it costs to start workers"


def test_expected_saving_above_the_start_cost_runs_in_parallel() -> None:
    expected = {"schema_db": 1.0, "users_db": 1.0}
    mode, reason = choose_mode(independent("schema_db", "users_db"), expected, workers=2, start_cost_s=0.5)
    assert mode == "parallel"
    assert reason == "2 operations, up to 2 at once: expected saving 1.00s on 2 workers"


def test_saving_equal_to_the_start_cost_runs_in_parallel() -> None:
    expected = {"schema_db": 1.0, "users_db": 1.0}
    assert choose_mode(independent("schema_db", "users_db"), expected, 2, start_cost_s=1.0)[0] == "parallel"


def test_without_learned_durations_parallel_is_assumed_to_pay() -> None:
    mode, reason = choose_mode(independent("schema_db", "users_db", "app_config"), {}, 3, start_cost_s=99.0)
    assert mode == "parallel"
    assert reason == "3 operations, up to 3 at once"


def test_a_start_cost_never_measured_does_not_force_in_process() -> None:
    expected = {"schema_db": 0.001, "users_db": 0.001}
    assert choose_mode(independent("schema_db", "users_db"), expected, 2, start_cost_s=None)[0] == "parallel"


def test_one_operation_without_a_learned_duration_keeps_parallel() -> None:
    # A new operation may be long: do not decide on partial knowledge.
    expected = {"schema_db": 0.001}
    assert choose_mode(independent("schema_db", "users_db"), expected, 2, start_cost_s=5.0)[0] == "parallel"


def test_saving_is_computed_on_the_given_number_of_workers() -> None:
    # Four 1 s operations: on 2 workers 2 s (saving 2 s); on 4 workers 1 s (saving 3 s).
    plan = independent("a_db", "b_db", "c_db", "d_db")
    expected = dict.fromkeys(plan.nodes, 1.0)
    assert choose_mode(plan, expected, workers=2, start_cost_s=2.5)[0] == "sequential"
    assert choose_mode(plan, expected, workers=4, start_cost_s=2.5) == (
        "parallel",
        "4 operations, up to 4 at once: expected saving 3.00s on 4 workers",
    )


# -- simulate ----------------------------------------------------------------------


def test_simulate_independent_operations() -> None:
    plan = independent("a", "b")
    durations = {"a": 1.0, "b": 2.0}
    assert simulate(plan, durations, workers=2) == 2.0
    assert simulate(plan, durations, workers=1) == 3.0
    assert simulate(plan, durations, workers=8) == 2.0


def test_simulate_a_chain_is_the_sum_whatever_the_workers() -> None:
    plan = chain("a", "b", "c")
    durations = {"a": 1.0, "b": 2.0, "c": 0.5}
    for workers in (1, 2, 3):
        assert simulate(plan, durations, workers) == 3.5


def test_simulate_a_diamond() -> None:
    # a(1) -> b(2), c(3) -> d(1): two workers 1 + 3 + 1 = 5; one worker 1 + 2 + 3 + 1 = 7.
    plan = plan_of(
        Node("a", "models"),
        Node("b", "logic", ("a",)),
        Node("c", "logic", ("a",)),
        Node("d", "configs", ("b", "c")),
    )
    durations = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 1.0}
    assert simulate(plan, durations, workers=2) == 5.0
    assert simulate(plan, durations, workers=1) == 7.0


def test_simulate_follows_the_priorities_of_learned_durations() -> None:
    # Two workers, z_long (3 s) and two 1 s operations. Longest first: z_long on one
    # worker, both short ones on the other: 3 s. Names first would start the short
    # ones together and z_long at 1 s: 4 s.
    durations = {"a_short": 1.0, "b_short": 1.0, "z_long": 3.0}
    learned = plan_of(*(Node(name, "other", expected_s=s) for name, s in durations.items()))
    unknown = plan_of(*(Node(name, "other") for name in durations))
    assert simulate(learned, durations, workers=2) == 3.0
    assert simulate(unknown, durations, workers=2) == 4.0


def test_simulate_prefers_the_longer_remaining_path_over_the_longer_operation() -> None:
    # head (1 s) leads to tail (5 s); big and mid (2 s each) stand alone; two workers.
    # head first (6 s remaining): head 0-1 and big 0-2, tail 1-6, mid 2-4: 6 s.
    # Longest operation first would start big and mid, then head 2-3, tail 3-8: 8 s.
    nodes = [
        Node("head", "other", expected_s=1.0),
        Node("tail", "other", ("head",), expected_s=5.0),
        Node("big", "other", expected_s=2.0),
        Node("mid", "other", expected_s=2.0),
    ]
    plan = plan_of(*nodes)
    assert plan.order[0] == "head"  # remaining 6 s beats 2 s
    durations = {n.name: n.expected_s or 0.0 for n in nodes}
    assert simulate(plan, durations, workers=2) == 6.0


def test_simulate_missing_durations_take_no_time() -> None:
    plan = chain("a", "b")
    assert simulate(plan, {"b": 2.0}, workers=1) == 2.0
    assert simulate(plan, {}, workers=1) == 0.0


def test_simulate_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        simulate(independent("a"), {"a": 1.0}, workers=0)


def test_learned_durations_set_the_plan_order() -> None:
    # The scheduler's priority (same group): longest expected remaining path first.
    plan = plan_of(
        Node("a_db", "models", expected_s=1.0),
        Node("b_db", "models", expected_s=5.0),
        Node("c_db", "models", expected_s=3.0),
    )
    assert list(plan.order) == ["b_db", "c_db", "a_db"]
    assert plan.ready(done=(), started=()) == ["b_db", "c_db", "a_db"]


def test_without_learned_durations_ties_are_broken_by_name() -> None:
    assert list(independent("z_slow", "a_quick", group="other").order) == ["a_quick", "z_slow"]


# -- acceptance ----------------------------------------------------------------------

PID_CONFTEST = """
    import os

    from pytest_parexec import batchable

    @batchable
    def schema_db():
        return os.getpid()

    @batchable
    def users_db():
        return os.getpid()

    @batchable
    def seed_db(schema_db):
        return os.getpid()
"""


def make_suite(pytester: pytest.Pytester, uses: str, where: str) -> None:
    """A test that needs ``uses`` (comma-separated) and checks each ran ``where`` ("here"/"elsewhere")."""
    pytester.makeconftest(textwrap.dedent(PID_CONFTEST))
    compare = "==" if where == "here" else "!="
    pytester.makepyfile(
        test_where=f"""
        import os

        def test_where({uses}):
            for pid in ({uses},):
                assert pid {compare} os.getpid()
        """
    )


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    result = pytester.runpytest_subprocess("-p", "parexec", "--parexec-report=report.json", *args)
    report: dict[str, Any] = json.loads((pytester.path / "report.json").read_text())
    return result, report


def test_auto_runs_a_single_operation_in_the_pytest_process(pytester: pytest.Pytester) -> None:
    make_suite(pytester, "schema_db", "here")
    result, report = run(pytester)
    result.assert_outcomes(passed=1)
    assert report["mode"] == "sequential"
    assert report["mode_reason"] == "a single operation: nothing can run beside it"
    assert report["workers"] == 0
    result.stdout.fnmatch_lines(
        ["1 operation in the pytest process (sequential mode: a single operation: nothing can run beside it)"]
    )


def test_auto_is_the_default_and_runs_independent_operations_in_workers(pytester: pytest.Pytester) -> None:
    make_suite(pytester, "schema_db, users_db", "elsewhere")
    result, report = run(pytester)
    result.assert_outcomes(passed=1)
    assert report["mode"] == "parallel"
    assert report["mode_reason"] == "2 operations, up to 2 at once"
    assert report["workers"] >= 1
    result.stdout.fnmatch_lines(["2 operations on * worker* (parallel mode: 2 operations, up to 2 at once)"])


def test_auto_runs_a_chain_in_the_pytest_process(pytester: pytest.Pytester) -> None:
    make_suite(pytester, "seed_db", "here")
    result, report = run(pytester, "--parexec=auto")
    result.assert_outcomes(passed=1)
    assert report["mode"] == "sequential"
    assert report["mode_reason"] == "the 2 operations form a chain: none can run beside another"


def test_auto_with_one_worker_runs_in_the_pytest_process(pytester: pytest.Pytester) -> None:
    make_suite(pytester, "schema_db, users_db", "here")
    result, report = run(pytester, "--parexec-workers=1")
    result.assert_outcomes(passed=1)
    assert (report["mode"], report["mode_reason"]) == (
        "sequential",
        "one worker: operations would run one at a time anyway",
    )


def test_forced_parallel_runs_a_single_operation_in_a_worker(pytester: pytest.Pytester) -> None:
    make_suite(pytester, "schema_db", "elsewhere")
    result, report = run(pytester, "--parexec=parallel")
    result.assert_outcomes(passed=1)
    assert (report["mode"], report["mode_reason"]) == ("parallel", "--parexec=parallel")
    assert report["operations"][0]["worker"].startswith("gw")


def test_forced_sequential_runs_independent_operations_in_process(pytester: pytest.Pytester) -> None:
    make_suite(pytester, "schema_db, users_db", "here")
    result, report = run(pytester, "--parexec=sequential")
    result.assert_outcomes(passed=1)
    assert (report["mode"], report["mode_reason"]) == ("sequential", "--parexec=sequential")
    assert {op["worker"] for op in report["operations"]} == {"main"}


def test_ini_parexec_mode_sets_the_default(pytester: pytest.Pytester) -> None:
    make_suite(pytester, "schema_db", "elsewhere")
    pytester.makeini("[pytest]\nparexec_mode = parallel\n")
    result, report = run(pytester)
    result.assert_outcomes(passed=1)
    assert report["mode"] == "parallel"

    # The command line wins over the ini file.
    make_suite(pytester, "schema_db", "here")
    result, report = run(pytester, "--parexec=auto")
    result.assert_outcomes(passed=1)
    assert report["mode"] == "sequential"
