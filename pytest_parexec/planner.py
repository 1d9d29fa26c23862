"""The plan: dependency graph, cycle errors, priorities and the critical path.

Pure logic over names: no processes, no pytest, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, final

__all__ = [
    "Node",
    "Plan",
    "PlanError",
    "auto_workers",
    "build_plan",
    "choose_mode",
    "critical_path",
    "find_cycle",
    "simulate",
]

#: Scheduling order of groups: an earlier group's ready operations go first.
GROUP_ORDER: Final = ("models", "logic", "configs", "other", "tests")


class PlanError(Exception):
    """A plan that cannot run: a cycle, or a dependency that is not an operation."""


@final
@dataclasses.dataclass(frozen=True)
class Node:
    """What the planner needs to know of one operation."""

    name: str
    group: str
    depends: tuple[str, ...] = ()
    #: Learned duration in seconds, or None when unknown.
    expected_s: float | None = None


@final
@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated dependency graph with a priority for every operation."""

    nodes: Mapping[str, Node]
    dependents: Mapping[str, tuple[str, ...]]
    #: Expected length of the longest path from the operation to the end of the
    #: graph, itself included: seconds when durations are known, else operations.
    remaining: Mapping[str, float]
    #: A topological order that follows the scheduler's priorities.
    order: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.nodes)

    def priority(self, name: str) -> tuple[int, float, str]:
        """Sort key among ready operations: earlier group, then longer remaining path."""
        node = self.nodes[name]
        return (group_rank(node.group), -self.remaining[name], name)

    def ready(self, done: Iterable[str], started: Iterable[str]) -> list[str]:
        """Operations whose dependencies are all done and that have not started, best first."""
        finished = set(done)
        taken = set(started) | finished
        candidates = [
            name
            for name, node in self.nodes.items()
            if name not in taken and all(dep in finished for dep in node.depends)
        ]
        return sorted(candidates, key=self.priority)

    def descendants(self, name: str) -> list[str]:
        """Every operation that depends on ``name``, directly or not, in plan order."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            for child in self.dependents[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return [n for n in self.order if n in seen]

    @property
    def width(self) -> int:
        """How many operations can run at once, estimated as the largest level of the graph."""
        level: dict[str, int] = {}
        for name in self.order:
            deps = self.nodes[name].depends
            level[name] = 1 + max((level[d] for d in deps), default=-1)
        counts: dict[int, int] = {}
        for value in level.values():
            counts[value] = counts.get(value, 0) + 1
        return max(counts.values(), default=0)

    def teardown_order(self) -> list[str]:
        """Reverse dependency order: an operation after everything that depends on it."""
        return list(reversed(self.order))


def auto_workers(width: int, cpus: int) -> int:
    """``--parexec-workers=auto``: as many workers as operations can run at once,
    at most twice the CPU count (setup is mostly waiting on I/O and subprocesses)."""
    return max(1, min(width, 2 * max(1, cpus)))


def group_rank(group: str) -> int:
    try:
        return GROUP_ORDER.index(group)
    except ValueError:
        return len(GROUP_ORDER)


def find_cycle(depends: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return a cycle as ``[a, b, c, a]`` (a depends on b ...), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(depends, white)
    for root in sorted(depends):
        if colour[root] != white:
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            name, index = stack.pop()
            if index == 0:
                colour[name] = grey
                path.append(name)
            deps = [d for d in depends[name] if d in depends]
            if index < len(deps):
                stack.append((name, index + 1))
                child = deps[index]
                if colour[child] == grey:
                    return [*path[path.index(child) :], child]
                if colour[child] == white:
                    stack.append((child, 0))
            else:
                colour[name] = black
                path.pop()
    return None


def _expected_weights(nodes: Mapping[str, Node]) -> dict[str, float]:
    known = [n.expected_s for n in nodes.values() if n.expected_s is not None]
    if not known:
        return dict.fromkeys(nodes, 1.0)
    fallback = sum(known) / len(known)
    return {
        name: node.expected_s if node.expected_s is not None else fallback for name, node in nodes.items()
    }


def build_plan(nodes: Iterable[Node]) -> Plan:
    """Validate the graph and compute priorities; raise PlanError on a bad graph."""
    by_name: dict[str, Node] = {}
    for node in nodes:
        if node.name in by_name:
            raise PlanError(f"two operations are named {node.name!r}")
        by_name[node.name] = node
    for node in by_name.values():
        for dep in node.depends:
            if dep not in by_name:
                raise PlanError(
                    f"operation {node.name!r} depends on {dep!r}, which is not a batchable operation"
                )
    cycle = find_cycle({name: node.depends for name, node in by_name.items()})
    if cycle is not None:
        raise PlanError("dependency cycle: " + " -> ".join(cycle))

    dependents: dict[str, list[str]] = {name: [] for name in by_name}
    for node in by_name.values():
        for dep in node.depends:
            dependents[dep].append(node.name)

    weights = _expected_weights(by_name)
    remaining: dict[str, float] = {}

    def visit(name: str) -> float:
        # Iterative post-order: graphs may be deeper than the recursion limit.
        stack = [name]
        while stack:
            top = stack[-1]
            pending = [c for c in dependents[top] if c not in remaining]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if top not in remaining:
                remaining[top] = weights[top] + max((remaining[c] for c in dependents[top]), default=0.0)
        return remaining[name]

    for name in by_name:
        visit(name)

    # Kahn's algorithm, always taking the best-priority ready operation.
    def key(name: str) -> tuple[int, float, str]:
        return (group_rank(by_name[name].group), -remaining[name], name)

    indegree = {name: len(node.depends) for name, node in by_name.items()}
    ready = sorted((n for n, d in indegree.items() if d == 0), key=key)
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for child in dependents[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
        ready.sort(key=key)

    return Plan(
        nodes=by_name,
        dependents={name: tuple(children) for name, children in dependents.items()},
        remaining=remaining,
        order=tuple(order),
    )


def critical_path(
    depends: Mapping[str, Sequence[str]], durations: Mapping[str, float]
) -> tuple[list[str], float]:
    """The chain of dependencies with the largest total duration, and that total."""
    best: dict[str, tuple[float, str | None]] = {}

    def length(name: str) -> float:
        stack = [name]
        while stack:
            top = stack[-1]
            pending = [d for d in depends.get(top, ()) if d in durations and d not in best]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if top in best:
                continue
            parent: str | None = None
            longest = 0.0
            for dep in depends.get(top, ()):
                if dep in best and best[dep][0] > longest:
                    longest, parent = best[dep][0], dep
            best[top] = (durations[top] + longest, parent)
        return best[name][0]

    if not durations:
        return [], 0.0
    end = max(sorted(durations), key=length)
    path: list[str] = []
    cursor: str | None = end
    while cursor is not None:
        path.append(cursor)
        cursor = best[cursor][1]
    return list(reversed(path)), best[end][0]


def simulate(plan: Plan, durations: Mapping[str, float], workers: int) -> float:
    """The makespan of ``plan`` on ``workers`` workers under the scheduler's priorities.

    A list scheduler, like the executor: whenever a worker is free, the best ready
    operation starts. Operations missing from ``durations`` take no time.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    now = 0.0
    running: list[tuple[float, str]] = []  # (end time, name)
    done: set[str] = set()
    started: set[str] = set()
    while len(done) < len(plan):
        for name in plan.ready(done, started):
            if len(running) >= workers:
                break
            started.add(name)
            running.append((now + durations.get(name, 0.0), name))
        running.sort()
        now, name = running.pop(0)
        done.add(name)
        while running and running[0][0] <= now:
            done.add(running.pop(0)[1])
    return now


def choose_mode(
    plan: Plan, expected: Mapping[str, float], workers: int, start_cost_s: float | None
) -> tuple[str, str]:
    """``--parexec=auto``: ``(mode, reason)``, parallel only where it can pay.

    ``expected`` holds learned durations; ``start_cost_s`` the measured cost of
    starting workers (None when never measured).
    """
    count = len(plan)
    if count <= 1:
        return "sequential", "a single operation: nothing can run beside it"
    if plan.width <= 1:
        return "sequential", f"the {count} operations form a chain: none can run beside another"
    if workers <= 1:
        return "sequential", "one worker: operations would run one at a time anyway"
    if start_cost_s is not None and all(name in expected for name in plan.nodes):
        total = sum(expected[name] for name in plan.nodes)
        saving = total - simulate(plan, expected, workers)
        if saving < start_cost_s:
            return "sequential", (
                f"expected saving {saving:.2f}s is less than the {start_cost_s:.2f}s "
                "it costs to start workers"
            )
        return "parallel", (
            f"{count} operations, up to {plan.width} at once: expected saving {saving:.2f}s "
            f"on {workers} workers"
        )
    return "parallel", f"{count} operations, up to {plan.width} at once"
