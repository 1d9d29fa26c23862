"""Command-line options and ini keys, parsed once into :class:`Settings`.

Bad values are usage errors with one line that names the option and says what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Final, final

import pytest

MODES: Final = ("auto", "parallel", "sequential")
DEFAULT_RETRIES: Final = 1


AUTO: Final = "auto"


def _workers_arg(value: str) -> int | str:
    """``N`` or ``auto``; anything else is a usage error."""
    if value.strip() == AUTO:
        return AUTO
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of workers; use a number >= 1 or 'auto'"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: the number of workers must be >= 1 (or 'auto')")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be >= 0")
    return number


def _timeout_arg(value: str) -> float | None:
    if value.strip() in ("", "none", "None"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a number of seconds > 0, or 'none'")
    return number


def _tx_specs(values: list[str]) -> list[str]:
    """Expand execnet specs: ``3*popen`` is three popen workers."""
    specs: list[str] = []
    for value in values:
        count, star, spec = value.partition("*")
        if star and count.strip().isdigit():
            specs.extend([spec.strip()] * int(count))
        elif value.strip():
            specs.append(value.strip())
    return specs


def add_options(parser: pytest.Parser) -> None:
    """The command-line options and ini keys (pytest_addoption)."""
    group = parser.getgroup("parexec", "parallel session setup (pytest-parexec)")
    group.addoption(
        "--parexec",
        dest="parexec_mode",
        choices=MODES,
        default=None,
        help="how to run batchable operations: 'auto' (default) runs them in parallel where that "
        "can pay, else in-process; 'parallel' on worker processes; 'sequential' one by one in the "
        "pytest process (for --pdb and print debugging)",
    )
    group.addoption(
        "--parexec-workers",
        dest="parexec_workers",
        type=_workers_arg,
        default=None,
        metavar="N|auto",
        help="number of worker processes, or 'auto' (default): the plan's width, at most twice the CPU count",
    )
    group.addoption(
        "--parexec-trace",
        dest="parexec_trace",
        default=None,
        metavar="PATH",
        help="write the run's timeline: PATH.json as Chrome trace events (Perfetto, chrome://tracing), "
        "PATH.svg as a Gantt chart",
    )
    group.addoption(
        "--parexec-report",
        dest="parexec_report",
        default=None,
        metavar="PATH",
        help="write the parallel execution summary as JSON to PATH",
    )
    group.addoption(
        "--parexec-tx",
        dest="parexec_tx",
        action="append",
        default=[],
        metavar="SPEC",
        help="run operations on execnet gateways instead of local workers (repeatable): popen, "
        "4*popen, popen//python=python3.12, socket=HOST:PORT, ssh=HOST//python=python3//chdir=PATH",
    )
    group.addoption(
        "--parexec-regenerate",
        dest="parexec_regenerate",
        action="store_true",
        default=False,
        help="run every @generator, even those whose inputs did not change",
    )
    parser.addini("parexec_tx", "default for --parexec-tx: execnet specs, one per line", type="linelist")
    parser.addini(
        "parexec_commands",
        "setup commands, one per line: NAME [GROUP] (after A, B): COMMAND",
        type="linelist",
        default=[],
    )
    parser.addini("parexec_mode", "default for --parexec: auto, parallel or sequential", default="auto")
    parser.addini("parexec_workers", "default for --parexec-workers: N or auto", default="auto")
    parser.addini(
        "parexec_retries",
        "how many times a failed batchable operation is retried, alone on a fresh worker",
        default=str(DEFAULT_RETRIES),
    )
    parser.addini(
        "parexec_timeout", "seconds after which a batchable operation is stopped (default: none)", default=""
    )


@final
@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str
    workers: int | None
    retries: int
    timeout: float | None
    report: Path | None
    trace: Path | None
    regenerate: bool
    #: execnet specs of remote workers; empty: local popen workers.
    tx: list[str]

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        def ini(name: str, parse: Any) -> Any:
            raw = str(config.getini(name)).strip()
            try:
                return parse(raw)
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"ini option {name} = {raw!r}: {exc}") from None

        mode = config.option.parexec_mode or ini("parexec_mode", str)
        if mode not in MODES:
            raise pytest.UsageError(f"ini option parexec_mode = {mode!r}: use one of {', '.join(MODES)}")
        workers = config.option.parexec_workers
        if workers is None:
            workers = ini("parexec_workers", _workers_arg)
        tx = _tx_specs(config.option.parexec_tx or list(config.getini("parexec_tx")))
        if tx:
            # One worker per spec, as pytest-xdist's --tx does.
            workers = len(tx)
        report = config.option.parexec_report
        trace = config.option.parexec_trace
        if trace is not None and Path(trace).suffix.lower() not in (".json", ".svg"):
            raise pytest.UsageError(
                f"--parexec-trace={trace}: the file name must end in .json (trace events) "
                "or .svg (Gantt chart)"
            )
        return cls(
            mode=mode,
            workers=None if workers == AUTO else workers,
            retries=ini("parexec_retries", _non_negative_int),
            timeout=ini("parexec_timeout", _timeout_arg),
            report=Path(config.invocation_params.dir, report) if report else None,
            trace=Path(config.invocation_params.dir, trace) if trace else None,
            regenerate=bool(config.option.parexec_regenerate),
            tx=tx,
        )
