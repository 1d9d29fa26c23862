"""A hand-written test that uses the setup command's output."""

from __future__ import annotations


def test_the_setup_command_reports_a_python_version(python_version: str) -> None:
    major, minor, *_ = python_version.strip().split(".")
    assert int(major) >= 3
    assert int(minor) >= 0
