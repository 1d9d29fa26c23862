"""The value codec (encode/decode) and the call helpers (start_call/finish_call) of remote.py."""

from __future__ import annotations

import collections
import pathlib
import re
import socket
import threading
from collections.abc import Generator
from typing import Any

import execnet
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_parexec import remote
from pytest_parexec.operations import roundtrip
from pytest_parexec.remote import TAG, EncodeError, TeardownError, decode, encode, finish_call, start_call

PROPERTY = settings(max_examples=200, deadline=None, database=None)

# -- strategies -------------------------------------------------------------------

segments = st.text(alphabet="abcxyz._-", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
paths = st.builds(
    lambda cls, root, parts: cls(root + "/".join(parts)),
    st.sampled_from([pathlib.PurePosixPath, pathlib.PosixPath]),
    st.sampled_from(["", "/"]),
    st.lists(segments, max_size=3),
)

# Plain values execnet carries as they are, in the ranges it can carry them.
plain_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**31))
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.just(TAG)
)
#: Values that need a tag to cross execnet (bytearray; ints below -2**31).
uncarried_leaves = st.integers(max_value=-(2**31) - 1) | st.binary(max_size=8).map(bytearray)


def hashable(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.tuples(inner) | st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
        max_leaves=4,
    )


#: Dict keys and set members, paths at any depth (inside tuples and frozensets too).
keys = hashable(plain_leaves | paths)
#: Every hashable encode() promises to carry, paths at any depth.
all_keys = hashable(plain_leaves | paths)


def containers(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.lists(inner, max_size=3).map(tuple)
            | st.dictionaries(keys, inner, max_size=3)
            | st.sets(keys, max_size=3)
            | st.frozensets(keys, max_size=3)
        ),
        max_leaves=12,
    )


#: Values that survive encode, execnet and decode today.
carried_values = containers(plain_leaves | paths, keys)
#: Values that survive encode and decode today (without crossing execnet).
codec_values = containers(plain_leaves | paths | uncarried_leaves, keys)
#: Everything encode() promises to carry.
all_values = containers(plain_leaves | paths | uncarried_leaves, all_keys)


def canonical(value: Any) -> Any:
    """A hashable description of ``value`` that tells types apart (1 from True, list from tuple)."""
    kind = type(value)
    if kind in (list, tuple):
        return (kind.__name__, tuple(canonical(v) for v in value))
    if kind is dict:
        return ("dict", frozenset((canonical(k), canonical(v)) for k, v in value.items()))
    if kind in (set, frozenset):
        return (kind.__name__, frozenset(canonical(v) for v in value))
    if kind is bytearray:
        return ("bytearray", bytes(value))
    if isinstance(value, pathlib.PurePath):
        return (kind.__name__, str(value))
    return (kind.__name__, value)


def only_builtins(value: Any) -> bool:
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        return all(only_builtins(v) for v in value)
    if kind is dict:
        return all(only_builtins(k) and only_builtins(v) for k, v in value.items())
    return kind in (type(None), bool, int, float, complex, str, bytes)


def assert_same(got: Any, expected: Any) -> None:
    assert got == expected
    assert canonical(got) == canonical(expected)


# -- round trips ------------------------------------------------------------------


@PROPERTY
@given(codec_values)
def test_decode_inverts_encode_type_exactly(value: Any) -> None:
    assert_same(decode(encode(value, "op")), value)


@PROPERTY
@given(carried_values)
def test_encoded_values_cross_execnet(value: Any) -> None:
    encoded = encode(value, "op")
    assert only_builtins(encoded)
    crossed = execnet.loads(execnet.dumps(encoded))
    assert_same(decode(crossed), value)


@given(all_values)
def test_every_promised_value_crosses_execnet(value: Any) -> None:
    encoded = encode(value, "op")
    assert only_builtins(encoded)
    assert_same(decode(execnet.loads(execnet.dumps(encoded))), value)


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        [1, (2, [3])],
        (),
        [],
        {},
        b"\x00raw",
        1 + 2j,
        {1, 2},
        frozenset({"a"}),
        {"a": {"b": {"c": [1, (2,)]}}},
        pathlib.PurePosixPath("/etc/hosts"),
        pathlib.PosixPath("relative/dir"),
        {"path": pathlib.PosixPath("/tmp/x")},
        {pathlib.PurePosixPath("key"): 1},
        {pathlib.PosixPath("a"), pathlib.PurePosixPath("b")},
        frozenset({pathlib.PosixPath("a")}),
        {frozenset({pathlib.PosixPath("a")}): {pathlib.PosixPath("b")}},
        [{"deep": ({"deeper": [pathlib.PosixPath("p")]},)}],
        {TAG: 1},
        {TAG: ("path", "PosixPath", "/looks/like/a/tag")},
        {TAG: ("dict", [])},
        {TAG: ("set", [1])},
        {"outer": {TAG: {TAG: pathlib.PosixPath("x")}}},
        {1: "one", (1, "t"): None, (True, 1.0): False},
        {True: 1, 0: False},
    ],
    ids=repr,
)
def test_round_trip_examples(value: Any) -> None:
    encoded = encode(value, "op")
    assert only_builtins(encoded)
    assert_same(decode(execnet.loads(execnet.dumps(encoded))), value)
    assert_same(roundtrip("op", value), value)


def test_paths_are_tagged_not_stringified() -> None:
    assert encode(pathlib.PosixPath("/x"), "op") == {TAG: ("path", "PosixPath", "/x")}
    assert type(decode(encode("/x", "op"))) is str


