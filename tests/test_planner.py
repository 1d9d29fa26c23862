"""Unit and property tests for the pure planner: order, priorities, cycles, critical path."""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_parexec.operations import GROUPS
from pytest_parexec.planner import (
    GROUP_ORDER,
    Node,
    Plan,
    PlanError,
    auto_workers,
    build_plan,
    critical_path,
    find_cycle,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)

# -- strategies ---------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 10, min_nodes: int = 0) -> list[Node]:
    """A random DAG: node i may depend only on nodes < i.

    Names are a random permutation, and the nodes are handed over in a random
    order, so neither name order nor input order says anything about the graph.
    """
    n = draw(st.integers(min_nodes, max_nodes))
    names = draw(st.permutations([f"op{k:02d}" for k in range(n)]))
    durations = draw(st.sampled_from(["none", "all", "some"]))
    nodes = []
    for i, name in enumerate(names):
        # One bit per earlier node: cheap to draw, and shrinks towards no dependencies.
        mask = draw(st.integers(0, 2**i - 1))
        deps = [names[k] for k in range(i) if mask >> k & 1]
        if durations == "none":
            expected: float | None = None
        elif durations == "all":
            expected = draw(st.integers(0, 20).map(float))
        else:
            expected = draw(st.none() | st.floats(0, 50, allow_nan=False))
        nodes.append(Node(name, draw(st.sampled_from(GROUP_ORDER)), tuple(deps), expected))
    return draw(st.permutations(nodes))


def depends_of(nodes: Sequence[Node]) -> dict[str, tuple[str, ...]]:
    return {node.name: node.depends for node in nodes}


def ancestors(depends: Mapping[str, Sequence[str]], name: str) -> set[str]:
    """Everything ``name`` depends on, directly or not (brute force)."""
    seen: set[str] = set()
    stack = list(depends[name])
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen.add(dep)
            stack.extend(depends[dep])
    return seen


def expected_weights(nodes: Sequence[Node]) -> dict[str, float]:
    known = [n.expected_s for n in nodes if n.expected_s is not None]
    if not known:
        return {n.name: 1.0 for n in nodes}
    mean = sum(known) / len(known)
    return {n.name: n.expected_s if n.expected_s is not None else mean for n in nodes}


def all_chains(depends: Mapping[str, Sequence[str]], names: set[str]) -> list[list[str]]:
    """Every chain [a, b, ...] within ``names`` where each element depends on the one before."""
    dependents: dict[str, list[str]] = {n: [] for n in names}
    for name in names:
        for dep in depends.get(name, ()):
            if dep in names:
                dependents[dep].append(name)
    chains: list[list[str]] = []

    def extend(chain: list[str]) -> None:
        chains.append(chain)
        for child in dependents[chain[-1]]:
            extend([*chain, child])

    for name in names:
        extend([name])
    return chains


# -- order ----------------------------------------------------------------------


@PROPERTY
@given(dags())
def test_order_is_topological_and_complete(nodes: list[Node]) -> None:
    plan = build_plan(nodes)
    assert sorted(plan.order) == sorted(n.name for n in nodes)
    assert len(plan) == len(nodes)
    position = {name: i for i, name in enumerate(plan.order)}
    for node in nodes:
        for dep in node.depends:
            assert position[dep] < position[node.name], (dep, node.name, plan.order)
    # The same graph, seen from the other end; and no cycle to find in it.
    edges = {(dep, node.name) for node in nodes for dep in node.depends}
    assert {(parent, child) for parent, kids in plan.dependents.items() for child in kids} == edges
    assert find_cycle(depends_of(nodes)) is None


def test_empty_plan() -> None:
    plan = build_plan([])
    assert len(plan) == 0
    assert plan.order == ()
    assert plan.width == 0
    assert plan.ready((), ()) == []
    assert plan.teardown_order() == []


def test_group_order_matches_operations_groups() -> None:
    assert GROUP_ORDER == GROUPS == ("models", "logic", "configs", "other", "tests")


