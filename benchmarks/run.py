"""Measure pytest-parexec on generated test suites and print a table.

Each suite is written twice into a temporary directory: once with plain
``@pytest.fixture(scope="session")`` fixtures (the baseline: what users run today,
one fixture after another) and once with ``@batchable``. Both run as pytest
subprocesses; the script times each whole run and reads ``setup_s`` and the
operation timings from ``--parexec-report``. See benchmarks/README.md.

Only the standard library and the installed package are needed; nothing goes to
the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, final

#: Suites whose setup must stay within this ratio of their lower bound (the issues' targets).
TARGETS: Final = {"wide": 1.3, "priority": 1.15}
#: The lower bound on the number of runs per variant of the no-batchable suite.
OVERHEAD_MIN_REPEAT: Final = 10
#: The sweep's worker settings, in the spelling of --parexec-workers.
SWEEP_WORKERS: Final = ("1", "2", "4", "8", "auto")
#: Seconds of pure-Python arithmetic per operation of the CPU-bound sweep suite.
CPU_OP_S: Final = 0.5
#: A pytest run that takes longer than this is a hang: it is killed and reported.
RUN_TIMEOUT_S: Final = 300.0
REPO: Final = Path(__file__).resolve().parent.parent

Kind = Literal["sleep", "cpu"]
Variant = Literal["baseline", "parexec"]


class BenchmarkError(Exception):
    """A pytest run that failed or hung: the suite's row shows this instead of numbers."""


# -- suites -------------------------------------------------------------------------------


@final
@dataclasses.dataclass(frozen=True)
class Op:
    """One setup operation: how long it works and which operations it needs."""

    name: str
    seconds: float
    depends: tuple[str, ...] = ()


@final
@dataclasses.dataclass(frozen=True)
class Suite:
    """A dependency graph of operations, listed in a topological order."""

    name: str
    description: str
    ops: tuple[Op, ...]
    #: The --parexec-workers value the suite runs with: a number or "auto".
    workers: str = "auto"
    #: "sleep" operations wait (I/O-like); "cpu" operations compute in Python.
    kind: Kind = "sleep"

    @property
    def work_s(self) -> float:
        return sum(op.seconds for op in self.ops)

    @property
    def critical_path_s(self) -> float:
        finish: dict[str, float] = {}
        for op in self.ops:
            finish[op.name] = op.seconds + max((finish[d] for d in op.depends), default=0.0)
        return max(finish.values(), default=0.0)

    @property
    def width(self) -> int:
        """The largest number of operations at the same depth of the graph."""
        depth: dict[str, int] = {}
        for op in self.ops:
            depth[op.name] = 1 + max((depth[d] for d in op.depends), default=-1)
        return max(list(depth.values()).count(level) for level in set(depth.values()))

    def lower_bound(self, workers: int, cpus: int) -> float:
        """No schedule on ``workers`` workers can finish sooner than this.

        Sleeping operations overlap on any number of cores; computing ones use at
        most one core each, so at most ``cpus`` of them progress at once. ``workers``
        0 (the plugin chose to run in-process) counts as the graph's width: the
        bound stays what parallel execution could reach.
        """
        lanes = workers or self.width
        if self.kind == "cpu":
            lanes = min(lanes, cpus)
        return max(self.critical_path_s, self.work_s / max(1, lanes))


def wide_suite(name: str = "wide", kind: Kind = "sleep", seconds: float = 1.0) -> Suite:
    ops = tuple(Op(f"op{i}", seconds) for i in range(8))
    what = "sleeping" if kind == "sleep" else "computing"
    return Suite(name, f"8 independent operations, each {what} {seconds:g} s", ops, workers="8", kind=kind)


def chain_suite() -> Suite:
    ops = tuple(Op(f"op{i}", 0.5, (f"op{i - 1}",) if i else ()) for i in range(4))
    return Suite("chain", "4 operations of 0.5 s, each needing the previous one", ops)


def diamond_suite() -> Suite:
    ops = (
        Op("a", 0.5),
        Op("b", 0.5, ("a",)),
        Op("c", 0.5, ("a",)),
        Op("d", 0.5, ("a",)),
        Op("e", 0.5, ("b", "c", "d")),
    )
    return Suite("diamond", "a -> (b, c, d) -> e, each 0.5 s", ops)


