"""The operation model and the ``@batchable`` decorator.

The decorator only records typed options on an :class:`Operation` and wraps the
function as a session-scoped pytest fixture. Everything that needs the whole
session (other operations, the selected tests) is validated later, at plan time.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, final, overload

import pytest

from .remote import decode, encode, finish_call, start_call

__all__ = [
    "GROUPS",
    "Operation",
    "ParexecError",
    "batchable",
    "infer_group",
    "operation_of",
]

#: The groups, in the order their operations are preferred by the scheduler.
GROUPS: Final = ("models", "logic", "configs", "other", "tests")

#: Keyword rules for inferring a group from an operation's name: the first group
#: one of whose keywords equals a word of the name (singular or plural) wins.
GROUP_KEYWORDS: Final[dict[str, tuple[str, ...]]] = {
    "models": ("model", "schema", "db", "database", "migration", "data", "dataset", "table"),
    "logic": ("service", "controller", "logic", "handler", "api", "route", "server", "worker"),
    "configs": ("config", "settings", "setting", "env", "environment", "conf"),
    "tests": ("test", "generated", "generator"),
}

#: The one parameter name that is not another operation.
TMP_PATH: Final = "tmp_path"

#: Words of a name: snake_case, camelCase, acronyms and their plurals (APIs, DBs).
_WORD = re.compile(r"[A-Z]{2,}s(?![a-z])|[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


class ParexecError(Exception):
    """A usage error of pytest-parexec: bad decorator arguments, a bad plan."""


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def infer_group(name: str) -> str:
    """Return the group for ``name`` by :data:`GROUP_KEYWORDS`, or ``"other"``."""
    words = _words(name)
    singular = {w[:-1] if w.endswith("s") and len(w) > 2 else w for w in words} | set(words)
    for group, keywords in GROUP_KEYWORDS.items():
        if singular.intersection(keywords):
            return group
    return "other"


@final
@dataclasses.dataclass(frozen=True, eq=False)
class Operation:
    """One batchable setup operation, as declared by ``@batchable``."""

    name: str
    function: Callable[..., Any] = dataclasses.field(repr=False)
    group: str
    group_inferred: bool
    #: Operations whose values are passed as arguments, in parameter order.
    params: tuple[str, ...]
    #: Operations that must finish first, without passing their values.
    after: tuple[str, ...]
    wants_tmp_path: bool
    retries: int | None
    timeout: float | None
    is_generator: bool
    #: Fixed keyword arguments: a generator operation's ``source``, a command's text.
    constants: Mapping[str, object] = dataclasses.field(default_factory=dict)
    #: "batchable", "generator" or "command".
    kind: str = "batchable"

    @property
    def depends(self) -> tuple[str, ...]:
        """Every operation that must finish before this one starts."""
        return tuple(dict.fromkeys(self.params + self.after))

    @property
    def module(self) -> str:
        return str(self.function.__module__)

    @property
    def attribute(self) -> str:
        """The module attribute that holds the decorated function."""
        return str(self.function.__name__)

    @property
    def file(self) -> str:
        return str(Path(inspect.getfile(self.function)).resolve())

    @property
    def location(self) -> str:
        """``file:line`` of the definition, for error messages."""
        try:
            line = inspect.getsourcelines(self.function)[1]
        except (OSError, TypeError):  # pragma: no cover - source not available
            return self.file
        return f"{self.file}:{line}"


class ValueProvider(Protocol):
    """What the plugin offers a batchable fixture while it is active."""

    def manages(self, operation: Operation) -> bool:
        """Whether this session planned ``operation`` (else it is computed in-process)."""

    def value(self, operation: Operation) -> object:
        """Block until ``operation`` has a result; return it or raise OperationFailed."""

    def finish(self, operation: Operation) -> None:
        """Run the operation's teardown, if it has one (idempotent)."""


#: Set by the plugin while it manages batchable fixtures for a session.
PROVIDER_KEY: Final = pytest.StashKey["ValueProvider"]()

F = TypeVar("F", bound=Callable[..., Any])


def check_function(
    func: Callable[..., Any], decorator: str, special: tuple[str, ...]
) -> tuple[tuple[str, ...], set[str]]:
    """Refuse functions a worker cannot import or call.

    Return the parameters that name other operations, and which of the
    ``special`` parameter names (tmp_path, source) the function takes.
    """
    where = f"{decorator} {func.__qualname__!r} in {func.__module__}"
    if not inspect.isfunction(func):
        raise ParexecError(f"{where}: {decorator} decorates functions, got {type(func).__name__}")
    if func.__name__ == "<lambda>" or func.__qualname__ != func.__name__:
        home = (
            "of the rootdir's conftest.py or a plugin module"
            if decorator == "@generator"
            else "of a conftest.py, a test module or an importable module"
        )
        raise ParexecError(
            f"{where}: {decorator} functions must be module-level functions, because "
            f"worker processes import them by module and name; move it to the top level {home}"
        )
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise ParexecError(f"{where}: async functions are not supported; use a plain def")
    params: list[str] = []
    specials: set[str] = set()
    allowed = " or ".join(special)
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ParexecError(
                f"{where}: parameter {param.name!r} is {param.kind.description}; each "
                f"parameter must name another batchable operation, or be {allowed}"
            )
        if param.name in special:
            specials.add(param.name)
        elif param.name == "request":
            raise ParexecError(
                f"{where}: 'request' cannot be a parameter; these functions run in worker "
                f"processes and take only other batchable operations and {allowed}"
            )
        else:
            params.append(param.name)
    return tuple(params), specials


