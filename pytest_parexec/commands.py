"""Setup commands from the ``parexec_commands`` ini option.

One per line: ``NAME [GROUP] (after A, B): COMMAND``; group and after are
optional. Each becomes a batchable operation and a session fixture named NAME
whose value is the command's standard output.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from typing import Final

from .operations import GROUPS, Operation, infer_group

__all__ = ["SYNTAX", "CommandError", "CommandFailed", "parse_commands", "run_command"]

SYNTAX: Final = "NAME [GROUP] (after A, B): COMMAND   (group and after are optional)"
#: How many lines of a failed command's output its error shows.
TAIL_LINES: Final = 20

_LINE = re.compile(
    r"""^\s*(?P<name>[A-Za-z_]\w*)
        \s*(?:\[\s*(?P<group>[^\]]*?)\s*\])?
        \s*(?:\(\s*after\s+(?P<after>[^)]*)\))?
        \s*:\s*(?P<command>\S.*?)\s*$""",
    re.VERBOSE,
)


class CommandError(Exception):
    """A malformed ``parexec_commands`` line."""


class CommandFailed(Exception):
    """A setup command that exited with a non-zero status."""

    #: Its message says everything: no traceback (see remote.format_error).
    parexec_no_traceback = True


def parse_commands(lines: Iterable[str]) -> list[Operation]:
    """Parse the ini lines; raise CommandError quoting a bad line and showing the syntax."""
    operations: list[Operation] = []
    seen: set[str] = set()
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise CommandError(f"parexec_commands: cannot parse {line!r}; the syntax is {SYNTAX}")
        name = match["name"]
        group = match["group"]
        if group is not None and group not in GROUPS:
            raise CommandError(
                f"parexec_commands: {line!r}: unknown group {group!r}; valid groups: {', '.join(GROUPS)}"
            )
        after = tuple(a.strip() for a in (match["after"] or "").split(",") if a.strip())
        for dep in after:
            if not dep.isidentifier():
                raise CommandError(
                    f"parexec_commands: {line!r}: {dep!r} in (after ...) is not an operation name; "
                    f"the syntax is {SYNTAX}"
                )
        if name in seen:
            raise CommandError(f"parexec_commands: {line!r}: a command named {name!r} is defined twice")
        seen.add(name)
        operations.append(
            Operation(
                name=name,
                function=run_command,
                group=group or infer_group(name),
                group_inferred=group is None,
                params=(),
                after=after,
                wants_tmp_path=False,
                retries=None,
                timeout=None,
                is_generator=False,
                constants={"name": name, "command": match["command"]},
                kind="command",
            )
        )
    return operations


def _tail(text: str) -> str:
    lines = text.rstrip().splitlines()[-TAIL_LINES:]
    return "\n".join(f"  {line}" for line in lines) if lines else "  (nothing)"


def run_command(name: str, command: str, cwd: str | None = None) -> str:
    """Run ``command`` through the shell in ``cwd`` (the worker's: the rootdir); return its stdout."""
    done = subprocess.run(
        command,
        shell=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,  # never wait on pytest's terminal
        capture_output=True,
        encoding="utf-8",
        errors="replace",  # a command's bytes are its business
        check=False,
    )
    if done.returncode != 0:
        raise CommandFailed(
            f"setup command {name!r} ({command}) exited with status {done.returncode}\n"
            f"last lines of its stderr:\n{_tail(done.stderr)}\n"
            f"last lines of its stdout:\n{_tail(done.stdout)}"
        )
    return done.stdout