def layered_suite(layers: int = 4, per_layer: int = 4, seed: int = 20240501) -> Suite:
    """Random sleeps of 0.2-0.8 s; each operation needs 1-2 of the previous layer."""
    rng = random.Random(seed)
    ops: list[Op] = []
    previous: list[str] = []
    for layer in range(layers):
        current = [f"layer{layer}_op{i}" for i in range(per_layer)]
        for name in current:
            depends = tuple(sorted(rng.sample(previous, rng.randint(1, 2)))) if previous else ()
            ops.append(Op(name, round(rng.uniform(0.2, 0.8), 2), depends))
        previous = current
    description = (
        f"{layers * per_layer} operations in {layers} layers (seed {seed}), 0.2-0.8 s each, "
        "each needing 1-2 of the previous layer"
    )
    return Suite("layered", description, tuple(ops))


def priority_suite() -> Suite:
    """Where the order of ready operations matters: a chain of three 0.8 s operations
    beside four independent 0.6 s ones whose names sort first, on 2 workers. The
    optimum is 2.4 s (the chain starts at once); first come, first served by name
    starts the four short ones first and takes 3.6 s."""
    short = tuple(Op(f"aa_{i}", 0.6) for i in range(4))
    chain = tuple(Op(f"zz_{i}", 0.8, (f"zz_{i - 1}",) if i else ()) for i in range(3))
    return Suite(
        "priority",
        "a chain of three 0.8 s operations beside four 0.6 s ones named to sort first, 2 workers",
        short + chain,
        workers="2",
    )


#: Schedules that ignore priorities would take this long (first come, first served by name).
FCFS_S: Final = {"priority": 3.6}


def main_suites() -> list[Suite]:
    return [wide_suite(), chain_suite(), diamond_suite(), layered_suite(), priority_suite()]


# -- writing suites to disk ---------------------------------------------------------------------

CPU_HELPER: Final = '''

def _spin(loops: int) -> int:
    """Pure-Python arithmetic: holds the GIL, like real CPU-bound setup."""
    total = 0
    for i in range(loops):
        total = (total + i * i) % 1000003
    return total
'''


def _spin(loops: int) -> int:
    # Must stay identical to CPU_HELPER: it calibrates the loop count.
    total = 0
    for i in range(loops):
        total = (total + i * i) % 1000003
    return total


def calibrate_cpu_loops(seconds: float) -> int:
    """How many _spin loops take ``seconds`` of CPU time here.

    CPU time, not wall time, and the best of a few tries: on a shared machine the
    wall time of a loop grows with other people's load, its CPU time much less.
    """
    probe = 500_000
    best = min(_cpu_time(lambda: _spin(probe)) for _ in range(5))
    return max(1, int(probe * seconds / best))


def _cpu_time(action: Callable[[], object]) -> float:
    start = time.process_time()
    action()
    return time.process_time() - start


def conftest_source(suite: Suite, variant: Variant, cpu_loops: int) -> str:
    """The suite's operations, as plain session fixtures or as @batchable ones."""
    if variant == "baseline":
        header = "import pytest\n"
        decorator = '@pytest.fixture(scope="session")'
    else:
        header = "from pytest_parexec import batchable\n"
        decorator = "@batchable"
    parts = [f'"""Generated by benchmarks/run.py: suite {suite.name!r}, {variant}."""\n']
    parts.append("from __future__ import annotations\n\nimport time\n\n" + header)
    if suite.kind == "cpu":
        parts.append(CPU_HELPER)
    for op in suite.ops:
        work = f"time.sleep({op.seconds!r})" if suite.kind == "sleep" else f"_spin({cpu_loops})"
        parts.append(
            f"\n\n{decorator}\ndef {op.name}({', '.join(op.depends)}) -> str:\n"
            f"    {work}\n    return {op.name!r}\n"
        )
    return "".join(parts)