def check_options(
    where: str,
    group: str | None,
    after: Iterable[str],
    name: str | None,
    retries: int | None,
    timeout: float | None,
) -> tuple[str, ...]:
    if name is not None and (not isinstance(name, str) or not name.isidentifier()):
        raise ParexecError(f"{where}: name={name!r} must be a Python identifier")
    if group is not None and group not in GROUPS:
        raise ParexecError(f"{where}: unknown group {group!r}; valid groups: {', '.join(GROUPS)}")
    if isinstance(after, str):
        after = (after,)
    after_names = tuple(after)
    for dep in after_names:
        if not isinstance(dep, str) or not dep.isidentifier():
            raise ParexecError(f"{where}: after= takes operation names, got {dep!r}")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise ParexecError(f"{where}: retries={retries!r} must be an integer >= 0")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ParexecError(f"{where}: timeout={timeout!r} must be a number of seconds > 0")
    return after_names


def make_fixture(op: Operation) -> Any:
    """Wrap ``op`` as a session fixture that asks the plugin for the value."""
    dependency_names = tuple(dep for dep in op.depends)

    def parexec_fixture(request: pytest.FixtureRequest, **kwargs: object) -> Generator[object]:
        provider = request.config.stash.get(PROVIDER_KEY, None)
        if provider is None or not provider.manages(op):
            yield from _in_process(op, request, kwargs)
            return
        value = provider.value(op)
        yield value
        provider.finish(op)

    parameters = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [
        inspect.Parameter(dep, inspect.Parameter.POSITIONAL_OR_KEYWORD) for dep in dependency_names
    ]
    wrapper: Any = parexec_fixture
    wrapper.__signature__ = inspect.Signature(parameters)
    wrapper.__module__ = op.function.__module__
    wrapper.__name__ = op.function.__name__
    wrapper.__qualname__ = op.function.__qualname__
    wrapper.__doc__ = op.function.__doc__
    wrapper.__wrapped__ = op.function
    # Read back by the plugin (the Operation) and by worker processes (the function).
    wrapper.__parexec_operation__ = op
    wrapper.__parexec_function__ = op.function
    return pytest.fixture(scope="session", name=op.name)(wrapper)


def _in_process(
    op: Operation, request: pytest.FixtureRequest, kwargs: dict[str, object]
) -> Generator[object]:
    """Without the plugin: compute the value lazily, like a plain session fixture."""
    call_kwargs = {param: kwargs[param] for param in op.params}
    if op.wants_tmp_path:
        factory = request.getfixturevalue("tmp_path_factory")
        call_kwargs[TMP_PATH] = factory.mktemp(op.name)
    value, state = start_call(op.function, call_kwargs)
    yield value
    finish_call(state)


def operation_of(obj: object) -> Operation | None:
    """The operation behind a fixture function, or None for an ordinary fixture."""
    op = getattr(obj, "__parexec_operation__", None)
    return op if isinstance(op, Operation) else None


@overload
def batchable(func: F, /) -> F: ...


@overload
def batchable(
    *,
    group: str | None = None,
    after: Sequence[str] = (),
    name: str | None = None,
    retries: int | None = None,
    timeout: float | None = None,
) -> Callable[[F], F]: ...


def batchable(
    func: Callable[..., Any] | None = None,
    /,
    *,
    group: str | None = None,
    after: Sequence[str] = (),
    name: str | None = None,
    retries: int | None = None,
    timeout: float | None = None,
) -> Any:
    """Declare a session setup operation that pytest-parexec may run in a worker.

    The decorated function becomes a session-scoped fixture named after it (or
    ``name``). Its parameters name other batchable operations, whose values are
    passed in, or ``tmp_path``, a fresh directory for this operation.
    """

    def decorate(function: Callable[..., Any]) -> Any:
        where = f"@batchable {getattr(function, '__qualname__', function)!r}"
        if not inspect.isfunction(function):
            raise ParexecError(f"{where}: @batchable decorates functions, got {type(function).__name__}")
        after_names = check_options(where, group, after, name, retries, timeout)
        params, specials = check_function(function, "@batchable", (TMP_PATH,))
        wants_tmp_path = TMP_PATH in specials
        op_name = name or function.__name__
        if op_name in params or op_name in after_names:
            raise ParexecError(f"{where}: operation {op_name!r} cannot depend on itself")
        op = Operation(
            name=op_name,
            function=function,
            group=group or infer_group(op_name),
            group_inferred=group is None,
            params=params,
            after=after_names,
            wants_tmp_path=wants_tmp_path,
            retries=retries,
            timeout=float(timeout) if timeout is not None else None,
            is_generator=inspect.isgeneratorfunction(function),
        )
        fixture = make_fixture(op)
        for listener in list(_definition_listeners):
            listener(op)
        return fixture

    if func is not None:
        return decorate(func)
    return decorate


#: Called with each new Operation as it is defined (the plugin warms workers).
_definition_listeners: list[Callable[[Operation], None]] = []


def on_definition(listener: Callable[[Operation], None]) -> Callable[[], None]:
    """Subscribe to new definitions; return the function that unsubscribes."""
    _definition_listeners.append(listener)
    return lambda: _definition_listeners.remove(listener)


def roundtrip(name: str, value: object) -> object:
    """Pass ``value`` through the worker codec, as if it had crossed a process boundary."""
    return decode(encode(value, name))
