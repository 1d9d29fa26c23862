"""Coverage of code that runs only inside operations, measured by pytest-cov.

The scenarios run pytest in a subprocess. The project's own CI runs these tests
under ``coverage run`` with ``patch = ["subprocess"]``, which hands its
measurement to every child Python process through COVERAGE_PROCESS_CONFIG (and
a ``.pth`` file that starts coverage.py when it is set). The scenarios remove
that variable (and any other COVERAGE_* setting) so that they see only their
own coverage: pytest-cov's, or none.
"""

from __future__ import annotations

import importlib.util
import re
import textwrap

import pytest

pytest.importorskip("pytest_cov")

HAS_XDIST = importlib.util.find_spec("xdist") is not None

PACKAGE = '''
def build():
    """Called only inside a batchable operation, in a worker process."""
    value = "built"
    return value


def used_by_tests():
    return 1
'''

CONFTEST = """
import os

from pytest_parexec import batchable


@batchable
def built():
    import mypkg

    return mypkg.build(), os.getpid()


@batchable
def other():
    return os.getpid()
"""

TEST = """
import os

import mypkg


def test_it(built, other):
    value, pid = built
    assert value == "built"
    # The operations ran in worker processes, not here.
    assert pid != os.getpid()
    assert other != os.getpid()
    assert mypkg.used_by_tests() == 1
"""


@pytest.fixture
def own_coverage_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No coverage.py measurement inherited from the process running these tests."""
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    monkeypatch.delenv("COVERAGE_FILE", raising=False)
    monkeypatch.delenv("COVERAGE_RCFILE", raising=False)


def make_suite(pytester: pytest.Pytester) -> None:
    pytester.mkpydir("mypkg").joinpath("__init__.py").write_text(textwrap.dedent(PACKAGE))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_it=TEST)


@pytest.mark.usefixtures("own_coverage_only")
@pytest.mark.parametrize(
    "xdist",
    [
        pytest.param((), id="alone"),
        # The operations run in workers of the xdist worker that leads; pytest-cov combines
        # the data of every xdist worker on the controller.
        pytest.param(("-n", "2"), id="xdist", marks=pytest.mark.skipif(not HAS_XDIST, reason="no xdist")),
    ],
)
def test_code_run_only_in_an_operation_is_covered(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    make_suite(pytester)
    result = pytester.runpytest_subprocess(
        *xdist,
        "-p",
        "parexec",
        "--parexec=parallel",
        "--cov=mypkg",
        "--cov-report=term-missing",
        "--cov-fail-under=100",
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    stdout = result.stdout.str()
    # Every line of mypkg ran, build()'s body only in a worker: nothing is missing.
    row = re.search(r"^mypkg[/\\]__init__\.py\s+(\d+)\s+(\d+)\s+(\d+)%(.*)$", stdout, re.M)
    assert row is not None, stdout
    statements, missed, percent, missing = row.groups()
    assert (int(statements), int(missed), int(percent), missing.strip()) == (5, 0, 100, "")
    assert "Required test coverage of 100% reached" in stdout
    # pytest-cov combined the workers' data files: only its own data file is left.
    assert (pytester.path / ".coverage").exists()
    assert sorted(p.name for p in pytester.path.rglob(".coverage*")) == [".coverage"]


@pytest.mark.usefixtures("own_coverage_only")
def test_nothing_of_coverage_is_imported_without_coverage(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    pytester.makeconftest(
        CONFTEST
        + textwrap.dedent(
            """
            import sys

            from pathlib import Path


            @batchable
            def worker_modules():
                return "coverage" in sys.modules


            def pytest_sessionfinish(session):
                # pytest-parexec's own pytest_sessionfinish is trylast and runs after this
                # one: pytest_unconfigure looks again once everything has finished.
                Path("imported-at-sessionfinish").write_text(str("coverage" in sys.modules))


            def pytest_unconfigure(config):
                Path("imported-at-unconfigure").write_text(str("coverage" in sys.modules))
            """
        )
    )
    pytester.makepyfile(
        test_worker="""
        def test_worker(worker_modules):
            assert worker_modules is False
        """
    )
    result = pytester.runpytest_subprocess("-p", "parexec", "-p", "no:cov", "--parexec=parallel")
    result.assert_outcomes(passed=2)
    assert (pytester.path / "imported-at-sessionfinish").read_text() == "False"
    assert (pytester.path / "imported-at-unconfigure").read_text() == "False"
    assert not list(pytester.path.rglob(".coverage*"))


TWO_WORKERS_PACKAGE = '''
def left():
    """Run only by the operation on one worker."""
    return "left"


def right():
    """Run only by the operation on another worker, at the same time."""
    return "right"
'''

TWO_WORKERS_CONFTEST = """
import os
import time
from pathlib import Path

from pytest_parexec import batchable

OUT = Path(__file__).parent / "out"
OUT.mkdir(exist_ok=True)


def rendezvous(me, other):
    # Both operations are running at once, so on two different workers.
    (OUT / me).touch()
    deadline = time.monotonic() + 60
    while not (OUT / other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} did not start")
        time.sleep(0.01)


@batchable
def left_op():
    import mypkg

    rendezvous("left", "right")
    return mypkg.left(), os.getpid()


@batchable
def right_op():
    import mypkg

    rendezvous("right", "left")
    return mypkg.right(), os.getpid()
"""


@pytest.mark.usefixtures("own_coverage_only")
def test_every_worker_measures_into_its_own_data_file(pytester: pytest.Pytester) -> None:
    """Each worker's lines count: none overwrites another's data (they are copies of
    one pytest process, measured by pytest-cov's Coverage, which each must not reuse)."""
    pytester.mkpydir("mypkg").joinpath("__init__.py").write_text(textwrap.dedent(TWO_WORKERS_PACKAGE))
    pytester.makeconftest(TWO_WORKERS_CONFTEST)
    pytester.makepyfile(
        test_it="""
        def test_it(left_op, right_op):
            assert (left_op[0], right_op[0]) == ("left", "right")
            assert left_op[1] != right_op[1]
        """
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "parexec",
        "--parexec=parallel",
        "--parexec-workers=2",
        "--cov=mypkg",
        "--cov-report=term-missing",
    )
    result.assert_outcomes(passed=1)
    row = re.search(r"^mypkg[/\\]__init__\.py\s+(\d+)\s+(\d+)\s+(\d+)%(.*)$", result.stdout.str(), re.M)
    assert row is not None, result.stdout.str()
    statements, missed, percent, missing = row.groups()
    assert (int(statements), int(missed), int(percent), missing.strip()) == (4, 0, 100, "")
    assert sorted(p.name for p in pytester.path.rglob(".coverage*")) == [".coverage"]
