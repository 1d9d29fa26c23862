"""Learned durations: kept in pytest's cache, smoothed over runs, never trusted blindly.

Unit tests use a dict-backed fake of ``config.cache``; acceptance tests run pytest
in a subprocess and look at ``.pytest_cache/v/parexec/durations`` and the JSON report.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
from _support import pytester_with_only_parexec  # noqa: F401 - the pytester fixture

from pytest_parexec.history import CACHE_KEY, SMOOTHING, History, ParexecWarning


class FakeCache:
    """What History needs of pytest's Cache: get with a default, and set."""

    def __init__(self, **entries: object) -> None:
        self.entries: dict[str, object] = dict(entries)
        self.sets = 0

    def get(self, key: str, default: object) -> object:
        return self.entries.get(key, default)

    def set(self, key: str, value: object) -> None:
        # Through JSON, like the real cache: only what survives it is kept.
        self.entries[key] = json.loads(json.dumps(value))
        self.sets += 1


def cache_with(entry: object) -> FakeCache:
    return FakeCache(**{CACHE_KEY: entry})


def load_quietly(cache: Any) -> History:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return History.load(cache)


# -- load ------------------------------------------------------------------------


def test_cache_key_is_under_parexec() -> None:
    assert CACHE_KEY.startswith("parexec/")


def test_no_cache_and_no_entry_give_an_empty_history_without_warning() -> None:
    for cache in (None, FakeCache()):
        history = load_quietly(cache)
        assert history.durations == {}
        assert history.worker_start_s is None


def test_a_valid_entry_is_loaded() -> None:
    cache = cache_with(
        {"version": 1, "operations": {"schema_db": 1.5, "app_config": 0}, "worker_start_s": 0.4}
    )
    history = load_quietly(cache)
    assert history.durations == {"schema_db": 1.5, "app_config": 0.0}
    assert all(type(value) is float for value in history.durations.values())
    assert history.worker_start_s == 0.4


def test_worker_start_may_be_missing_or_null() -> None:
    for entry in ({"version": 1, "operations": {}}, {"version": 1, "operations": {}, "worker_start_s": None}):
        assert load_quietly(cache_with(entry)).worker_start_s is None


CORRUPT = {
    "a list": [1, 2],
    "a string": "garbage",
    "a number": 3,
    "null version": {"operations": {"a": 1.0}},
    "a future version": {"version": 2, "operations": {"a": 1.0}},
    "a version as text": {"version": "1", "operations": {"a": 1.0}},
    "operations missing": {"version": 1},
    "operations as a list": {"version": 1, "operations": [["a", 1.0]]},
    "a duration as text": {"version": 1, "operations": {"a": "1.5"}},
    "a boolean duration": {"version": 1, "operations": {"a": True}},
    "a null duration": {"version": 1, "operations": {"a": None}},
    "a negative duration": {"version": 1, "operations": {"a": -1.0}},
    "a NaN duration": {"version": 1, "operations": {"a": math.nan}},
    "an infinite duration": {"version": 1, "operations": {"a": math.inf}},
    "a nested duration": {"version": 1, "operations": {"a": {"s": 1}}},
    "a bad worker start": {"version": 1, "operations": {"a": 1.0}, "worker_start_s": "fast"},
    "a negative worker start": {"version": 1, "operations": {"a": 1.0}, "worker_start_s": -0.5},
}


