"""pytest-parexec's own test setup."""

from __future__ import annotations

pytest_plugins = ("pytester",)
