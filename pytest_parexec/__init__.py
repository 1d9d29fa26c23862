"""pytest-parexec: run a test session's expensive setup in parallel.

Mark session setup fixtures with :func:`batchable` and test generators with
:func:`generator`; ``pytest -p parexec`` plans the operations the selected tests
need and runs them on worker processes.
"""

from __future__ import annotations

from .executor import Status
from .generators import generator
from .operations import GROUPS, ParexecError, batchable, infer_group
from .planner import PlanError
from .remote import EncodeError

__version__ = "0.1.0"

__all__ = [
    "GROUPS",
    "EncodeError",
    "ParexecError",
    "PlanError",
    "Status",
    "__version__",
    "batchable",
    "generator",
    "infer_group",
]