@pytest.mark.parametrize("entry", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_or_foreign_entry_warns_and_gives_an_empty_history(entry: object) -> None:
    with pytest.warns(ParexecWarning, match=r"pytest-parexec: ignoring the cache entry 'parexec/durations'"):
        history = History.load(cache_with(entry))
    assert history.durations == {}
    assert history.worker_start_s is None


def test_the_warning_says_what_is_wrong_and_what_to_do() -> None:
    with pytest.warns(ParexecWarning) as record:
        History.load(cache_with({"version": 1, "operations": {"schema_db": "slow"}}))
    message = str(record[0].message)
    assert "'schema_db'" in message
    assert "'slow'" in message
    assert "--cache-clear" in message


def test_parexec_warning_is_a_pytest_warning() -> None:
    assert issubclass(ParexecWarning, pytest.PytestWarning)


# -- learn -----------------------------------------------------------------------


def test_first_measurement_is_taken_as_is() -> None:
    history = History()
    history.learn({"schema_db": 2.0}, worker_start_s=0.6)
    assert history.durations == {"schema_db": 2.0}
    assert history.worker_start_s == 0.6


def test_later_measurements_are_smoothed_by_an_exponential_moving_average() -> None:
    assert SMOOTHING == 0.5
    history = History()
    values = []
    for measured in (2.0, 4.0, 4.0, 0.0, 1.0):
        history.learn({"schema_db": measured}, worker_start_s=None)
        values.append(history.durations["schema_db"])
    # 2; 2 + (4 - 2)/2 = 3; 3 + (4 - 3)/2 = 3.5; 3.5 + (0 - 3.5)/2 = 1.75; 1.75 + (1 - 1.75)/2 = 1.375
    assert values == [2.0, 3.0, 3.5, 1.75, 1.375]


def test_worker_start_cost_is_smoothed_and_kept_when_not_measured() -> None:
    history = History(worker_start_s=1.0)
    history.learn({}, worker_start_s=0.5)
    assert history.worker_start_s == 0.75
    history.learn({}, worker_start_s=None)
    assert history.worker_start_s == 0.75


def test_operations_not_measured_this_run_keep_their_duration() -> None:
    history = History({"schema_db": 1.0, "app_config": 0.2})
    history.learn({"schema_db": 3.0, "new_service": 0.5}, worker_start_s=None)
    assert history.durations == {"schema_db": 2.0, "app_config": 0.2, "new_service": 0.5}


# -- save ------------------------------------------------------------------------


def test_save_then_load_round_trips() -> None:
    cache = FakeCache()
    history = History()
    history.learn({"users_db": 1.23456789, "schema_db": 0.5}, worker_start_s=0.456789)
    history.save(cache)
    assert cache.entries[CACHE_KEY] == {
        "version": 1,
        "operations": {"schema_db": 0.5, "users_db": 1.2346},
        "worker_start_s": 0.4568,
    }
    loaded = load_quietly(cache)
    assert loaded.durations == {"schema_db": 0.5, "users_db": 1.2346}
    assert loaded.worker_start_s == 0.4568


def test_save_without_a_worker_start_writes_null_and_loads_back() -> None:
    cache = FakeCache()
    History({"schema_db": 1.0}).save(cache)
    assert cache.entries[CACHE_KEY] == {
        "version": 1,
        "operations": {"schema_db": 1.0},
        "worker_start_s": None,
    }
    assert load_quietly(cache) == History({"schema_db": 1.0})


def test_save_to_no_cache_does_nothing() -> None:
    History({"schema_db": 1.0}).save(None)  # -p no:cacheprovider: must not raise


def test_a_corrupt_entry_is_replaced_by_the_next_save() -> None:
    cache = cache_with({"version": 99})
    with pytest.warns(ParexecWarning):
        history = History.load(cache)
    history.learn({"schema_db": 1.0}, worker_start_s=None)
    history.save(cache)
    assert load_quietly(cache).durations == {"schema_db": 1.0}


# -- acceptance ------------------------------------------------------------------

CONFTEST = """
    from pytest_parexec import batchable

    @batchable
    def schema_db():
        return "schema"

    @batchable
    def app_config():
        return "config"
"""

TESTS = """
    def test_setup(schema_db, app_config):
        assert (schema_db, app_config) == ("schema", "config")
"""

NAMES = {"schema_db", "app_config"}


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makepyfile(test_setup=textwrap.dedent(TESTS))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "parexec", "--parexec-report=report.json", *args)


def durations_file(pytester: pytest.Pytester) -> Path:
    return pytester.path / ".pytest_cache" / "v" / "parexec" / "durations"


def report_of(pytester: pytest.Pytester) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / "report.json").read_text())
    return data


def expected_of(pytester: pytest.Pytester) -> dict[str, float | None]:
    return {op["name"]: op["expected_s"] for op in report_of(pytester)["operations"]}