def test_bytearray_crosses_execnet() -> None:
    value = bytearray(b"x")
    assert_same(decode(execnet.loads(execnet.dumps(encode(value, "op")))), value)


def test_large_negative_int_crosses_execnet() -> None:
    value = -(2**31) - 1
    assert_same(decode(execnet.loads(execnet.dumps(encode(value, "op")))), value)


def test_path_inside_a_tuple_dict_key() -> None:
    value = {(pathlib.PurePosixPath("a"),): 1}
    assert_same(decode(execnet.loads(execnet.dumps(encode(value, "op")))), value)


@pytest.mark.parametrize("kind", [set, frozenset])
def test_path_inside_a_tuple_set_member(kind: type[Any]) -> None:
    value = kind({(1, pathlib.PurePosixPath("a"))})
    encoded = encode(value, "op")
    assert only_builtins(encoded)
    assert_same(decode(execnet.loads(execnet.dumps(encoded))), value)


# -- refusals ------------------------------------------------------------------------


class Custom:
    pass


Point = collections.namedtuple("Point", "x y")


def assert_refused(value: Any, where: str, type_name: str) -> None:
    with pytest.raises(EncodeError) as excinfo:
        encode(value, "make_db")
    message = str(excinfo.value)
    assert "batchable operation 'make_db'" in message
    assert f"{where} is of type {type_name}" in message
    assert "plain data" in message
    assert "ordinary fixture that depends on 'make_db'" in message


def test_refuses_object() -> None:
    assert_refused(object(), "the value", "builtins.object")


def test_refuses_a_socket_in_a_dict() -> None:
    with socket.socket() as conn:
        assert_refused({"conn": conn}, "the value['conn']", "socket.socket")


def test_refuses_a_lock() -> None:
    assert_refused([1, threading.Lock()], "the value[1]", "_thread.lock")


def test_refuses_a_namedtuple() -> None:
    assert_refused({"p": Point(1, 2)}, "the value['p']", f"{__name__}.Point")


def test_refuses_a_custom_class_deep_inside() -> None:
    value = {"a": [0, {"b": (1, 2, {"c": Custom()})}]}
    assert_refused(value, "the value['a'][1]['b'][2]['c']", f"{__name__}.Custom")


def test_refuses_dict_subclasses_and_set_members_and_keys() -> None:
    assert_refused(collections.OrderedDict(a=1), "the value", "collections.OrderedDict")
    assert_refused({Custom()}, "a member of the value", f"{__name__}.Custom")
    assert_refused({"k": {Custom(): 1}}, "a key of the value['k']", f"{__name__}.Custom")


def test_encode_error_is_a_type_error() -> None:
    assert issubclass(EncodeError, TypeError)


@st.composite
def buried(draw: st.DrawFn) -> tuple[Any, str]:
    """An unsupported object at a random depth, and the ``where`` that should name it."""
    value: Any = Custom()
    where = ""
    for _ in range(draw(st.integers(0, 5))):
        shape = draw(st.sampled_from(["list", "tuple", "dict"]))
        before = draw(st.lists(st.integers(0, 9), max_size=2))
        if shape == "dict":
            key = draw(st.text(alphabet="abc", max_size=3))
            value = {**{f"k{i}": v for i, v in enumerate(before)}, key: value}
            where = f"[{key!r}]" + where
        else:
            where = f"[{len(before)}]" + where
            value = [*before, value] if shape == "list" else (*before, value)
    return value, "the value" + where


@PROPERTY
@given(buried())
def test_refusal_says_where(case: tuple[Any, str]) -> None:
    value, where = case
    with pytest.raises(EncodeError, match=re.escape(f"{where} is of type {__name__}.Custom.")):
        encode(value, "op")


# -- start_call and finish_call ----------------------------------------------------------------


def test_plain_function_returns_value_and_no_state() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    value, state = start_call(add, {"a": 1, "b": 2})
    assert (value, state) == (3, None)
    finish_call(state)  # nothing to tear down


def test_generator_yields_value_and_tears_down_on_finish() -> None:
    events: list[str] = []

    def resource(name: str) -> Generator[str]:
        events.append("setup")
        yield f"resource {name}"
        events.append("teardown")

    value, state = start_call(resource, {"name": "x"})
    assert value == "resource x"
    assert events == ["setup"]
    finish_call(state)
    assert events == ["setup", "teardown"]


def test_generator_teardown_error_propagates() -> None:
    def resource() -> Generator[int]:
        yield 1
        raise ValueError("teardown broke")

    _, state = start_call(resource, {})
    with pytest.raises(ValueError, match="teardown broke"):
        finish_call(state)


def test_generator_that_never_yields() -> None:
    def empty() -> Generator[int]:
        return
        yield  # pragma: no cover

    with pytest.raises(TeardownError, match="'empty' returned without yielding"):
        start_call(empty, {})


def test_generator_that_yields_twice() -> None:
    events: list[str] = []

    def twice() -> Generator[int]:
        try:
            yield 1
            yield 2
        finally:
            events.append("closed")

    value, state = start_call(twice, {})
    assert value == 1
    with pytest.raises(TeardownError, match="'twice' yielded more than once"):
        finish_call(state)
    assert events == ["closed"]


def test_setup_error_propagates() -> None:
    def broken() -> int:
        raise RuntimeError("no database")

    with pytest.raises(RuntimeError, match="no database"):
        start_call(broken, {})


def test_one_line() -> None:
    assert remote.one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert remote.one_line(KeyboardInterrupt()) == "KeyboardInterrupt"