# -- priorities and the scheduler -----------------------------------------------------


def priority_key(plan: Plan, name: str) -> tuple[int, float, str]:
    """The documented rule, spelled out independently of Plan.priority."""
    return (GROUP_ORDER.index(plan.nodes[name].group), -plan.remaining[name], name)


@PROPERTY
@given(dags(min_nodes=1), st.data())
def test_priority_is_group_then_remaining_then_name(nodes: list[Node], data: st.DataObject) -> None:
    plan = build_plan(nodes)
    a = data.draw(st.sampled_from(nodes)).name
    b = data.draw(st.sampled_from(nodes)).name
    assert plan.priority(a) == priority_key(plan, a)
    assert (plan.priority(a) < plan.priority(b)) == (priority_key(plan, a) < priority_key(plan, b))


@PROPERTY
@given(dags(), st.integers(1, 4), st.data())
def test_simulated_scheduler_respects_dependencies_priority_and_workers(
    nodes: list[Node], workers: int, data: st.DataObject
) -> None:
    """A discrete-event simulation of a W-worker scheduler driven by Plan.ready."""
    plan = build_plan(nodes)
    duration = {n.name: data.draw(st.integers(1, 5), label=f"duration of {n.name}") for n in nodes}
    depends = depends_of(nodes)
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    done: set[str] = set()
    running: list[tuple[int, str]] = []  # heap of (end time, name)
    now = 0
    while len(done) < len(nodes):
        while running and running[0][0] == now:
            done.add(heapq.heappop(running)[1])
        while len(running) < workers:
            ready = plan.ready(done, start)
            # Exactly the not-started operations whose dependencies have all ended...
            eligible = {n for n in depends if n not in start and all(d in done for d in depends[n])}
            assert set(ready) == eligible
            assert len(ready) == len(eligible)
            # ...best first by group, then longest remaining path, then name.
            assert ready == sorted(eligible, key=lambda n: priority_key(plan, n))
            if not ready:
                break
            chosen = ready[0]
            assert all(end[d] <= now for d in depends[chosen])
            start[chosen] = now
            end[chosen] = now + duration[chosen]
            heapq.heappush(running, (end[chosen], chosen))
            assert len(running) <= workers
        assert running or len(done) == len(nodes), "the scheduler stalled"
        if running:
            now = running[0][0]
    assert set(start) == set(depends)
    for name, deps in depends.items():
        for dep in deps:
            assert end[dep] <= start[name]


def test_ready_prefers_earlier_group_over_longer_path() -> None:
    plan = build_plan(
        [
            Node("t", "tests"),
            Node("t2", "tests", ("t",)),
            Node("t3", "tests", ("t2",)),
            Node("m", "models"),
            Node("c", "configs"),
            Node("o", "other"),
            Node("l", "logic"),
        ]
    )
    assert plan.ready((), ()) == ["m", "l", "c", "o", "t"]
    assert plan.ready(["t"], ["m", "l"]) == ["c", "o", "t2"]


def test_ready_breaks_ties_by_remaining_then_name() -> None:
    plan = build_plan(
        [
            Node("b", "logic"),
            Node("a", "logic"),
            Node("long", "logic", expected_s=10.0),
            Node("after_b", "logic", ("b",)),
        ]
    )
    # long: 10; b: mean (10) + mean (10) = 20; a: 10 (mean); after_b: 10.
    assert plan.remaining == {"b": 20.0, "a": 10.0, "long": 10.0, "after_b": 10.0}
    assert plan.ready((), ()) == ["b", "a", "long"]


# -- remaining ---------------------------------------------------------------


@PROPERTY
@given(dags())
def test_remaining_is_own_weight_plus_longest_dependent(nodes: list[Node]) -> None:
    plan = build_plan(nodes)
    weight = expected_weights(nodes)
    for name in plan.nodes:
        longest = max((plan.remaining[c] for c in plan.dependents[name]), default=0.0)
        assert plan.remaining[name] == pytest.approx(weight[name] + longest)


