"""Group inference and the decorator-time validation of ``@batchable``."""

from __future__ import annotations

import itertools
import re
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_parexec import operations
from pytest_parexec.operations import (
    GROUP_KEYWORDS,
    GROUPS,
    Operation,
    ParexecError,
    batchable,
    infer_group,
    on_definition,
    operation_of,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)

# -- infer_group ------------------------------------------------------------------

KEYWORDS = [(word, group) for group, words in GROUP_KEYWORDS.items() for word in words]


@pytest.mark.parametrize(
    ("name", "group"),
    [
        *[(w, "models") for w in ("model", "schema", "db", "migration", "data")],
        *[(w, "logic") for w in ("service", "controller", "logic", "handler", "api", "route")],
        *[(w, "configs") for w in ("config", "settings", "env")],
        *[(w, "tests") for w in ("test", "generated")],
        ("other", "other"),
        ("user_cache", "other"),
        ("make_db_schema", "models"),
        ("create_user_models", "models"),
        ("userService", "logic"),
        ("HTTPHandler", "logic"),
        ("load_API_routes", "logic"),
        ("appConfig", "configs"),
        ("APP_SETTINGS", "configs"),
        ("envVars", "configs"),
        ("generated_tests", "tests"),
        ("db2", "models"),
        ("seedDB", "models"),
    ],
)
def test_infer_group_examples(name: str, group: str) -> None:
    assert infer_group(name) == group


@pytest.mark.parametrize(
    "name", ["dataclass", "datastore", "modeling", "testing", "latest", "contest", "apiary", "environ"]
)
def test_infer_group_matches_whole_words_only(name: str) -> None:
    assert infer_group(name) == "other"


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("test_db", "models"),  # models before tests
        ("db_service", "models"),  # models before logic
        ("api_config", "logic"),  # logic before configs
        ("config_test", "configs"),  # configs before tests
        ("generated_settings_for_api_models", "models"),
    ],
)
def test_infer_group_earlier_group_wins(name: str, group: str) -> None:
    assert infer_group(name) == group


@pytest.mark.parametrize(("keyword", "group"), KEYWORDS, ids=[k for k, _ in KEYWORDS])
@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda k: k, id="bare"),
        pytest.param(lambda k: f"make_{k}_fixture", id="snake"),
        pytest.param(lambda k: f"make{k.capitalize()}Fixture", id="camel"),
        pytest.param(lambda k: f"make{k.upper()}Fixture", id="acronym"),
        pytest.param(lambda k: f"MAKE_{k.upper()}_FIXTURE", id="constant"),
    ],
)
def test_every_keyword_in_every_spelling(keyword: str, group: str, spell: Callable[[str], str]) -> None:
    assert infer_group(spell(keyword)) == group


@pytest.mark.parametrize(
    ("keyword", "group"),
    [pytest.param(k, g, id=k) for k, g in KEYWORDS],
)
@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda k: f"{k}s", id="bare"),
        pytest.param(lambda k: f"all_{k}s", id="snake"),
        pytest.param(lambda k: f"all{k.capitalize()}s", id="camel"),
    ],
)
def test_every_keyword_plural(keyword: str, group: str, spell: Callable[[str], str]) -> None:
    assert infer_group(spell(keyword)) == group


@pytest.mark.parametrize(("name", "group"), [("fakeAPIs", "logic"), ("seedDBs", "models")])
def test_acronym_plurals_in_camel_case(name: str, group: str) -> None:
    assert infer_group(name) == group


FILLERS = ["make", "user", "cache", "big", "client", "queue", "fixture", "pool", "v2", "x"]


