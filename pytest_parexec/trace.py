"""The run as a timeline: Chrome trace-event JSON (Perfetto, chrome://tracing) or an SVG Gantt chart."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .report import write_text

if TYPE_CHECKING:
    from .report import Report

__all__ = ["GROUP_COLOURS", "chrome_trace", "svg_gantt", "write_trace"]

#: One colour per group, shared by the SVG bars and the legend.
GROUP_COLOURS: Final = {
    "models": "#4e79a7",
    "logic": "#f28e2b",
    "configs": "#59a14f",
    "other": "#9c755f",
    "tests": "#b07aa1",
}
PYTEST_TRACK: Final = "pytest"


def _attempts(report: Report) -> list[dict[str, Any]]:
    """Every attempt of every operation, flattened, with its operation's facts."""
    rows = []
    for op in report["operations"]:
        history = op["attempt_history"]
        for attempt in history:
            final = attempt is history[-1]
            rows.append(
                {
                    "name": op["name"],
                    "group": op["group"],
                    "attempt": attempt["attempt"],
                    "worker": attempt["worker"],
                    "pid": attempt["pid"],
                    "start_s": attempt["start_s"],
                    "end_s": attempt["end_s"],
                    "status": op["status"] if final else "failed",
                    "retried": not final,
                }
            )
    return rows


def _workers(rows: list[dict[str, Any]]) -> list[str]:
    def key(worker: str) -> tuple[int, str]:
        digits = worker[2:] if worker.startswith("gw") else ""
        return (int(digits), worker) if digits.isdigit() else (-1, worker)

    return sorted({row["worker"] for row in rows}, key=key)


def chrome_trace(report: Report) -> dict[str, Any]:
    """Trace-event format: one track per worker, the pytest process as its own track."""
    rows = _attempts(report)
    tracks = [PYTEST_TRACK, *[w for w in _workers(rows) if w != PYTEST_TRACK]]
    tid = {track: index for index, track in enumerate(tracks)}
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": 1, "tid": 0, "name": "process_name", "args": {"name": "pytest-parexec"}}
    ]
    for track, index in tid.items():
        events.append({"ph": "M", "pid": 1, "tid": index, "name": "thread_name", "args": {"name": track}})
    events.append(
        {
            "ph": "X",
            "pid": 1,
            "tid": tid[PYTEST_TRACK],
            "name": "waiting for setup",
            "cat": "pytest",
            "ts": 0,
            "dur": round(report["setup_s"] * 1e6),
            "args": {"mode": report["mode"], "workers": report["workers"]},
        }
    )
    for row in rows:
        events.append(
            {
                "ph": "X",
                "pid": 1,
                "tid": tid[row["worker"]] if row["worker"] in tid else tid[PYTEST_TRACK],
                "name": row["name"],
                "cat": row["group"],
                "ts": round(row["start_s"] * 1e6),
                "dur": round((row["end_s"] - row["start_s"]) * 1e6),
                "args": {
                    "group": row["group"],
                    "status": row["status"],
                    "attempt": row["attempt"],
                    "worker": row["worker"],
                    "pid": row["pid"],
                },
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"version": report["version"]}}


def _ticks(end: float) -> list[float]:
    """About six round time-axis ticks from 0 to ``end`` seconds."""
    if end <= 0:
        return [0.0]
    raw = end / 6
    step = min(
        (
            s
            for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)
            if s >= raw
        ),
        default=raw,
    )
    count = int(end / step) + 1
    return [round(i * step, 6) for i in range(count + 1)]


def svg_gantt(report: Report) -> str:
    """A self-contained SVG: a lane per worker, a bar per attempt coloured by group,
    failed and retried attempts marked, the critical path outlined, an axis and a legend."""
    rows = _attempts(report)
    lanes = _workers(rows)
    end = max([row["end_s"] for row in rows] + [report["setup_s"], 0.001])
    left, top, lane_h, width = 90, 40, 30, 900
    plot_w = width - left - 20
    scale = plot_w / end
    height = top + lane_h * max(1, len(lanes)) + 70
    critical = set(report["critical_path"])
    where = f"on {report['workers']} workers" if report["workers"] else "in the pytest process"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<title>pytest-parexec timeline</title>",
        '<defs><pattern id="failed" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#e15759"/></pattern></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">pytest-parexec: '
        f"{len(report['operations'])} operations {where}, "
        f"{report['wall_s']:.2f}s (sequential {report['sequential_s']:.2f}s)</text>",
    ]
    for index, lane in enumerate(lanes):
        y = top + index * lane_h
        out.append(f'<text x="{left - 8}" y="{y + 19}" text-anchor="end">{escape(lane)}</text>')
        out.append(
            f'<line x1="{left}" y1="{y + lane_h}" x2="{left + plot_w}" y2="{y + lane_h}" stroke="#eee"/>'
        )
    for row in rows:
        y = top + lanes.index(row["worker"]) * lane_h + 4
        x = left + row["start_s"] * scale
        w = max(1.0, (row["end_s"] - row["start_s"]) * scale)
        failed = row["status"] == "failed"
        colour = GROUP_COLOURS.get(row["group"], "#bab0ac")
        stroke = ' stroke="black" stroke-width="2.5"' if row["name"] in critical and not failed else ""
        label = f"{row['name']} [{row['group']}] attempt {row['attempt']}: {row['status']}"
        label += f", {row['end_s'] - row['start_s']:.2f}s"
        out.append(
            f'<g class="attempt" data-operation="{escape(row["name"])}" data-status="{row["status"]}">'
            f"<title>{escape(label)}</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane_h - 8}" rx="3" '
            f'fill="{colour}"{stroke}/>'
        )
        if failed or row["retried"]:
            out.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane_h - 8}" rx="3" '
                f'fill="url(#failed)" opacity="0.7"/>'
            )
        if w > 40:
            # About 7 px a character: cut the label to its bar.
            label_text = row["name"] + (" ✗" if failed else "")
            fits = max(1, int((w - 8) / 7))
            name = escape(label_text if len(label_text) <= fits else label_text[: fits - 1] + "…")
            out.append(f'<text x="{x + 4:.1f}" y="{y + 15}" fill="white">{name}</text>')
        out.append("</g>")
    axis_y = top + lane_h * max(1, len(lanes)) + 5
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="black"/>')
    for tick in _ticks(end):
        if tick > end * 1.0001:
            break
        x = left + tick * scale
        out.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="black"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 18}" text-anchor="middle">{tick:g}s</text>')
    legend_y = axis_y + 40
    x = left
    for group, colour in GROUP_COLOURS.items():
        out.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 16}" y="{legend_y}">{group}</text>')
        x += 85
    out.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="url(#failed)"/>')
    out.append(f'<text x="{x + 16}" y="{legend_y}">failed attempt</text>')
    x += 110
    out.append(
        f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="white" stroke="black" '
        f'stroke-width="2.5"/><text x="{x + 16}" y="{legend_y}">critical path</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_trace(report: Report, path: Path) -> None:
    """Write ``path`` as SVG when it ends in .svg, else as trace-event JSON."""
    if path.suffix.lower() == ".svg":
        write_text(path, svg_gantt(report))
    else:
        write_text(path, json.dumps(chrome_trace(report), indent=1) + "\n")
