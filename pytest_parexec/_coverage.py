"""Coverage of the code that runs in workers, when the pytest process is measured.

Workers measure themselves with the pytest process's coverage.py settings into
data files named after its data file with a ``parexec.gwN.PID`` suffix, and
save them when they stop. pytest-cov combines every suffixed file in its data
directory when it finishes; under ``coverage run`` they are combined into the
running measurement here. Nothing is imported unless coverage.py is running.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping
from typing import Any


def worker_options() -> dict[str, Any] | None:
    """The settings workers need, or None when this process is not measured."""
    if "coverage" not in sys.modules:
        return None  # costs nothing when coverage is not running
    import coverage

    cov = coverage.Coverage.current()
    if cov is None:
        return None
    config = cov.config
    return {
        "data_file": os.path.abspath(config.data_file),
        "config_file": config.config_file or None,
        "source": list(config.source) if config.source else None,
        "branch": bool(config.branch),
        "include": list(config.run_include) if config.run_include else None,
        "omit": list(config.run_omit) if config.run_omit else None,
    }


def worker_files(options: Mapping[str, Any]) -> list[str]:
    return sorted(glob.glob(glob.escape(options["data_file"]) + ".parexec.*"))


def collect(options: Mapping[str, Any], managed_by_pytest_cov: bool) -> None:
    """Fold the workers' data into this process's measurement; leave no stray file."""
    files = worker_files(options)
    if not files or managed_by_pytest_cov:
        return  # pytest-cov's combine() picks the suffixed files up and removes them
    import coverage

    cov = coverage.Coverage.current()
    if cov is not None:
        cov.combine(data_paths=files, keep=False)