@st.composite
def named(draw: st.DrawFn) -> tuple[str, str]:
    """A name of keywords (singular or plural) and filler words, and its expected group."""
    words = draw(
        st.lists(
            st.sampled_from(FILLERS)
            | st.sampled_from(KEYWORDS).map(lambda kg: kg[0])
            # Plurals of 2-letter keywords are a known bug (test_every_keyword_plural).
            | st.sampled_from([k for k, _ in KEYWORDS if len(k) > 2]).map(lambda k: k + "s"),
            min_size=1,
            max_size=5,
        )
    )
    style = draw(st.sampled_from(["snake", "camel", "Pascal", "CONSTANT"]))
    if style == "snake":
        name = "_".join(words)
    elif style == "camel":
        name = words[0] + "".join(w.capitalize() for w in words[1:])
    elif style == "Pascal":
        name = "".join(w.capitalize() for w in words)
    else:
        name = "_".join(w.upper() for w in words)
    forms = set(words) | {w[:-1] for w in words if w.endswith("s")}
    expected = next((g for g, kws in GROUP_KEYWORDS.items() if forms & set(kws)), "other")
    return name, expected


@PROPERTY
@given(named())
def test_infer_group_first_matching_group_wins(case: tuple[str, str]) -> None:
    name, expected = case
    assert infer_group(name) == expected
    assert infer_group(name) in GROUPS


# -- defining operations in throwaway modules -------------------------------------------

_counter = itertools.count()


@pytest.fixture
def listeners(monkeypatch: pytest.MonkeyPatch) -> list[Operation]:
    """No plugin listeners (no workers warm up) while the test defines operations; record them."""
    seen: list[Operation] = []
    monkeypatch.setattr(operations, "_definition_listeners", [seen.append])
    return seen


@pytest.fixture
def define(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, listeners: list[Operation]
) -> Callable[[str], types.ModuleType]:
    """Execute source text as a fresh importable module, so its functions are module-level."""

    def make(source: str) -> types.ModuleType:
        name = f"parexec_defs_{next(_counter)}"
        path = tmp_path / f"{name}.py"
        text = "from pytest_parexec import batchable\n" + textwrap.dedent(source)
        path.write_text(text)
        module = types.ModuleType(name)
        module.__file__ = str(path)
        monkeypatch.setitem(sys.modules, name, module)
        exec(compile(text, str(path), "exec"), module.__dict__)
        return module

    return make


def test_module_level_function_becomes_a_fixture_with_its_operation(
    define: Callable[[str], types.ModuleType], listeners: list[Operation]
) -> None:
    mod = define(
        """
        @batchable
        def schema(tmp_path):
            '''Create the schema.'''
            return 1

        @batchable(group="configs", after=["schema", "warm_cache"], retries=2, timeout=3)
        def service(schema, *, other):
            yield schema
        """
    )
    schema = operation_of(mod.schema)
    service = operation_of(mod.service)
    assert schema is not None
    assert service is not None
    assert listeners == [schema, service]

    assert schema.name == "schema"
    assert schema.group == "models"
    assert schema.group_inferred
    assert schema.params == ()
    assert schema.after == ()
    assert schema.depends == ()
    assert schema.wants_tmp_path
    assert not schema.is_generator
    assert (schema.retries, schema.timeout) == (None, None)
    assert schema.module == mod.__name__
    assert schema.attribute == "schema"
    assert schema.file == str(Path(mod.__file__).resolve())
    assert schema.location == f"{schema.file}:3"  # the decorator's line, as inspect reports it
    assert schema.function.__doc__ == "Create the schema."
    assert schema.function(tmp_path=None) == 1

    assert service.name == "service"
    assert service.group == "configs"
    assert not service.group_inferred
    assert service.params == ("schema", "other")
    assert service.after == ("schema", "warm_cache")
    assert service.depends == ("schema", "other", "warm_cache")
    assert not service.wants_tmp_path
    assert service.is_generator
    assert service.retries == 2
    assert service.timeout == 3.0
    assert type(service.timeout) is float

    # What the module holds is a pytest fixture definition, which refuses direct calls.
    with pytest.raises(pytest.fail.Exception, match="called directly"):
        mod.schema()


