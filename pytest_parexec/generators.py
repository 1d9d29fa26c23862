"""``@generator``: functions that write test files, run in parallel before collection.

A generator returns ``{relative path: file content}``. The pytest process writes
the files (atomically, only when changed), remembers which generator owns which
file, deletes files a generator no longer produces, refuses to overwrite files it
does not own, and skips operations whose inputs did not change (``up-to-date``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Final, TypeVar, final, overload

from ._files import atomic_write
from .operations import GROUPS, Operation, ParexecError, check_function
from .remote import encode

__all__ = [
    "RECORD_KEY",
    "FileRecord",
    "GeneratorSpec",
    "OutputError",
    "expand",
    "generator",
    "generator_spec",
    "on_generator_definition",
]

RECORD_KEY: Final = "parexec/generated"
RECORD_VERSION: Final = 1
SOURCE: Final = "source"

F = TypeVar("F", bound=Callable[..., Any])


@final
@dataclasses.dataclass(frozen=True, eq=False)
class GeneratorSpec:
    """A ``@generator`` declaration: expanded to one operation per input file."""

    name: str
    function: Callable[..., Any] = dataclasses.field(repr=False)
    #: Glob patterns relative to the rootdir; None: the generator runs once.
    inputs: tuple[str, ...] | None
    group: str
    #: Batchable operations whose values are passed in.
    params: tuple[str, ...]

    @property
    def file(self) -> str:
        import inspect

        return str(Path(inspect.getfile(self.function)).resolve())


_generator_listeners: list[Callable[[GeneratorSpec], None]] = []


def on_generator_definition(listener: Callable[[GeneratorSpec], None]) -> Callable[[], None]:
    """Subscribe to new generator definitions; return the function that unsubscribes."""
    _generator_listeners.append(listener)
    return lambda: _generator_listeners.remove(listener)


def generator_spec(obj: object) -> GeneratorSpec | None:
    spec = getattr(obj, "__parexec_generator__", None) if callable(obj) else None
    return spec if isinstance(spec, GeneratorSpec) else None


@overload
def generator(func: F, /) -> F: ...


@overload
def generator(
    *, inputs: str | Sequence[str] | None = None, group: str = "tests", name: str | None = None
) -> Callable[[F], F]: ...


def generator(
    func: Callable[..., Any] | None = None,
    /,
    *,
    inputs: str | Sequence[str] | None = None,
    group: str = "tests",
    name: str | None = None,
) -> Any:
    """Declare a test generator that runs in a worker before collection.

    It returns ``{path relative to the rootdir: content}``. With ``inputs`` (a glob
    or a list of globs, relative to the rootdir) it runs once per matching file and
    receives it as ``source`` (a pathlib.Path); its other parameters name batchable
    operations.
    """

    def decorate(function: Callable[..., Any]) -> Any:
        where = f"@generator {getattr(function, '__qualname__', function)!r}"
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise ParexecError(f"{where}: name={name!r} must be a Python identifier")
        if group not in GROUPS:
            raise ParexecError(f"{where}: unknown group {group!r}; valid groups: {', '.join(GROUPS)}")
        patterns: tuple[str, ...] | None
        if inputs is None:
            patterns = None
        else:
            patterns = (inputs,) if isinstance(inputs, str) else tuple(inputs)
            if not patterns or not all(isinstance(p, str) and p for p in patterns):
                raise ParexecError(f"{where}: inputs= takes a glob or a list of globs, got {inputs!r}")
            for pattern in patterns:
                if os.path.isabs(pattern) or ".." in PurePosixPath(pattern).parts:
                    raise ParexecError(
                        f"{where}: inputs pattern {pattern!r} must be relative to the rootdir, inside it"
                    )
        params, specials = check_function(function, "@generator", (SOURCE,))
        if patterns is not None and SOURCE not in specials:
            raise ParexecError(
                f"{where}: with inputs= the function receives each input file: add a 'source' parameter"
            )
        if patterns is None and SOURCE in specials:
            raise ParexecError(f"{where}: 'source' is only given with inputs=; add inputs= or remove it")
        spec = GeneratorSpec(
            name=name or function.__name__,
            function=function,
            inputs=patterns,
            group=group,
            params=params,
        )
        # Like pluggy's markers: the function stays what it is, with the spec attached.
        function.__parexec_generator__ = spec  # type: ignore[attr-defined]
        for listener in list(_generator_listeners):
            listener(spec)
        return function

    if func is not None:
        return decorate(func)
    return decorate


def expand(spec: GeneratorSpec, rootdir: Path) -> list[Operation]:
    """One operation per input file (``name[relative/path]``), or one without inputs."""
    if spec.inputs is None:
        sources: list[Path | None] = [None]
    else:
        found: dict[str, Path] = {}
        for pattern in spec.inputs:
            for path in sorted(rootdir.glob(pattern)):
                if path.is_file():
                    found.setdefault(path.relative_to(rootdir).as_posix(), path)
        sources = [found[key] for key in sorted(found)]
    operations = []
    for source in sources:
        label = spec.name if source is None else f"{spec.name}[{source.relative_to(rootdir).as_posix()}]"
        operations.append(
            Operation(
                name=label,
                function=spec.function,
                group=spec.group,
                group_inferred=False,
                params=spec.params,
                after=(),
                wants_tmp_path=False,
                retries=None,
                timeout=None,
                is_generator=False,
                constants={} if source is None else {SOURCE: source},
                kind="generator",
            )
        )
    return operations


# -- the files ------------------------------------------------------------------


class OutputError(Exception):
    """A generator's return value that cannot be written: nothing of it is written."""


