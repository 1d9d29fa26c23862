"""Timelines: Chrome trace-event JSON and the SVG Gantt chart.

Unit tests render a report built by hand (with a recovered and a failed operation,
so that retried attempts show); acceptance tests write both files from a real run
in which one operation fails once and is retried.
"""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _support import pytester_with_only_parexec  # noqa: F401 - the pytester fixture

from pytest_parexec.report import Report
from pytest_parexec.trace import GROUP_COLOURS, chrome_trace, svg_gantt, write_trace

SVG = "{http://www.w3.org/2000/svg}"


def attempt(number: int, worker: str, start: float, end: float, ok: bool) -> dict[str, Any]:
    return {
        "attempt": number,
        "worker": worker,
        "pid": 100 + int(worker[2:]) if worker.startswith("gw") else 1,
        "start_s": start,
        "end_s": end,
        "duration_s": end - start,
        "status": "passed" if ok else "failed",
        "error": None if ok else "RuntimeError",
    }


def operation(
    name: str, group: str, status: str, history: Sequence[dict[str, Any]], depends: Sequence[str] = ()
) -> dict[str, Any]:
    last = history[-1] if history else None
    return {
        "name": name,
        "group": group,
        "status": status,
        "attempts": len(history),
        "worker": last["worker"] if last else None,
        "pid": last["pid"] if last else None,
        "host": None,
        "start_s": last["start_s"] if last else None,
        "end_s": last["end_s"] if last else None,
        "duration_s": last["duration_s"] if last else None,
        "depends": list(depends),
        "expected_s": None,
        "error": None,
        "blocked_by": None,
        "teardown_error": None,
        "attempt_history": list(history),
    }


def sample_report() -> Report:
    """schema_db passes; api_service recovers on its second attempt; app_config fails
    twice; cli_config is skipped (no attempt). Workers gw1, gw2 and gw10 (sorted as numbers)."""
    operations = [
        operation("schema_db", "models", "passed", [attempt(1, "gw1", 0.0, 1.0, True)]),
        operation(
            "api_service",
            "logic",
            "recovered",
            [attempt(1, "gw2", 1.0, 1.5, False), attempt(2, "gw10", 1.6, 2.4, True)],
            depends=["schema_db"],
        ),
        operation(
            "app_config",
            "configs",
            "failed",
            [attempt(1, "gw2", 0.0, 0.2, False), attempt(2, "gw1", 1.0, 1.1, False)],
        ),
        operation("cli_config", "configs", "skipped", [], depends=["app_config"]),
    ]
    built: dict[str, Any] = {
        "version": 1,
        "mode": "parallel",
        "mode_reason": "test",
        "workers": 3,
        "setup_s": 2.5,
        "wall_s": 2.4,
        "sequential_s": 2.6,
        "saved_s": 0.2,
        "efficiency": 0.08,
        "critical_path": ["schema_db", "api_service"],
        "critical_path_s": 1.8,
        "counts": {},
        "phases": [],
        "operations": operations,
        "recommendations": [],
    }
    return built  # type: ignore[return-value]


# -- Chrome trace events -----------------------------------------------------------


def threads(trace: dict[str, Any]) -> dict[int, str]:
    return {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}