def test_name_option_and_single_after_string(define: Callable[[str], types.ModuleType]) -> None:
    mod = define(
        """
        @batchable(name="db", after="migrations")
        def make_database():
            return "db"
        """
    )
    op = operation_of(mod.make_database)
    assert op is not None
    assert op.name == "db"
    assert op.attribute == "make_database"
    assert op.after == ("migrations",)
    assert op.group == "models"


def test_group_is_inferred_from_the_operation_name(define: Callable[[str], types.ModuleType]) -> None:
    mod = define(
        """
        @batchable(name="api_server")
        def make():
            return 1
        """
    )
    op = operation_of(mod.make)
    assert op is not None
    assert (op.group, op.group_inferred) == ("logic", True)


def test_operation_of_other_objects_is_none() -> None:
    def plain() -> None: ...

    @pytest.fixture
    def ordinary() -> None: ...

    assert operation_of(plain) is None
    assert operation_of(ordinary) is None
    assert operation_of(object()) is None


def test_on_definition_subscribes_and_unsubscribes(
    define: Callable[[str], types.ModuleType], listeners: list[Operation]
) -> None:
    extra: list[Operation] = []
    unsubscribe = on_definition(extra.append)
    define("@batchable\ndef one():\n    return 1\n")
    unsubscribe()
    define("@batchable\ndef two():\n    return 2\n")
    assert [op.name for op in extra] == ["one"]
    assert [op.name for op in listeners] == ["one", "two"]


def test_lambda_is_refused(listeners: list[Operation]) -> None:
    with pytest.raises(ParexecError, match="must be module-level functions") as excinfo:
        batchable(lambda: 1)
    assert "<lambda>'" in str(excinfo.value)
    assert listeners == []


def test_nested_function_is_refused(listeners: list[Operation]) -> None:
    with pytest.raises(ParexecError) as excinfo:

        @batchable
        def inner() -> int:
            return 1

    message = str(excinfo.value)
    assert "test_nested_function_is_refused.<locals>.inner" in message
    assert "module-level" in message
    assert "conftest.py" in message
    assert listeners == []


REFUSALS = {
    "method": (
        """
        class Holder:
            @batchable
            def method(self):
                return 1
        """,
        ["'Holder.method'", "must be module-level functions"],
    ),
    "nested": (
        """
        def outer():
            @batchable
            def inner():
                return 1
        outer()
        """,
        ["'outer.<locals>.inner'", "must be module-level functions"],
    ),
    "lambda": ("value = batchable(lambda: 1)", ["'<lambda>'", "module-level"]),
    "async": (
        "@batchable\nasync def db():\n    return 1\n",
        ["'db'", "async functions are not supported"],
    ),
    "bad group": (
        "@batchable(group='model')\ndef db():\n    return 1\n",
        ["@batchable 'db'", "unknown group 'model'", "valid groups: models, logic, configs, other, tests"],
    ),
    "*args": (
        "@batchable\ndef db(*args):\n    return 1\n",
        ["'db'", "parameter 'args' is variadic positional", "another batchable operation"],
    ),
    "**kwargs": (
        "@batchable\ndef db(**kwargs):\n    return 1\n",
        ["'db'", "parameter 'kwargs' is variadic keyword"],
    ),
    "positional-only": (
        "@batchable\ndef db(schema, /):\n    return 1\n",
        ["'db'", "parameter 'schema' is positional-only"],
    ),
    "request": (
        "@batchable\ndef db(schema, request):\n    return 1\n",
        ["'db'", "'request' cannot be a parameter", "worker processes"],
    ),
    "self parameter": (
        "@batchable\ndef db(db):\n    return 1\n",
        ["operation 'db' cannot depend on itself"],
    ),
    "self after": (
        "@batchable(after=['db'])\ndef db():\n    return 1\n",
        ["operation 'db' cannot depend on itself"],
    ),
    "self by name": (
        "@batchable(name='db')\ndef make(db):\n    return 1\n",
        ["@batchable 'make'", "operation 'db' cannot depend on itself"],
    ),
    "name with space": ("@batchable(name='not valid')\ndef db():\n    return 1\n", ["name='not valid'"]),
    "name digit": ("@batchable(name='1st')\ndef db():\n    return 1\n", ["name='1st'"]),
    "name empty": ("@batchable(name='')\ndef db():\n    return 1\n", ["name=''"]),
    "name int": ("@batchable(name=3)\ndef db():\n    return 1\n", ["name=3 must be a Python identifier"]),
    "after dash": (
        "@batchable(after=['a-b'])\ndef db():\n    return 1\n",
        ["after= takes operation names, got 'a-b'"],
    ),
    "after int": (
        "@batchable(after=[3])\ndef db():\n    return 1\n",
        ["after= takes operation names, got 3"],
    ),
    "retries -1": (
        "@batchable(retries=-1)\ndef db():\n    return 1\n",
        ["retries=-1 must be an integer >= 0"],
    ),
    "retries bool": ("@batchable(retries=True)\ndef db():\n    return 1\n", ["retries=True must be"]),
    "retries float": ("@batchable(retries=1.5)\ndef db():\n    return 1\n", ["retries=1.5 must be"]),
    "retries str": ("@batchable(retries='2')\ndef db():\n    return 1\n", ["retries='2' must be"]),
    "timeout 0": (
        "@batchable(timeout=0)\ndef db():\n    return 1\n",
        ["timeout=0 must be a number of seconds > 0"],
    ),
    "timeout -1.5": ("@batchable(timeout=-1.5)\ndef db():\n    return 1\n", ["timeout=-1.5 must be"]),
    "timeout bool": ("@batchable(timeout=True)\ndef db():\n    return 1\n", ["timeout=True must be"]),
    "timeout str": ("@batchable(timeout='5')\ndef db():\n    return 1\n", ["timeout='5' must be"]),
}