def tests_source(suite: Suite) -> str:
    """One test per operation, in the suite's order."""
    parts = [f'"""Generated by benchmarks/run.py: suite {suite.name!r}."""\n']
    for op in suite.ops:
        parts.append(
            f"\n\ndef test_{op.name}({op.name}: str) -> None:\n    assert {op.name} == {op.name!r}\n"
        )
    return "".join(parts)


def write_suite(suite: Suite, root: Path, cpu_loops: int) -> dict[Variant, Path]:
    """Write both variants under ``root/suite.name``; return their directories."""
    directories: dict[Variant, Path] = {}
    variants: tuple[Variant, ...] = ("baseline", "parexec")
    for variant in variants:
        directory = root / suite.name / variant
        directory.mkdir(parents=True)
        # An ini file pins the rootdir, so no configuration above the temp dir applies.
        (directory / "pytest.ini").write_text("[pytest]\n")
        (directory / "conftest.py").write_text(conftest_source(suite, variant, cpu_loops))
        (directory / "test_suite.py").write_text(tests_source(suite))
        directories[variant] = directory
    return directories


def write_plain_suite(root: Path, files: int = 10, tests_per_file: int = 30) -> Path:
    """About 300 trivial tests and a few ordinary session fixtures, no @batchable."""
    directory = root / "no-batchable"
    directory.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "conftest.py").write_text(
        textwrap.dedent(
            '''\
            """Generated by benchmarks/run.py: ordinary session fixtures only."""

            from __future__ import annotations

            import pytest


            @pytest.fixture(scope="session")
            def settings() -> dict[str, str]:
                return {"name": "bench", "mode": "test"}


            @pytest.fixture(scope="session")
            def registry(settings: dict[str, str]) -> dict[str, int]:
                return {key: len(value) for key, value in settings.items()}


            @pytest.fixture(scope="session")
            def numbers() -> list[int]:
                return list(range(100))
            '''
        )
    )
    fixtures = ("settings", "registry", "numbers")
    for number in range(files):
        parts = [f'"""Generated by benchmarks/run.py: trivial tests, file {number}."""\n']
        for index in range(tests_per_file):
            if index % 2:
                fixture = fixtures[index % len(fixtures)]
                parts.append(f"\n\ndef test_{index}({fixture}: object) -> None:\n    assert {fixture}\n")
            else:
                parts.append(f"\n\ndef test_{index}() -> None:\n    assert {index} + 1 == {index + 1}\n")
        (directory / f"test_plain_{number}.py").write_text("".join(parts))
    return directory


# -- running pytest -------------------------------------------------------------------------------


@final
@dataclasses.dataclass(frozen=True)
class Run:
    """One pytest subprocess: its whole wall time and, for parexec runs, the JSON report."""

    wall_s: float
    report: dict[str, Any] | None


def export_package(rev: str, root: Path) -> Path:
    """Extract ``pytest_parexec/`` as of git revision ``rev`` under ``root``; return the directory.

    The package is installed editable from a working tree others may be editing:
    a snapshot of a commit makes a measurement reproducible.
    """
    target = root / "_package"
    target.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "pytest_parexec"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise BenchmarkError(f"--rev {rev}: git archive failed: {exc.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def pytest_environment(root: Path, bytecode_cache: bool, package: Path | None) -> dict[str, str]:
    """The environment of every pytest run: only the plugins ``-p`` names load.

    With ``bytecode_cache``, compiled modules go to a private directory under
    ``root`` (never into the repository), as a user's ``__pycache__`` would, even
    where the environment sets PYTHONDONTWRITEBYTECODE; the package is installed
    editable, so without a cache every process compiles pytest-parexec again.
    ``package`` (a directory holding ``pytest_parexec/``) goes first on the path;
    workers inherit the environment, so they import the same copy.
    """
    env = dict(os.environ)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(root / "_pycache")
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package), env.get("PYTHONPATH")]))
    return env