@PROPERTY
@given(dags(max_nodes=7))
def test_remaining_is_longest_chain_from_the_operation(nodes: list[Node]) -> None:
    plan = build_plan(nodes)
    weight = expected_weights(nodes)
    chains = all_chains(depends_of(nodes), set(plan.nodes))
    for name in plan.nodes:
        best = max(sum(weight[n] for n in chain) for chain in chains if chain[0] == name)
        assert plan.remaining[name] == pytest.approx(best)


def test_remaining_counts_operations_without_durations() -> None:
    plan = build_plan([Node("a", "models"), Node("b", "logic", ("a",)), Node("c", "tests", ("b",))])
    assert plan.remaining == {"a": 3.0, "b": 2.0, "c": 1.0}


def test_unknown_durations_use_the_mean_of_known_ones() -> None:
    plan = build_plan([Node("a", "models", (), 2.0), Node("b", "logic", ("a",)), Node("c", "tests", (), 4.0)])
    assert plan.remaining == {"a": 5.0, "b": 3.0, "c": 4.0}


def test_deep_chain_does_not_hit_the_recursion_limit() -> None:
    n = 5000
    nodes = [Node(f"n{i}", "other", (f"n{i - 1}",) if i else ()) for i in range(n)]
    plan = build_plan(nodes)
    assert plan.order == tuple(f"n{i}" for i in range(n))
    assert plan.remaining["n0"] == n
    path, length = critical_path(depends_of(nodes), {f"n{i}": 1.0 for i in range(n)})
    assert path == [f"n{i}" for i in range(n)]
    assert length == n


# -- errors: cycles, unknown dependencies, duplicates ----------------------------------------


def assert_real_cycle(chain: list[str], depends: Mapping[str, Sequence[str]]) -> None:
    assert len(chain) >= 2
    assert chain[0] == chain[-1]
    for a, b in itertools.pairwise(chain):
        assert b in depends[a], f"{a} -> {b} is not an edge of {dict(depends)}"


@PROPERTY
@given(dags(min_nodes=1), st.data())
def test_a_back_edge_makes_a_cycle_error(nodes: list[Node], data: st.DataObject) -> None:
    depends = depends_of(nodes)
    below = data.draw(st.sampled_from(sorted(depends)), label="below")
    # ``top`` is ``below`` or something it depends on: making top depend on below closes a cycle.
    top = data.draw(st.sampled_from(sorted(ancestors(depends, below) | {below})), label="top")
    cyclic = [Node(n.name, n.group, (*n.depends, below), n.expected_s) if n.name == top else n for n in nodes]
    cyclic_depends = depends_of(cyclic)
    with pytest.raises(PlanError) as excinfo:
        build_plan(cyclic)
    message = str(excinfo.value)
    assert message.startswith("dependency cycle: ")
    assert_real_cycle(message.removeprefix("dependency cycle: ").split(" -> "), cyclic_depends)
    cycle = find_cycle(cyclic_depends)
    assert cycle is not None
    assert_real_cycle(cycle, cyclic_depends)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(PlanError, match=re.escape("dependency cycle: a -> a")):
        build_plan([Node("a", "models", ("a",))])


def test_cycle_message_example() -> None:
    nodes = [Node("a", "models", ("b",)), Node("b", "logic", ("c",)), Node("c", "tests", ("a",))]
    with pytest.raises(PlanError, match=re.escape("dependency cycle: a -> b -> c -> a")):
        build_plan(nodes)


def test_find_cycle_ignores_names_outside_the_graph() -> None:
    assert find_cycle({"a": ["outside"]}) is None


@PROPERTY
@given(dags(), st.data())
def test_unknown_dependency_names_both(nodes: list[Node], data: st.DataObject) -> None:
    who = Node("needy", data.draw(st.sampled_from(GROUP_ORDER)), ("ghost",))
    position = data.draw(st.integers(0, len(nodes)))
    with pytest.raises(PlanError) as excinfo:
        build_plan([*nodes[:position], who, *nodes[position:]])
    message = str(excinfo.value)
    assert "'needy'" in message
    assert "'ghost'" in message
    assert "not a batchable operation" in message


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(PlanError, match=re.escape("two operations are named 'a'")):
        build_plan([Node("a", "models"), Node("a", "logic")])