def complete(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def test_chrome_trace_has_one_track_per_worker_and_one_for_pytest() -> None:
    trace = chrome_trace(sample_report())
    json.dumps(trace)  # serialisable as is
    names = threads(trace)
    assert sorted(names.values()) == ["gw1", "gw10", "gw2", "pytest"]
    assert len(names) == 4  # one tid each
    # Workers in numeric order after the pytest track.
    assert [names[tid] for tid in sorted(names)] == ["pytest", "gw1", "gw2", "gw10"]
    metadata = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    assert all(e["pid"] == 1 for e in metadata)


def test_chrome_trace_has_one_complete_event_per_attempt() -> None:
    trace = chrome_trace(sample_report())
    names = threads(trace)
    events = [e for e in complete(trace) if names[e["tid"]] != "pytest"]
    assert sorted((e["name"], e["args"]["attempt"]) for e in events) == [
        ("api_service", 1),
        ("api_service", 2),
        ("app_config", 1),
        ("app_config", 2),
        ("schema_db", 1),
    ]
    by_attempt = {(e["name"], e["args"]["attempt"]): e for e in events}
    assert by_attempt["api_service", 1]["args"]["status"] == "failed"
    assert by_attempt["api_service", 2]["args"]["status"] == "recovered"
    assert by_attempt["app_config", 1]["args"]["status"] == "failed"
    assert by_attempt["app_config", 2]["args"]["status"] == "failed"
    assert by_attempt["schema_db", 1]["args"]["status"] == "passed"
    for event in by_attempt.values():
        assert event["cat"] == event["args"]["group"]
        assert names[event["tid"]] == event["args"]["worker"]
    assert by_attempt["api_service", 2]["cat"] == "logic"
    assert names[by_attempt["api_service", 2]["tid"]] == "gw10"
    # Microseconds from the start of the plan.
    assert (by_attempt["api_service", 2]["ts"], by_attempt["api_service", 2]["dur"]) == (1_600_000, 800_000)
    assert (by_attempt["schema_db", 1]["ts"], by_attempt["schema_db", 1]["dur"]) == (0, 1_000_000)


def test_chrome_trace_shows_the_pytest_process_waiting_for_setup() -> None:
    trace = chrome_trace(sample_report())
    names = threads(trace)
    (waiting,) = [e for e in complete(trace) if names[e["tid"]] == "pytest"]
    assert waiting["dur"] == 2_500_000
    assert waiting["args"]["mode"] == "parallel"


def test_chrome_trace_in_process_operations_have_their_own_track() -> None:
    report = sample_report()
    report["operations"] = [operation("schema_db", "models", "passed", [attempt(1, "main", 0.0, 1.0, True)])]
    trace = chrome_trace(report)
    names = threads(trace)
    (event,) = [e for e in complete(trace) if e["name"] == "schema_db"]
    assert names[event["tid"]] == "main"
    assert set(names.values()) == {"pytest", "main"}


# -- SVG Gantt ---------------------------------------------------------------------


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def attempts_of(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == "attempt"]


def title_of(g: ET.Element) -> str:
    """``name [group] attempt N`` from a bar's tooltip (the part before the colon)."""
    title = g.find(f"{SVG}title")
    assert title is not None
    return (title.text or "").split(":")[0]


def test_svg_is_well_formed_and_self_contained() -> None:
    svg = svg_gantt(sample_report())
    root = parse(svg)
    assert root.tag == f"{SVG}svg"
    assert root.find(f"{SVG}title") is not None
    # Nothing to fetch: no external references, no scripts, no images.
    for element in root.iter():
        assert element.tag not in (f"{SVG}script", f"{SVG}image", f"{SVG}use")
        for key, value in element.attrib.items():
            assert "href" not in key, (element.tag, key)
            assert "http" not in value, (element.tag, key, value)
            if value.startswith("url("):
                assert value.startswith("url(#"), value


def test_svg_has_one_bar_per_attempt_retried_ones_included() -> None:
    root = parse(svg_gantt(sample_report()))
    bars = attempts_of(root)
    assert sorted(g.get("data-operation") or "" for g in bars) == [
        "api_service",
        "api_service",
        "app_config",
        "app_config",
        "schema_db",
    ]
    statuses: dict[str, str | None] = {}
    for g in bars:
        statuses[title_of(g)] = g.get("data-status")
    assert statuses == {
        "schema_db [models] attempt 1": "passed",
        "api_service [logic] attempt 1": "failed",
        "api_service [logic] attempt 2": "recovered",
        "app_config [configs] attempt 1": "failed",
        "app_config [configs] attempt 2": "failed",
    }


def fills(g: ET.Element) -> list[str]:
    return [rect.get("fill") or "" for rect in g.iter(f"{SVG}rect")]


def test_svg_marks_failed_and_retried_attempts_and_colours_by_group() -> None:
    root = parse(svg_gantt(sample_report()))
    for g in attempts_of(root):
        marked = "url(#failed)" in fills(g)
        assert marked == (g.get("data-status") == "failed"), g.get("data-operation")
        group = {"schema_db": "models", "api_service": "logic", "app_config": "configs"}[
            g.get("data-operation") or ""
        ]
        assert fills(g)[0] == GROUP_COLOURS[group]
    assert root.find(f".//{SVG}pattern[@id='failed']") is not None


def test_svg_highlights_the_critical_path() -> None:
    root = parse(svg_gantt(sample_report()))
    outlined = {
        (g.get("data-operation"), g.get("data-status"))
        for g in attempts_of(root)
        if any(rect.get("stroke") == "black" for rect in g.iter(f"{SVG}rect"))
    }
    # The critical path's successful attempts; not api_service's failed first try.
    assert outlined == {("schema_db", "passed"), ("api_service", "recovered")}


def test_svg_has_a_lane_per_worker_a_time_axis_and_a_legend() -> None:
    root = parse(svg_gantt(sample_report()))
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    lanes = [t for t in texts if t in ("gw1", "gw2", "gw10")]
    assert lanes == ["gw1", "gw2", "gw10"]
    ticks = [t for t in texts if t.endswith("s") and t[:-1].replace(".", "", 1).isdigit()]
    assert ticks[0] == "0s"
    assert len(ticks) >= 3
    assert [float(t[:-1]) for t in ticks] == sorted(float(t[:-1]) for t in ticks)
    for group in GROUP_COLOURS:
        assert group in texts
    assert "failed attempt" in texts
    assert "critical path" in texts


def test_svg_bars_sit_in_their_worker_lane_in_time_order() -> None:
    root = parse(svg_gantt(sample_report()))
    at: dict[str, tuple[float, float]] = {}  # title -> (y, x) of the bar
    for g in attempts_of(root):
        rect = g.find(f"{SVG}rect")
        assert rect is not None
        at[title_of(g)] = (float(rect.get("y") or 0), float(rect.get("x") or 0))
    schema_y, schema_x = at["schema_db [models] attempt 1"]
    config1_y, _ = at["app_config [configs] attempt 1"]
    config2_y, config2_x = at["app_config [configs] attempt 2"]
    api1_y, api1_x = at["api_service [logic] attempt 1"]
    api2_y, api2_x = at["api_service [logic] attempt 2"]
    assert config1_y == api1_y  # both on gw2
    assert schema_y == config2_y  # both on gw1
    assert len({schema_y, api1_y, api2_y}) == 3  # gw1, gw2, gw10
    assert schema_x < config2_x  # 0 s, then 1 s
    assert api1_x < api2_x


def test_write_trace_picks_the_format_from_the_suffix(tmp_path: Path) -> None:
    report = sample_report()
    write_trace(report, tmp_path / "t.svg")
    write_trace(report, tmp_path / "t.json")
    write_trace(report, tmp_path / "nested" / "T.SVG")
    assert parse((tmp_path / "t.svg").read_text(encoding="utf-8")).tag == f"{SVG}svg"
    assert parse((tmp_path / "nested" / "T.SVG").read_text(encoding="utf-8")).tag == f"{SVG}svg"
    assert json.loads((tmp_path / "t.json").read_text()) == chrome_trace(report)


# -- acceptance ---------------------------------------------------------------------

CONFTEST = """
    from pathlib import Path

    from pytest_parexec import batchable

    MARKER = Path(__file__).parent / "failed-once"

    @batchable
    def schema_db():
        return "schema"

    @batchable
    def flaky_service(schema_db):
        if not MARKER.exists():
            MARKER.touch()
            raise RuntimeError("the first attempt fails")
        return schema_db + "+service"

    @batchable
    def app_config():
        return "config"
"""

TESTS = """
    def test_setup(flaky_service, app_config):
        assert flaky_service == "schema+service"
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makepyfile(test_setup=textwrap.dedent(TESTS))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    result = pytester.runpytest_subprocess("-p", "parexec", "--parexec-report=report.json", *args)
    result.assert_outcomes(passed=1)
    report: dict[str, Any] = json.loads((pytester.path / "report.json").read_text())
    flaky = next(op for op in report["operations"] if op["name"] == "flaky_service")
    assert (flaky["status"], flaky["attempts"]) == ("recovered", 2)  # parexec_retries defaults to 1
    return result, report


def test_trace_json_from_a_run_with_a_retry(suite: pytest.Pytester) -> None:
    _, report = run(suite, "--parexec-trace=trace/run.json")
    trace = json.loads((suite.path / "trace" / "run.json").read_text())
    names = threads(trace)
    assert "pytest" in names.values()
    events = [e for e in complete(trace) if names[e["tid"]] != "pytest"]
    assert sorted((e["name"], e["args"]["attempt"], e["args"]["status"]) for e in events) == [
        ("app_config", 1, "passed"),
        ("flaky_service", 1, "failed"),
        ("flaky_service", 2, "recovered"),
        ("schema_db", 1, "passed"),
    ]
    workers = {a["worker"] for op in report["operations"] for a in op["attempt_history"]}
    assert set(names.values()) == workers | {"pytest"}
    for event in events:
        assert event["cat"] == event["args"]["group"]
        assert names[event["tid"]] == event["args"]["worker"]
        assert event["args"]["worker"].startswith("gw")
        assert event["dur"] >= 0


def test_trace_svg_from_a_run_with_a_retry(suite: pytest.Pytester) -> None:
    _, report = run(suite, "--parexec-trace=run.svg")
    root = parse((suite.path / "run.svg").read_text(encoding="utf-8"))
    workers = {a["worker"] for op in report["operations"] for a in op["attempt_history"]}
    assert workers <= {t.text for t in root.iter(f"{SVG}text")}  # a lane label per worker
    bars = attempts_of(root)
    assert sorted((g.get("data-operation"), g.get("data-status")) for g in bars) == [
        ("app_config", "passed"),
        ("flaky_service", "failed"),
        ("flaky_service", "recovered"),
        ("schema_db", "passed"),
    ]
    (failed,) = [g for g in bars if g.get("data-status") == "failed"]
    assert "url(#failed)" in fills(failed)


def test_trace_with_another_suffix_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it="def test_it():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "parexec", "--parexec-trace=timeline.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--parexec-trace=timeline.txt*.json*.svg*"])
    assert not (pytester.path / "timeline.txt").exists()