@final
class Runner:
    """Runs pytest subprocesses the same way for every variant, and times them."""

    def __init__(self, env: Mapping[str, str], cwd: Path, warm_cache: bool) -> None:
        self.env = dict(env)
        #: Where helper processes run: not the repository, whose pytest_parexec/ would shadow --rev.
        self.cwd = cwd
        #: With pytest's cache on, pytest-parexec can remember durations between runs, as it does
        #: for users; off (``--cold``), every run is a first run.
        self.warm_cache = warm_cache

    def run(self, directory: Path, args: Sequence[str], scratch: Path) -> Run:
        """Run pytest in ``directory`` with ``args``; time the whole process."""
        scratch.mkdir(parents=True, exist_ok=True)
        report_path = scratch / "report.json"
        report_path.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            *(() if self.warm_cache else ("-p", "no:cacheprovider")),
            f"--basetemp={scratch / 'basetemp'}",
            *(a.replace("{report}", str(report_path)) for a in args),
        ]
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                command,
                cwd=directory,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=RUN_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchmarkError(
                f"pytest did not finish within {RUN_TIMEOUT_S:g} s in {directory}: {' '.join(command)}"
            ) from None
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise BenchmarkError(
                f"pytest exited with status {proc.returncode} in {directory}: {' '.join(command)}\n{tail}"
            )
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        return Run(wall, report)

    def warm_up(self, directory: Path, args: Sequence[str], scratch: Path, full: bool = False) -> None:
        """One untimed run: fills the bytecode and OS file caches (workers' included).

        ``full`` runs the tests too, so pytest-parexec has learned durations when
        the cache is on; otherwise collecting is enough.
        """
        self.run(directory, [*args] if full else [*args, "--collect-only"], scratch / "warm-up")

    def python(self, code: str) -> str:
        """Run ``code`` in a fresh interpreter with the runs' environment; return its output."""
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()


BASELINE_ARGS: Final = ("-p", "no:parexec")


