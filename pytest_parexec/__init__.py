"""pytest-parexec: run a test session's expensive setup in parallel.

Mark session setup fixtures with :func:`batchable` and test generators with
:func:`generator`; ``pytest -p parexec`` plans the operations the selected tests
need and runs them on worker processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .generators import generator
from .operations import GROUPS, ParexecError, batchable, infer_group

if TYPE_CHECKING:
    from .executor import Status
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


def __getattr__(name: str) -> Any:
    """Names that pull in more than the decorators are imported on first use."""
    if name == "Status":
        from .executor import Status

        return Status
    if name == "PlanError":
        from .planner import PlanError

        return PlanError
    if name == "EncodeError":
        from .remote import EncodeError

        return EncodeError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