def test_durations_are_learned_used_smoothed_and_forgotten(suite: pytest.Pytester) -> None:
    run(suite).assert_outcomes(passed=1)
    assert expected_of(suite) == dict.fromkeys(NAMES)
    assert report_of(suite)["mode"] == "parallel"
    first = json.loads(durations_file(suite).read_text())
    assert first["version"] == 1
    assert set(first["operations"]) == NAMES
    assert first["worker_start_s"] > 0  # two operations under auto: workers started

    result = run(suite, "-v")
    result.assert_outcomes(passed=1)
    second_report = report_of(suite)
    assert expected_of(suite) == first["operations"]
    result.stdout.fnmatch_lines(["  models: 1 operation, *; expected *s (learned)"])
    # Two operations that take next to nothing: starting workers cannot pay.
    assert second_report["mode"] == "sequential"
    assert second_report["mode_reason"].startswith("expected saving ")
    assert "it costs to start workers" in second_report["mode_reason"]
    second = json.loads(durations_file(suite).read_text())
    for op in second_report["operations"]:
        old = first["operations"][op["name"]]
        smoothed = old + SMOOTHING * (op["duration_s"] - old)
        assert second["operations"][op["name"]] == pytest.approx(smoothed, abs=2e-4)

    run(suite, "--cache-clear").assert_outcomes(passed=1)
    assert expected_of(suite) == dict.fromkeys(NAMES)
    assert report_of(suite)["mode"] == "parallel"


def test_foreign_cache_entry_warns_and_the_run_passes(suite: pytest.Pytester) -> None:
    durations_file(suite).parent.mkdir(parents=True)
    durations_file(suite).write_text('["garbage", {"version": 99}]\n')
    result = run(suite)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*ParexecWarning: pytest-parexec: ignoring the cache entry 'parexec/durations'*"]
    )
    assert expected_of(suite) == dict.fromkeys(NAMES)
    # Rewritten by this run, readable by the next.
    assert set(json.loads(durations_file(suite).read_text())["operations"]) == NAMES


def test_foreign_cache_entry_does_not_crash_when_warnings_are_errors(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\nfilterwarnings =\n    error\n")
    durations_file(suite).parent.mkdir(parents=True)
    durations_file(suite).write_text("[1, 2, 3]\n")
    result = run(suite)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert result.ret != pytest.ExitCode.INTERNAL_ERROR


def test_cache_file_that_is_not_json_warns_and_the_run_passes(suite: pytest.Pytester) -> None:
    durations_file(suite).parent.mkdir(parents=True)
    durations_file(suite).write_text("{garbage, not json")
    result = run(suite)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*ParexecWarning*parexec*"])


def test_without_the_cache_provider_nothing_is_learned(suite: pytest.Pytester) -> None:
    result = run(suite, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "warning" not in result.stdout.str().lower()
    assert expected_of(suite) == dict.fromkeys(NAMES)
    assert not (suite.path / ".pytest_cache").exists()


PRIORITY_CONFTEST = """
    from pathlib import Path

    from pytest_parexec import batchable

    LOG = Path(__file__).parent / "order.log"

    @batchable
    def a_quick():
        with LOG.open("a") as log:
            log.write("a_quick\\n")

    @batchable
    def z_slow():
        with LOG.open("a") as log:
            log.write("z_slow\\n")
"""


def test_learned_durations_put_the_longest_first(pytester: pytest.Pytester) -> None:
    # Without learned durations the two have the same priority and the names decide
    # (a_quick first: see test_auto.py); with them, the longer one goes first.
    pytester.makeconftest(textwrap.dedent(PRIORITY_CONFTEST))
    pytester.makepyfile(test_order="def test_both(a_quick, z_slow):\n    pass\n")
    durations_file(pytester).parent.mkdir(parents=True)
    durations_file(pytester).write_text(
        json.dumps({"version": 1, "operations": {"a_quick": 0.01, "z_slow": 5.0}, "worker_start_s": None})
    )
    run(pytester, "--parexec=parallel", "--parexec-workers=1").assert_outcomes(passed=1)
    assert (pytester.path / "order.log").read_text().split() == ["z_slow", "a_quick"]
    assert expected_of(pytester) == {"a_quick": 0.01, "z_slow": 5.0}