def digest(data: bytes | str) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def _canonical(value: Any) -> Any:
    """A JSON-able form of an encoded value that is the same whenever the value is."""
    if isinstance(value, dict):
        items = [[_canonical(k), _canonical(v)] for k, v in value.items()]
        return {"d": sorted(items, key=lambda kv: json.dumps(kv, sort_keys=True))}
    if isinstance(value, set | frozenset):
        return {"s": sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))}
    if isinstance(value, list | tuple):
        return {"l" if isinstance(value, list) else "t": [_canonical(v) for v in value]}
    if isinstance(value, bytes | bytearray):
        return {"b": bytes(value).hex()}
    if isinstance(value, complex):
        return {"c": [value.real, value.imag]}
    if isinstance(value, float):
        return {"f": repr(value)}
    return value


def fingerprint(value: object) -> str:
    """A stable hash of encoded dependency values, for up-to-date checks."""
    return digest(json.dumps(_canonical(value), sort_keys=True))


@final
@dataclasses.dataclass
class Written:
    """What writing one generator operation's output did."""

    written: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)


@final
class FileRecord:
    """Which generator wrote which file, and what each operation's inputs were.

    Kept in pytest's cache under RECORD_KEY, so stale files can be deleted and
    unchanged operations skipped in the next run.
    """

    def __init__(self, rootdir: Path, data: Mapping[str, Any] | None = None) -> None:
        self.rootdir = rootdir
        #: generator name -> {relative path: sha256 of what it wrote}
        self.files: dict[str, dict[str, str]] = {}
        #: operation name -> {"generator", "inputs", "files"}
        self.operations: dict[str, dict[str, Any]] = {}
        if data and data.get("version") == RECORD_VERSION:
            files = data.get("files")
            ops = data.get("operations")
            if isinstance(files, dict) and isinstance(ops, dict):
                self.files = {g: dict(f) for g, f in files.items() if isinstance(f, dict)}
                self.operations = {n: dict(o) for n, o in ops.items() if isinstance(o, dict)}

    @classmethod
    def load(cls, cache: Any, rootdir: Path) -> FileRecord:
        return cls(rootdir, cache.get(RECORD_KEY, None) if cache is not None else None)

    def save(self, cache: Any) -> None:
        if cache is not None:
            cache.set(
                RECORD_KEY, {"version": RECORD_VERSION, "files": self.files, "operations": self.operations}
            )

    def owner(self, relative: str) -> str | None:
        return next((g for g, files in self.files.items() if relative in files), None)

    def inputs_key(self, op: Operation, spec: GeneratorSpec, args: Mapping[str, object]) -> dict[str, str]:
        """What must be unchanged for ``op`` to be up to date."""
        key = {"generator": digest(Path(spec.file).read_bytes()), "dependencies": fingerprint(dict(args))}
        source = op.constants.get(SOURCE)
        if source is not None:
            key["input"] = digest(Path(str(source)).read_bytes())
        return key

    def up_to_date(self, op: Operation, spec: GeneratorSpec, args: Mapping[str, object]) -> bool:
        """Same inputs as last time, and every file it wrote still on disk as written."""
        entry = self.operations.get(op.name)
        if entry is None or entry.get("generator") != spec.name:
            return False
        try:
            if entry.get("inputs") != self.inputs_key(op, spec, args):
                return False
        except OSError:
            return False
        owned = self.files.get(spec.name, {})
        for relative in entry.get("files", []):
            path = self.rootdir / relative
            if relative not in owned or not path.is_file() or digest(path.read_bytes()) != owned[relative]:
                return False
        return True

    def check(self, spec: GeneratorSpec, op_name: str, value: object) -> dict[str, str]:
        """Validate a generator's return value; raise OutputError saying what is wrong."""
        if not isinstance(value, dict):
            raise OutputError(
                f"generator operation {op_name!r} returned {type(value).__name__}; a generator "
                "returns a dict mapping paths relative to the rootdir to file contents (str)"
            )
        root = self.rootdir.resolve()
        outputs: dict[str, str] = {}
        for raw, content in value.items():
            if not isinstance(raw, str | os.PathLike):
                raise OutputError(f"generator operation {op_name!r}: the path {raw!r} is not a str or a path")
            text = os.fspath(raw)
            if os.path.isabs(text):
                raise OutputError(
                    f"generator operation {op_name!r}: refusing to write {text!r}: the path is absolute; "
                    "return paths relative to the rootdir"
                )
            pure = PurePosixPath(Path(text).as_posix())
            if ".." in pure.parts:
                raise OutputError(
                    f"generator operation {op_name!r}: refusing to write {text!r}: '..' leads outside "
                    f"the rootdir {root}"
                )
            target = (root / pure).resolve()
            if not target.is_relative_to(root):
                raise OutputError(
                    f"generator operation {op_name!r}: refusing to write {text!r}: a symlink leads "
                    f"outside the rootdir {root} (to {target})"
                )
            if not isinstance(content, str):
                raise OutputError(
                    f"generator operation {op_name!r}: the content of {text!r} is "
                    f"{type(content).__name__}; file contents must be str"
                )
            relative = pure.as_posix()
            owner = self.owner(relative)
            existing = root / pure
            same = existing.is_file() and existing.read_bytes() == content.encode("utf-8")
            # A file with exactly this content is adopted (e.g. after --cache-clear).
            if existing.exists() and owner != spec.name and not same:
                who = f"generator {owner!r}" if owner else "no generator (a hand-written file?)"
                raise OutputError(
                    f"generator operation {op_name!r}: refusing to overwrite {relative!r}, which was "
                    f"written by {who}; delete or move it, or have the generator write elsewhere"
                )
            outputs[relative] = content
        return outputs

    def write(
        self, spec: GeneratorSpec, op_name: str, outputs: Mapping[str, str], inputs: dict[str, str]
    ) -> Written:
        """Write ``outputs`` atomically, only files whose content changed."""
        done = Written()
        owned = self.files.setdefault(spec.name, {})
        for relative, content in sorted(outputs.items()):
            path = self.rootdir / relative
            data = content.encode("utf-8")
            if path.is_file() and path.read_bytes() == data:
                done.unchanged.append(relative)
            else:
                atomic_write(path, data)
                done.written.append(relative)
            owned[relative] = digest(data)
        self.operations[op_name] = {"generator": spec.name, "inputs": inputs, "files": sorted(outputs)}
        return done

    def keep(self, op_name: str) -> list[str]:
        """An up-to-date operation: its files stay as they are."""
        return list(self.operations.get(op_name, {}).get("files", []))

    def delete_stale(self, spec: GeneratorSpec, current_ops: set[str], failed_ops: set[str]) -> list[str]:
        """Delete files ``spec`` wrote before and no operation of it produces now.

        Files of failed operations are kept as they were.
        """
        keep: set[str] = set()
        for name, entry in list(self.operations.items()):
            if entry.get("generator") != spec.name:
                continue
            if name in current_ops:
                keep.update(entry.get("files", []))
            else:
                del self.operations[name]  # its input is gone
        for name in failed_ops:
            keep.update(self.operations.get(name, {}).get("files", []))
        deleted = []
        owned = self.files.get(spec.name, {})
        for relative in sorted(set(owned) - keep):
            path = self.rootdir / relative
            if path.is_file() or path.is_symlink():
                path.unlink()
                deleted.append(relative)
            del owned[relative]
        return deleted


def encoded_constants(op: Operation) -> dict[str, object]:
    """An operation's constants, encoded for the executor."""
    return {key: encode(value, op.name) for key, value in op.constants.items()}