def parexec_args(workers: str) -> tuple[str, ...]:
    # The default --parexec mode, as users run it; the report says which mode it chose.
    return ("-p", "parexec", f"--parexec-workers={workers}", "--parexec-report={report}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- measuring ------------------------------------------------------------------------------------


@final
@dataclasses.dataclass(frozen=True)
class Timings:
    """Where a parexec run's setup time went, from its JSON report (seconds)."""

    #: How the plugin ran the operations: "parallel", or "sequential" in the pytest process.
    mode: str
    setup_s: float
    wall_s: float
    workers: int
    #: End of collection to the plan's submission (before any operation can start).
    before_plan_s: float
    #: Plan submission to the first operation's start: mostly waiting for a worker.
    first_start_s: float
    last_start_s: float
    #: Mean and largest time from an operation's dependencies being done to its start.
    ready_wait_mean_s: float
    ready_wait_max_s: float
    #: Mean of (end - start) measured by the scheduler minus the worker's own duration.
    round_trip_mean_s: float

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> Timings:
        ops = {op["name"]: op for op in report["operations"]}
        if not ops or any(op["start_s"] is None for op in ops.values()):
            raise BenchmarkError(f"the report has operations that did not run: {sorted(ops)}")
        waits = [
            op["start_s"] - max((ops[d]["end_s"] for d in op["depends"]), default=0.0) for op in ops.values()
        ]
        round_trips = [op["end_s"] - op["start_s"] - op["duration_s"] for op in ops.values()]
        last_end = max(op["end_s"] for op in ops.values())
        return cls(
            mode=str(report["mode"]),
            setup_s=float(report["setup_s"]),
            wall_s=float(report["wall_s"]),
            workers=int(report["workers"]),
            before_plan_s=float(report["setup_s"]) - last_end,
            first_start_s=min(op["start_s"] for op in ops.values()),
            last_start_s=max(op["start_s"] for op in ops.values()),
            ready_wait_mean_s=statistics.fmean(waits),
            ready_wait_max_s=max(waits),
            round_trip_mean_s=statistics.fmean(round_trips),
        )


def median_timings(items: Sequence[Timings]) -> Timings:
    """Field by field medians of the times; every mode and worker count that occurred."""
    times = {
        f.name: statistics.median(getattr(t, f.name) for t in items)
        for f in dataclasses.fields(Timings)
        if f.name.endswith("_s")
    }
    modes = "/".join(sorted({t.mode for t in items}))
    workers = sorted({t.workers for t in items})
    if len(workers) > 1:
        progress(f"  note: the worker count varied between runs: {workers}; showing the largest")
    return Timings(mode=modes, workers=workers[-1], **times)


@final
@dataclasses.dataclass(frozen=True)
class SuiteResult:
    suite: Suite
    workers_option: str
    baseline_walls: tuple[float, ...]
    parexec_walls: tuple[float, ...]
    timings: Timings | None
    error: str | None = None

    @property
    def lower_bound_s(self) -> float | None:
        if self.timings is None:
            return None
        return self.suite.lower_bound(self.timings.workers, os.cpu_count() or 1)


def measure_suite(
    suite: Suite, directories: dict[Variant, Path], scratch: Path, repeat: int, runner: Runner
) -> SuiteResult:
    """Run both variants ``repeat`` times, alternating which goes first."""
    option = suite.workers
    baseline: list[float] = []
    parexec: list[float] = []
    timings: list[Timings] = []
    try:
        runner.warm_up(directories["baseline"], BASELINE_ARGS, scratch / "baseline")
        runner.warm_up(directories["parexec"], parexec_args(option), scratch / "parexec", full=True)
        for index in range(repeat):
            order: list[Variant] = ["baseline", "parexec"] if index % 2 == 0 else ["parexec", "baseline"]
            for variant in order:
                if variant == "baseline":
                    run = runner.run(directories["baseline"], BASELINE_ARGS, scratch / "baseline")
                    baseline.append(run.wall_s)
                else:
                    run = runner.run(directories["parexec"], parexec_args(option), scratch / "parexec")
                    if run.report is None:
                        raise BenchmarkError(f"{suite.name}: the parexec run wrote no --parexec-report")
                    parexec.append(run.wall_s)
                    timings.append(Timings.from_report(run.report))
                progress(f"  {suite.name} [{variant}, run {index + 1}/{repeat}]: {run.wall_s:.2f} s")
    except BenchmarkError as exc:
        progress(f"  {suite.name}: ERROR {exc}")
        return SuiteResult(suite, option, tuple(baseline), tuple(parexec), None, str(exc).splitlines()[0])
    return SuiteResult(suite, option, tuple(baseline), tuple(parexec), median_timings(timings))


@final
@dataclasses.dataclass(frozen=True)
class OverheadResult:
    """The no-batchable suite: whole-run wall times without and with the plugin."""

    without: tuple[float, ...]
    with_plugin: tuple[float, ...]
    import_s: tuple[float, ...]
    error: str | None = None


def measure_overhead(directory: Path, scratch: Path, repeat: int, runner: Runner) -> OverheadResult:
    """``-p no:parexec`` against ``-p parexec``, alternating, after one untimed run of each."""
    without: list[float] = []
    with_plugin: list[float] = []
    plain = ("-p", "no:parexec")
    loaded = ("-p", "parexec")
    try:
        runner.run(directory, plain, scratch / "without")
        runner.run(directory, loaded, scratch / "with")
        for index in range(repeat):
            pairs = [(plain, without, "without"), (loaded, with_plugin, "with")]
            for args, walls, label in pairs if index % 2 == 0 else reversed(pairs):
                run = runner.run(directory, args, scratch / label)
                walls.append(run.wall_s)
                progress(f"  no-batchable [{label} plugin, run {index + 1}/{repeat}]: {run.wall_s:.2f} s")
    except BenchmarkError as exc:
        progress(f"  no-batchable: ERROR {exc}")
        return OverheadResult(tuple(without), tuple(with_plugin), (), str(exc).splitlines()[0])
    return OverheadResult(tuple(without), tuple(with_plugin), plugin_import_times(repeat, runner))


def plugin_import_times(repeat: int, runner: Runner) -> tuple[float, ...]:
    """Seconds to import the plugin module in a process that has already imported pytest."""
    code = (
        "import time, pytest; start = time.perf_counter(); import pytest_parexec.plugin; "
        "print(time.perf_counter() - start)"
    )
    return tuple(float(runner.python(code)) for _ in range(repeat))


# -- tables ------------------------------------------------------------------------------------


def render(headers: Sequence[str], rows: Iterable[Sequence[str]], markdown: bool) -> str:
    rows = [list(r) for r in rows]
    if markdown:
        # The first column names the row; the others are numbers, aligned right.
        lines = ["| " + " | ".join(headers) + " |", "|---|" + "|".join("---:" for _ in headers[1:]) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def suite_table(results: Sequence[SuiteResult], markdown: bool) -> str:
    headers = [
        "suite",
        "ops",
        "mode",
        "workers",
        "work s",
        "lower bound s",
        "baseline wall s",
        "parexec wall s",
        "speedup",
        "setup_s",
        "setup / bound",
        "wall_s",
    ]
    rows = []
    for r in results:
        base, par = median(r.baseline_walls), median(r.parexec_walls)
        bound = r.lower_bound_s
        t = r.timings
        if t is None:
            rows.append(
                [
                    r.suite.name,
                    str(len(r.suite.ops)),
                    "-",
                    r.workers_option,
                    s(r.suite.work_s),
                    f"error: {r.error}",
                ]
                + ["-"] * 6
            )
            continue
        rows.append(
            [
                r.suite.name,
                str(len(r.suite.ops)),
                t.mode,
                f"{t.workers} ({r.workers_option})",
                s(r.suite.work_s),
                s(bound),
                s(base),
                s(par),
                ratio(base / par if base and par else None),
                s(t.setup_s),
                ratio(t.setup_s / bound if bound else None),
                s(t.wall_s),
            ]
        )
    return render(headers, rows, markdown)


def breakdown_table(results: Sequence[SuiteResult], markdown: bool) -> str:
    headers = [
        "suite",
        "setup - bound s",
        "collection -> plan s",
        "plan -> first start s",
        "last start s",
        "ready -> start mean / max s",
        "round trip mean s",
    ]
    rows = []
    for r in results:
        t, bound = r.timings, r.lower_bound_s
        if t is None or bound is None:
            continue
        rows.append(
            [
                r.suite.name,
                s(t.setup_s - bound),
                s(t.before_plan_s),
                s(t.first_start_s),
                s(t.last_start_s),
                f"{s(t.ready_wait_mean_s)} / {s(t.ready_wait_max_s)}",
                f"{t.round_trip_mean_s:.3f}",
            ]
        )
    return render(headers, rows, markdown)


def overhead_table(result: OverheadResult, markdown: bool) -> str:
    headers = ["no-batchable (300 tests)", "runs", "median s", "min s", "max s"]
    rows = []
    for label, walls in (("-p no:parexec", result.without), ("-p parexec", result.with_plugin)):
        rows.append(
            [
                label,
                str(len(walls)),
                s(median(walls)),
                s(min(walls, default=None)),
                s(max(walls, default=None)),
            ]
        )
    a, b = median(result.without), median(result.with_plugin)
    if a is not None and b is not None:
        lo_a, lo_b = min(result.without), min(result.with_plugin)
        rows.append(["difference (with - without)", "", f"{b - a:+.3f}", f"{lo_b - lo_a:+.3f}", ""])
    if result.import_s:
        times = result.import_s
        rows.append(
            [
                "import pytest_parexec.plugin",
                str(len(times)),
                f"{statistics.median(times):.3f}",
                f"{min(times):.3f}",
                f"{max(times):.3f}",
            ]
        )
    return render(headers, rows, markdown)


@final
@dataclasses.dataclass(frozen=True)
class SweepRow:
    suite: Suite
    workers_option: str
    walls: tuple[float, ...]
    timings: Timings | None
    error: str | None


def sweep_table(rows: Sequence[SweepRow], baselines: dict[str, tuple[float, ...]], markdown: bool) -> str:
    headers = [
        "suite",
        "--parexec-workers",
        "mode",
        "workers",
        "parexec wall s",
        "setup_s",
        "lower bound s",
        "setup / bound",
        "plan -> first start s",
        "last start s",
        "speedup vs baseline",
    ]
    out = []
    cpus = os.cpu_count() or 1
    for row in rows:
        t = row.timings
        base = median(baselines.get(row.suite.name, ()))
        if t is None:
            out.append([row.suite.name, row.workers_option, f"error: {row.error}"] + ["-"] * 8)
            continue
        # For the number of workers asked for, even where the plugin chose to run in-process.
        asked = int(row.workers_option) if row.workers_option.isdigit() else t.workers
        bound = row.suite.lower_bound(asked, cpus)
        wall = median(row.walls)
        out.append(
            [
                row.suite.name,
                row.workers_option,
                t.mode,
                str(t.workers),
                s(wall),
                s(t.setup_s),
                s(bound),
                ratio(t.setup_s / bound),
                s(t.first_start_s),
                s(t.last_start_s),
                ratio(base / wall if base and wall else None),
            ]
        )
    return render(headers, out, markdown)


# -- the command line ---------------------------------------------------------------------------


def environment_line(
    loads: Sequence[tuple[float, float, float]], args: argparse.Namespace, location: str
) -> str:
    """What was measured, where, how, and how busy the (shared) machine was."""
    import pytest

    def git(*command: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *command], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    if args.rev is not None:
        what = f"commit {git('rev-parse', '--short', args.rev)} (--rev {args.rev}, exported to {location})"
    else:
        what = f"working tree {location}, HEAD {git('rev-parse', '--short', 'HEAD')}"
        # The package is installed editable: uncommitted changes are what was measured.
        if git("status", "--porcelain", "--", "pytest_parexec"):
            what += " + uncommitted changes"
    load = " -> ".join(f"{one:.2f}" for one, _, _ in loads)
    bytecode = (
        "as the environment says" if args.no_bytecode_cache else "cached in a private PYTHONPYCACHEPREFIX"
    )
    cache = (
        "off (-p no:cacheprovider): every run is a first run"
        if args.cold
        else "on: durations learned in an untimed warm-up run"
    )
    return (
        f"Python {platform.python_version()}, pytest {pytest.__version__}, pytest-parexec {what}; "
        f"{os.cpu_count()} CPUs; 1-min load average {load} (start -> end); "
        f"bytecode {bytecode}; pytest cache {cache}"
    )


SUITE_NAMES: Final = ("wide", "chain", "diamond", "layered", "priority", "no-batchable")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=3, metavar="N", help="runs per variant (default 3); medians are shown"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SUITE_NAMES,
        metavar="NAME",
        help=f"run only this suite (repeatable): {', '.join(SUITE_NAMES)}",
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument(
        "--workers-sweep",
        action="store_true",
        help="instead of the suites: run a sleeping and a CPU-bound wide suite with "
        f"--parexec-workers {', '.join(SWEEP_WORKERS)}",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated suites and print where")
    parser.add_argument(
        "--rev",
        metavar="REV",
        help="measure pytest_parexec/ as of this git revision (exported to the temp dir) instead "
        "of the installed, editable working tree",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="run pytest with -p no:cacheprovider, so pytest-parexec never knows durations from "
        "earlier runs (by default an untimed warm-up run lets it learn them, as it would for a user)",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run with the environment's bytecode settings instead of a private bytecode cache",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: give a number of runs >= 1")
    if args.workers_sweep and args.only:
        parser.error(
            "--only selects among the suites, which --workers-sweep does not run; use one or the other"
        )
    return args


def run_suites(args: argparse.Namespace, root: Path, runner: Runner) -> int:
    selected = set(args.only or SUITE_NAMES)
    suites = [suite for suite in main_suites() if suite.name in selected]
    results = []
    for suite in suites:
        progress(f"{suite.name}: {suite.description}")
        directories = write_suite(suite, root, cpu_loops=0)
        results.append(measure_suite(suite, directories, root / "_scratch" / suite.name, args.repeat, runner))
    overhead = None
    if "no-batchable" in selected:
        progress("no-batchable: 300 trivial tests, 3 ordinary session fixtures")
        directory = write_plain_suite(root)
        repeat = max(OVERHEAD_MIN_REPEAT, args.repeat)
        overhead = measure_overhead(directory, root / "_scratch" / "no-batchable", repeat, runner)

    status = 0
    if results:
        print(f"Suites: medians of {args.repeat} runs per variant; times in seconds\n")
        print(suite_table(results, args.markdown))
        print()
        print(breakdown_table(results, args.markdown))
        for r in results:
            if r.error:
                status = 1
            bound = r.lower_bound_s
            target = TARGETS.get(r.suite.name)
            if target is not None and r.timings is not None and bound:
                achieved = r.timings.setup_s / bound
                verdict = "met" if achieved <= target else "NOT met"
                fcfs = FCFS_S.get(r.suite.name)
                than = f"; first come, first served would take {fcfs:g} s" if fcfs else ""
                print(
                    f"\ntarget: {r.suite.name} setup within {target}x the lower bound "
                    f"({bound:.2f} s): {verdict} ({achieved:.2f}x){than}"
                )
        print()
    if overhead is not None:
        print(overhead_table(overhead, args.markdown))
        print()
        if overhead.error:
            status = 1
    return status


def run_sweep(args: argparse.Namespace, root: Path, runner: Runner) -> int:
    """Each suite with every --parexec-workers value, the order rotating from run to run."""
    loops = calibrate_cpu_loops(CPU_OP_S)
    progress(f"calibrated: {loops} loops of _spin take about {CPU_OP_S} s of CPU here")
    suites = [wide_suite("wide-sleep"), wide_suite("wide-cpu", kind="cpu", seconds=CPU_OP_S)]
    rows: list[SweepRow] = []
    baselines: dict[str, tuple[float, ...]] = {}
    configs = ("baseline", *SWEEP_WORKERS)
    for suite in suites:
        progress(f"{suite.name}: {suite.description}")
        directories = write_suite(suite, root, loops)
        scratch = root / "_scratch" / suite.name
        walls: dict[str, list[float]] = {config: [] for config in configs}
        timings: dict[str, list[Timings]] = {config: [] for config in configs}
        errors: dict[str, str] = {}
        try:
            runner.warm_up(directories["baseline"], BASELINE_ARGS, scratch / "baseline")
            runner.warm_up(directories["parexec"], parexec_args("auto"), scratch / "parexec", full=True)
        except BenchmarkError as exc:
            errors = dict.fromkeys(configs, str(exc).splitlines()[0])
        for index in range(args.repeat):
            shift = index % len(configs)
            for config in configs[shift:] + configs[:shift]:
                if config in errors:
                    continue
                try:
                    if config == "baseline":
                        run = runner.run(directories["baseline"], BASELINE_ARGS, scratch / "baseline")
                    else:
                        run = runner.run(directories["parexec"], parexec_args(config), scratch / config)
                        if run.report is None:
                            raise BenchmarkError(f"{suite.name}: the parexec run wrote no --parexec-report")
                        timings[config].append(Timings.from_report(run.report))
                except BenchmarkError as exc:
                    progress(f"  {suite.name} [{config}]: ERROR {exc}")
                    errors[config] = str(exc).splitlines()[0]
                    continue
                walls[config].append(run.wall_s)
                progress(f"  {suite.name} [{config}, run {index + 1}/{args.repeat}]: {run.wall_s:.2f} s")
        baselines[suite.name] = tuple(walls["baseline"])
        for config in SWEEP_WORKERS:
            result = median_timings(timings[config]) if config not in errors else None
            rows.append(SweepRow(suite, config, tuple(walls[config]), result, errors.get(config)))
    print(f"Workers sweep: medians of {args.repeat} runs; times in seconds")
    print(f"CPU-bound operations: {loops} loops of pure-Python arithmetic, calibrated to {CPU_OP_S} s of CPU")
    print("baseline (plain session fixtures, sequential) wall:")
    for name, base_walls in baselines.items():
        print(f"  {name}: {s(median(base_walls))} s")
    print()
    print(sweep_table(rows, baselines, args.markdown))
    print()
    return 1 if any(row.error for row in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="parexec-bench-"))
    loads = [os.getloadavg()]
    try:
        package = export_package(args.rev, root) if args.rev is not None else None
        env = pytest_environment(root, bytecode_cache=not args.no_bytecode_cache, package=package)
        runner = Runner(env, cwd=root, warm_cache=not args.cold)
        location = runner.python("import os, pytest_parexec; print(os.path.dirname(pytest_parexec.__file__))")
        progress(f"measuring pytest_parexec from {location}")
        status = (run_sweep if args.workers_sweep else run_suites)(args, root, runner)
        loads.append(os.getloadavg())
        print(environment_line(loads, args, location))
        return status
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            progress(f"generated suites kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