# -- descendants, teardown order, width, workers ---------------------------------------------


@PROPERTY
@given(dags(min_nodes=1), st.data())
def test_descendants_are_all_transitive_dependents_in_plan_order(
    nodes: list[Node], data: st.DataObject
) -> None:
    plan = build_plan(nodes)
    depends = depends_of(nodes)
    name = data.draw(st.sampled_from(sorted(depends)))
    expected = {n for n in depends if name in ancestors(depends, n)}
    found = plan.descendants(name)
    assert set(found) == expected
    assert len(found) == len(expected)
    assert found == [n for n in plan.order if n in expected]


@PROPERTY
@given(dags())
def test_teardown_order_puts_an_operation_after_its_dependents(nodes: list[Node]) -> None:
    plan = build_plan(nodes)
    order = plan.teardown_order()
    assert sorted(order) == sorted(plan.nodes)
    position = {name: i for i, name in enumerate(order)}
    for node in nodes:
        for dep in node.depends:
            assert position[node.name] < position[dep]


@PROPERTY
@given(dags())
def test_width_is_the_largest_level(nodes: list[Node]) -> None:
    plan = build_plan(nodes)
    depends = depends_of(nodes)
    if not nodes:
        assert plan.width == 0
        return
    assert 1 <= plan.width <= len(nodes)
    # Brute force: the level of an operation is its longest chain of dependencies.
    level = {
        n: max((len(c) - 1 for c in all_chains(depends, set(depends)) if c[-1] == n), default=0)
        for n in depends
    }
    counts = [list(level.values()).count(v) for v in set(level.values())]
    assert plan.width == max(counts)


def test_width_examples() -> None:
    assert build_plan([Node(f"n{i}", "other") for i in range(5)]).width == 5
    chain = [Node(f"n{i}", "other", (f"n{i - 1}",) if i else ()) for i in range(5)]
    assert build_plan(chain).width == 1


@PROPERTY
@given(st.integers(1, 10_000), st.integers(1, 512))
def test_auto_workers_bounds(width: int, cpus: int) -> None:
    workers = auto_workers(width, cpus)
    assert 1 <= workers <= 2 * cpus
    assert workers <= width
    assert workers == min(width, 2 * cpus)


@pytest.mark.parametrize(("width", "cpus", "expected"), [(0, 4, 1), (3, 0, 2), (0, 0, 1), (100, 8, 16)])
def test_auto_workers_degenerate_inputs(width: int, cpus: int, expected: int) -> None:
    assert auto_workers(width, cpus) == expected


# -- critical path ---------------------------------------------------------------------------


@PROPERTY
@given(dags(max_nodes=7), st.data())
def test_critical_path_is_a_longest_real_chain(nodes: list[Node], data: st.DataObject) -> None:
    depends = depends_of(nodes)
    # Operations that never ran have no duration: the path must avoid them.
    ran = data.draw(st.sets(st.sampled_from(sorted(depends))) if depends else st.just(set()))
    durations = {name: data.draw(st.floats(0, 100), label=f"duration of {name}") for name in sorted(ran)}
    path, length = critical_path(depends, durations)
    if not durations:
        assert (path, length) == ([], 0.0)
        return
    assert path
    assert set(path) <= set(durations)
    for a, b in itertools.pairwise(path):
        assert a in depends[b], f"{b} does not depend on {a}"
    assert length == pytest.approx(sum(durations[n] for n in path))
    for chain in all_chains(depends, set(durations)):
        assert length >= sum(durations[n] for n in chain) - 1e-9


def test_critical_path_example() -> None:
    depends = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    path, length = critical_path(depends, {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.0})
    assert (path, length) == (["a", "b", "d"], 7.0)
