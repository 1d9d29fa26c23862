"""Acceptance tests for remote workers: ``--parexec-tx`` and the ini key ``parexec_tx``.

A real second host is an execnet socket server
(``python -m execnet.script.socketserver``) on the loopback interface: it runs
each gateway inside its own process, so an operation that ran there reports
the server's pid. The remote host has its own copy of the project, at the
spec's ``chdir``. Unreachable hosts are loopback ports where nothing listens.
Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"

CONFTEST = """
import os
import socket
import time
from pathlib import Path

from pytest_parexec import batchable

OUT = Path(__file__).parent / "out"


def rendezvous(me, *others, timeout=60.0):
    '''Return once each of ``others`` has started too: they run on different workers.'''
    OUT.mkdir(exist_ok=True)
    (OUT / f"{me}.here").touch()
    deadline = time.monotonic() + timeout
    while not all((OUT / f"{other}.here").exists() for other in others):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{me}: {others} did not start within {timeout}s")
        time.sleep(0.01)


@batchable
def where():
    return os.getpid(), os.getcwd(), socket.gethostname()


@batchable
def also_where():
    return os.getpid(), os.getcwd()
"""

TEST = """
def test_where(where, also_where):
    pass
"""


def free_port() -> int:
    """A loopback port nothing listens on (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


@dataclasses.dataclass(frozen=True)
class Server:
    port: int
    pid: int

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"


def wait_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once the server accepts connections (a bounded loop, not a speed claim)."""
    deadline = time.monotonic() + 30.0
    while True:
        if process.poll() is not None:
            pytest.fail(f"the socket server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0):
                return  # the server reads an empty line from this probe and accepts again
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the socket server did not accept connections within 30 s:\n{log.read_text()}")
            time.sleep(0.05)


@pytest.fixture
def socket_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An execnet socket server on loopback, run from a directory of its own."""
    home = tmp_path_factory.mktemp("socket-server")
    log = home / "server.log"
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "execnet.script.socketserver", f"{LOOPBACK}:{port}"],
            cwd=home,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_accepting(port, process, log)
        yield Server(port, process.pid)
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def project(pytester: pytest.Pytester) -> None:
    """The scenario's project: two operations and a test that needs both."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_where=TEST)


@pytest.fixture
def remote_checkout(
    project: None, pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The remote host's own copy of the project, at another path: the spec's chdir."""
    checkout = tmp_path_factory.mktemp("remote-checkout")
    shutil.copy(pytester.path / "conftest.py", checkout / "conftest.py")
    return checkout


def read_report(pytester: pytest.Pytester) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / "report.json").read_text())
    return data


def make_test(pytester: pytest.Pytester, body: str) -> None:
    source = "def test_where(where, also_where):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    pytester.makepyfile(test_where=source)


def test_operations_run_on_a_socket_worker_in_its_chdir(
    pytester: pytest.Pytester, remote_checkout: Path, socket_server: Server
) -> None:
    spec = f"socket={socket_server.address}//chdir={remote_checkout}"
    make_test(
        pytester,
        f"""
        pid, cwd, host = where
        assert host == {socket.gethostname()!r}
        assert pid == {socket_server.pid}
        assert cwd == {str(remote_checkout)!r}
        assert also_where == ({socket_server.pid}, {str(remote_checkout)!r})
        """,
    )
    result = pytester.runpytest_subprocess(
        "-p", "parexec", f"--parexec-tx={spec}", "--parexec-report=report.json"
    )
    result.assert_outcomes(passed=1)
    report = read_report(pytester)
    assert report["workers"] == 1
    assert report["worker_errors"] == []
    assert report["tx"] == [spec]
    for op in report["operations"]:
        assert op["status"] == "passed"
        assert op["spec"] == spec
        assert op["host"] == socket.gethostname()
        assert op["pid"] == socket_server.pid
    assert "worker error" not in result.stdout.str()


