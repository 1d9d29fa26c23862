"""Acceptance tests for interrupted sessions: Ctrl-C while setup runs, and -x / --maxfail.

For Ctrl-C, pytest runs in a ``subprocess.Popen`` of its own, so that the test
can send it signals once the operations have started (their files say so).
The assertions: pytest exits, the teardown of what finished ran, and no worker
or process a worker started is left.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _support import process_gone

CONFTEST = r'''
import os
import subprocess
import time
from pathlib import Path

from pytest_parexec import batchable

OUT = Path(__file__).parent / "out"
OUT.mkdir(exist_ok=True)


def write(name, text):
    """Write OUT/name in one step: the test never reads half a file."""
    tmp = OUT / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, OUT / name)


@batchable
def g_quick():
    write("G-setup", str(os.getpid()))
    yield "g"
    write("G-teardown", str(os.getpid()))


@batchable
def s_slow():
    write("S-pid", str(os.getpid()))
    child = subprocess.Popen(["sleep", "300"])
    write("S-child", str(child.pid))
    time.sleep(300)
'''

TESTS = """
def test_g(g_quick):
    assert g_quick == "g"

def test_s(s_slow):
    pass
"""


def wait_gone(pids: dict[str, int]) -> None:
    deadline = time.monotonic() + 10
    while not all(map(process_gone, pids.values())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {name: pid for name, pid in pids.items() if not process_gone(pid)} == {}


def wait_for_files(directory: Path, names: list[str], proc: subprocess.Popen[bytes], output: Path) -> None:
    """Return once every file in ``names`` exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not all((directory / name).exists() for name in names):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{names} not all written; pytest output:\n{output.read_text()}")
        time.sleep(0.02)


def pid_in(directory: Path, name: str) -> int:
    return int((directory / name).read_text())


@dataclasses.dataclass(frozen=True)
class Interrupted:
    returncode: int
    output: str
    out: Path


@pytest.fixture(scope="module", params=["pytest process", "process group"])
def interrupted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Interrupted:
    """Run the suite, send SIGINT once G has finished and S runs, and wait for pytest to exit.

    Module scoped, so that one run serves the test of what must hold today and the
    test of what a bug breaks.
    """
    project = tmp_path_factory.mktemp("interrupted")
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_suite.py").write_text(TESTS)
    output = project / "pytest-output.txt"
    out = project / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    with output.open("wb") as stream:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "parexec", "-p", "no:cacheprovider"],
            cwd=project,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            # A terminal's Ctrl-C goes to the foreground process group: pytest's own here.
            start_new_session=request.param == "process group",
            # Python ignores SIGINT for good if it starts with SIGINT ignored, as in a
            # shell's background job: give pytest the default disposition.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            wait_for_files(out, ["G-setup", "S-pid", "S-child"], proc, output)
            if request.param == "process group":
                os.killpg(proc.pid, signal.SIGINT)
            else:
                os.kill(proc.pid, signal.SIGINT)
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Interrupted(proc.returncode, output.read_text(), out)


def test_ctrl_c_stops_pytest_and_every_process(interrupted: Interrupted) -> None:
    assert interrupted.returncode == pytest.ExitCode.INTERRUPTED, interrupted.output
    assert "KeyboardInterrupt" in interrupted.output
    wait_gone({name: pid_in(interrupted.out, name) for name in ("G-setup", "S-pid", "S-child")})


def test_ctrl_c_runs_the_teardown_of_what_finished(interrupted: Interrupted) -> None:
    assert (interrupted.out / "G-teardown").exists(), interrupted.output
    # In the worker that set it up.
    assert pid_in(interrupted.out, "G-teardown") == pid_in(interrupted.out, "G-setup")


MAXFAIL_TESTS = """
def test_fails(g_quick):
    assert g_quick == "not g"

def test_never_runs(h_plain):
    pass
"""

MAXFAIL_CONFTEST = """
@batchable
def h_plain():
    write("H-pid", str(os.getpid()))
    return "h"
"""


@pytest.mark.parametrize("option", ["-x", "--maxfail=1"])
def test_stopping_after_a_failure_still_tears_down(pytester: pytest.Pytester, option: str) -> None:
    # s_slow is not used here: only g_quick and h_plain are planned.
    pytester.makeconftest(CONFTEST + textwrap.dedent(MAXFAIL_CONFTEST))
    pytester.makepyfile(test_suite=MAXFAIL_TESTS)
    result = pytester.runpytest_subprocess("-p", "parexec", option, timeout=120)
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    out = pytester.path / "out"
    assert not (out / "S-pid").exists()
    assert pid_in(out, "G-teardown") == pid_in(out, "G-setup")
    wait_gone({name: pid_in(out, name) for name in ("G-setup", "H-pid")})