@pytest.mark.parametrize(("source", "fragments"), REFUSALS.values(), ids=REFUSALS.keys())
def test_batchable_refuses(
    define: Callable[[str], types.ModuleType],
    listeners: list[Operation],
    source: str,
    fragments: list[str],
) -> None:
    with pytest.raises(ParexecError) as excinfo:
        define(source)
    message = str(excinfo.value)
    assert message.startswith("@batchable ")
    for fragment in fragments:
        assert fragment in message
    assert listeners == []


@pytest.mark.parametrize(
    "source",
    [
        "import functools\nvalue = batchable(functools.partial(int, '1'))",
        "class Call:\n    def __call__(self):\n        return 1\nvalue = batchable(Call())",
    ],
    ids=["partial", "callable instance"],
)
def test_batchable_refuses_callables_that_are_not_functions(
    define: Callable[[str], types.ModuleType], listeners: list[Operation], source: str
) -> None:
    with pytest.raises(ParexecError, match="@batchable decorates functions, got "):
        define(source)
    assert listeners == []


def test_batchable_refuses_nan_timeout(
    define: Callable[[str], types.ModuleType], listeners: list[Operation]
) -> None:
    with pytest.raises(ParexecError, match=re.escape("timeout=nan must be a number of seconds > 0")):
        define("@batchable(timeout=float('nan'))\ndef db():\n    return 1\n")
    assert listeners == []


@pytest.mark.parametrize("retries", [0, 5])
@pytest.mark.parametrize("timeout", [None, 0.001, 10])
def test_batchable_accepts_valid_options(
    define: Callable[[str], types.ModuleType], retries: int, timeout: float | None
) -> None:
    mod = define(f"@batchable(retries={retries}, timeout={timeout})\ndef db():\n    return 1\n")
    op = operation_of(mod.db)
    assert op is not None
    assert op.retries == retries
    assert op.timeout == timeout


def test_parexec_error_is_exported() -> None:
    import pytest_parexec

    assert pytest_parexec.ParexecError is ParexecError
    assert pytest_parexec.infer_group is infer_group
    assert pytest_parexec.GROUPS == GROUPS