@pytest.mark.usefixtures("project")
def test_ini_parexec_tx_expands_counts_and_the_command_line_replaces_it(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nparexec_tx =\n    2*popen\n    popen\n")
    pytester.makeconftest(
        CONFTEST
        + textwrap.dedent(
            """
            @batchable
            def third():
                rendezvous("third", "first", "second")
                return os.getpid()


            @batchable
            def first():
                rendezvous("first", "second", "third")
                return os.getpid()


            @batchable
            def second():
                rendezvous("second", "first", "third")
                return os.getpid()
            """
        )
    )
    pytester.makepyfile(
        test_where="""
        import os

        def test_three_workers(first, second, third):
            # The three ran at the same time, so on three local worker processes.
            assert len({first, second, third, os.getpid()}) == 4
        """
    )
    result = pytester.runpytest_subprocess("-p", "parexec", "--parexec-report=report.json")
    result.assert_outcomes(passed=1)
    report = read_report(pytester)
    assert report["workers"] == 3
    assert report["tx"] == ["popen", "popen", "popen"]
    assert {op["spec"] for op in report["operations"]} == {"popen"}
    assert "--parexec-tx gives 3 workers" in result.stdout.str()

    # --parexec-tx on the command line replaces the ini's list.
    pytester.makepyfile(
        test_where="""
        def test_one_worker(where, also_where):
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "parexec", "--parexec-tx=popen", "--parexec-report=report.json"
    )
    result.assert_outcomes(passed=1)
    assert read_report(pytester)["workers"] == 1
    assert read_report(pytester)["tx"] == ["popen"]
    assert "--parexec-tx gives 1 worker" in result.stdout.str()


@pytest.mark.usefixtures("project")
def test_an_unreachable_spec_is_reported_and_its_operations_run_elsewhere(pytester: pytest.Pytester) -> None:
    dead = f"socket={LOOPBACK}:{free_port()}"
    result = pytester.runpytest_subprocess(
        "-p", "parexec", f"--parexec-tx={dead}", "--parexec-tx=popen", "--parexec-report=report.json"
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.re_match_lines([rf"worker error: worker gw0 \({dead}\) could not start: .+"])
    report = read_report(pytester)
    assert len(report["worker_errors"]) == 1
    assert report["worker_errors"][0].startswith(f"worker gw0 ({dead}) could not start: ")
    for op in report["operations"]:
        assert (op["status"], op["spec"], op["worker"]) == ("passed", "popen", "gw1")


@pytest.mark.usefixtures("project")
def test_the_run_fails_when_no_worker_can_start(pytester: pytest.Pytester) -> None:
    dead = f"socket={LOOPBACK}:{free_port()}"
    result = pytester.runpytest_subprocess(
        "-p", "parexec", f"--parexec-tx={dead}", "--parexec-report=report.json"
    )
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    stdout = result.stdout.str()
    assert f"no worker could be started: worker gw0 ({dead}) could not start: " in stdout
    result.stdout.re_match_lines([rf"worker error: worker gw0 \({dead}\) could not start: .+"])
    report = read_report(pytester)
    assert {op["status"] for op in report["operations"]} == {"failed"}


def test_a_retry_runs_on_the_one_socket_worker_when_no_fresh_worker_can_start(
    pytester: pytest.Pytester, socket_server: Server, tmp_path: Path
) -> None:
    # execnet's socket server serves one connection at a time, so a fresh worker for a
    # retry never answers. Regression: the session hung (nothing woke the scheduler for
    # the other ready operation). With --parexec-tx the retry runs alone on a worker
    # that is up, and the operation recovers.
    marker = tmp_path / "failed-once"
    pytester.makeconftest(
        f"""
        from pathlib import Path

        from pytest_parexec import batchable

        @batchable
        def flaky():
            marker = Path({str(marker)!r})
            if not marker.exists():
                marker.write_text("x")
                raise RuntimeError("first attempt fails")
            return "ok"

        @batchable
        def steady():
            return "fine"
        """
    )
    pytester.makepyfile(test_it="def test_it(flaky, steady):\n    assert (flaky, steady) == ('ok', 'fine')\n")
    result = pytester.runpytest_subprocess(
        "-p",
        "parexec",
        f"--parexec-tx=socket={socket_server.address}//chdir={pytester.path}",
        "--parexec-report=report.json",
        timeout=120,
    )
    result.assert_outcomes(passed=1)
    statuses = {op["name"]: (op["status"], op["attempts"]) for op in read_report(pytester)["operations"]}
    assert statuses == {"flaky": ("recovered", 2), "steady": ("passed", 1)}


GENERATOR_CONFTEST = """
from pytest_parexec import generator


@generator(inputs="specs/*.txt")
def from_spec(source):
    # The worker's own copy of the input: the path it gets is relative to its chdir.
    body = f"SOURCE = {str(source)!r}\\nTEXT = {source.read_text()!r}\\n\\ndef test_spec():\\n    pass\\n"
    return {f"generated/test_{source.stem}.py": body}
"""


def test_a_remote_worker_gets_paths_under_the_rootdir_relative_to_its_chdir(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, socket_server: Server
) -> None:
    pytester.makeconftest(GENERATOR_CONFTEST)
    pytester.makeini("[pytest]\nparexec_commands = where: pwd\n")
    pytester.mkdir("specs").joinpath("alpha.txt").write_text("the host's copy")
    checkout = tmp_path_factory.mktemp("remote-checkout")
    # The setup command runs in the worker's chdir, not in the host's rootdir.
    pytester.makepyfile(test_cmd=f"def test_cmd(where):\n    assert where.strip() == {str(checkout)!r}\n")
    shutil.copy(pytester.path / "conftest.py", checkout / "conftest.py")
    (checkout / "specs").mkdir()
    (checkout / "specs" / "alpha.txt").write_text("the remote copy")

    spec = f"socket={socket_server.address}//chdir={checkout}"
    result = pytester.runpytest_subprocess(
        "-p", "parexec", f"--parexec-tx={spec}", "--parexec-report=report.json"
    )
    result.assert_outcomes(passed=2)
    # The generator read the remote worker's copy of its input, by a relative path.
    generated = (pytester.path / "generated" / "test_alpha.py").read_text()
    assert "SOURCE = 'specs/alpha.txt'" in generated
    assert "TEXT = 'the remote copy'" in generated
    ops = {op["name"]: op for op in read_report(pytester)["operations"]}
    assert ops["where"]["status"] == "passed"
    assert (ops["where"]["spec"], ops["where"]["pid"]) == (spec, socket_server.pid)
    result.stdout.no_fnmatch_line("*worker error*")


# -- who may connect to a forked worker ------------------------------------------------


def accepted(connect: list[str] | None, user: int | None = None) -> tuple[bool, socket.socket]:
    """Listen on loopback, let this process (or a command as ``user``) connect, and say
    whether the worker-side check takes the connection."""
    from pytest_parexec.remote import peer_is_same_user

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((LOOPBACK, 0))
    server.listen(1)
    port = server.getsockname()[1]
    client: Any = None
    process = None
    try:
        if connect is None:
            client = socket.create_connection((LOOPBACK, port))
        else:
            process = subprocess.Popen([*connect, str(port)], user=user)
        server.settimeout(30)
        conn, _ = server.accept()
        with conn:
            return peer_is_same_user(conn), server
    finally:
        if client is not None:
            client.close()
        if process is not None:
            process.kill()
            process.wait()
        server.close()


#: Connects to 127.0.0.1 at the port given last, then waits (bash, which any user can run).
CONNECT_AND_WAIT = ["bash", "-c", 'exec 3<>"/dev/tcp/127.0.0.1/$0"; sleep 30']


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_a_forked_worker_takes_a_connection_from_its_own_user() -> None:
    assert accepted(None)[0] is True
    assert accepted(CONNECT_AND_WAIT)[0] is True


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.getuid() != 0, reason="needs root to connect as another user"
)
def test_a_forked_worker_refuses_a_connection_from_another_user() -> None:
    # What a worker reads from its first connection is run as code: another local
    # user must not get to run code as the one running pytest.
    assert accepted(CONNECT_AND_WAIT, user=65534)[0] is False
