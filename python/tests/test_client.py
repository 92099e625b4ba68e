"""The client against a stand-in origin: fetching and verifying snapshots, the disk cache,
the change stream, defaults without a snapshot, and the event queue under failures."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import abx
from fake_origin import FakeOrigin

GOLDEN = Path(__file__).resolve().parents[2] / "snapshots" / "golden"
BASIC = (GOLDEN / "basic.abxs").read_bytes()  # version 1, 14 experiments
FLAGS = (GOLDEN / "flags.abxs").read_bytes()  # version 5, flags
SIGNED = (GOLDEN / "signed.abxs").read_bytes()
SIGNING_KEY = "3b398be265f0221a7aa62696d59f434c3ad6ea6642378397a5476f483100d0f4"
OTHER_KEY = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
USER = {"user_id": "user-411192", "country": "CA", "plan": "pro"}
NOW = 1_760_001_600_147


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def errors():
    return []


def client_for(origin: FakeOrigin, tmp_path: Path, errors: list, **options) -> abx.Client:
    options.setdefault("cache_path", tmp_path / "snapshot.abxs")
    options.setdefault("flush_interval", 0.05)
    return abx.Client(origin.url, origin.key, on_error=errors.append, **options)


def test_a_client_verifies_caches_and_starts_from_its_file_when_the_origin_is_down(tmp_path, errors):
    origin = FakeOrigin(SIGNED)
    with client_for(origin, tmp_path, errors, public_key=SIGNING_KEY) as client:
        assert client.snapshot_version == 7
        online = client.assign("checkout_button_color", USER, now_ms=NOW)
        assert online.reason == "assigned"
    origin.stop()
    assert (tmp_path / "snapshot.abxs").read_bytes() == SIGNED
    # The origin is gone: a new process starts from the file at once and assigns alike.
    started = time.monotonic()
    with client_for(origin, tmp_path, errors, public_key=SIGNING_KEY, initial_timeout=30) as offline:
        assert time.monotonic() - started < 5
        assert offline.snapshot_version == 7
        assert offline.assign("checkout_button_color", USER, now_ms=NOW) == online
    assert any(e.code == "fetch_failed" for e in errors)


def test_a_snapshot_signed_by_another_key_is_refused(tmp_path, errors):
    origin = FakeOrigin(SIGNED)
    with client_for(origin, tmp_path, errors, public_key=OTHER_KEY, initial_timeout=1) as client:
        assert client.snapshot_version is None
        assert client.assign("checkout_button_color", USER) == abx.Assignment(None, None, "not_loaded")
        assert client.flag("anything", USER, default="fallback") == "fallback"
        assert client.evaluate(USER).experiments == {}
    codes = [e.code for e in errors]
    assert "bad_signature" in codes and "not_loaded" in codes
    assert not (tmp_path / "snapshot.abxs").exists()
    # During a rotation both keys are accepted.
    with client_for(origin, tmp_path, errors, public_key=[OTHER_KEY, SIGNING_KEY]) as client:
        assert client.snapshot_version == 7


def test_an_unsigned_snapshot_is_refused_when_a_key_is_given(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    with client_for(origin, tmp_path, errors, public_key=SIGNING_KEY, initial_timeout=1) as client:
        assert not client.ready
    assert "unsigned" in [e.code for e in errors]


def test_a_bad_public_key_is_an_error():
    with pytest.raises(abx.AbxError) as raised:
        abx.Client.from_snapshot(SIGNED, public_key="not hex")
    assert raised.value.code == "bad_public_key"


def test_the_change_stream_brings_new_snapshots_and_never_rolls_back(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    versions = []
    with client_for(origin, tmp_path, errors, refresh_interval=3600) as client:
        client.on_snapshot(versions.append)
        assert client.snapshot_version == 1
        assert client.flag("new_nav", USER, default="none") == "none"
        origin.publish(FLAGS)
        assert wait_for(lambda: client.snapshot_version == 5, 5), "the stream did not announce version 5"
        assert client.flag_detail("everyone", USER).reason in {"rule", "default", "experiment", "disabled"}
        assert client.flag_detail("new_nav", USER, default="none").reason != "unknown_key"
        # An older snapshot (a stale CDN copy) is not taken.
        origin.publish(BASIC)
        assert wait_for(lambda: origin.snapshot_gets >= 3, 5)
        time.sleep(0.2)
        assert client.snapshot_version == 5
    assert versions == [5]


def test_polling_takes_over_without_the_stream(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    with client_for(origin, tmp_path, errors, stream=False, refresh_interval=0.1) as client:
        origin.publish(FLAGS)
        assert wait_for(lambda: client.snapshot_version == 5, 5)


def exposures(origin: FakeOrigin) -> list[tuple]:
    return [(e["experiment_id"], e["unit"], e["variant"]) for e in origin.events if e["kind"] == "exposure"]


def test_exposures_are_logged_once_per_unit_and_events_arrive(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    with client_for(origin, tmp_path, errors) as client:
        first = client.assign("checkout_button_color", USER, now_ms=NOW)
        for _ in range(100):
            assert client.assign("checkout_button_color", USER, now_ms=NOW) == first
        client.evaluate(USER, now_ms=NOW)  # logs nothing by default
        event_id = client.track("user-411192", "purchase", 42.5, {"sku": "a-1"})
        assert isinstance(event_id, str)
        assert client.flush(5)
        assert exposures(origin) == [(first.experiment_id, "user-411192", first.variant)]
        metric = [e for e in origin.events if e["kind"] == "metric"]
        assert metric == [
            {
                "kind": "metric",
                "unit": "user-411192",
                "unit_attribute": "user_id",
                "event_type": "purchase",
                "value": 42.5,
                "timestamp": metric[0]["timestamp"],
                "properties": {"sku": "a-1"},
                "event_id": event_id,
            }
        ]
        client.evaluate({"user_id": "someone-else"}, now_ms=NOW, log_exposures=True)
        assert asyncio.run(client.flush_async(5))
        logged = {e for e in exposures(origin) if e[1] == "someone-else"}
        assigned = client.evaluate({"user_id": "someone-else"}, now_ms=NOW).experiments.values()
        assert logged == {(a.experiment_id, "someone-else", a.variant) for a in assigned if a.reason == "assigned"}
    assert errors == []


HOLDOUTS = (GOLDEN / "holdouts_forced.abxs").read_bytes()
HOLDOUT_CASES = json.loads((GOLDEN.parent / "vectors" / "holdouts_forced.json").read_text())["cases"]


def test_units_log_one_exposure_per_holdout_with_their_arm(tmp_path, errors):
    """Every answer that reached a holdout logs the unit's arm as an exposure to the holdout,
    once per unit and holdout, whether the experiment assigned a variant, left the unit out
    of traffic, held it out or shipped; the conformance vectors say which arm is right."""
    origin = FakeOrigin(HOLDOUTS)
    engine = abx._abx.Engine(HOLDOUTS)
    with client_for(origin, tmp_path, errors) as client:
        want = set()
        checked = 0
        for case in HOLDOUT_CASES[:20]:
            context, now = case["context"], case["now_ms"]
            for key, expected in case["expected"].items():
                for _ in range(3):
                    got = client.assign(key, context, now_ms=now)
                arm = expected.get("holdout")
                holdout = engine.assign(key, context, now)._holdout_exposure
                assert (holdout and holdout[1]) == arm, (key, expected)
                if arm is None:
                    continue
                (holdout_id, unit_attribute, unit), _ = holdout
                assert holdout_id != got.experiment_id
                assert unit == str(context[unit_attribute])
                want.add((holdout_id, unit, arm))
                checked += 1
        assert client.flush(5)
        logged = [e for e in exposures(origin) if e[2] in ("held", "released")]
        assert sorted(logged) == sorted(want), "one exposure per unit and holdout"
        assert {arm for _, _, arm in want} == {"held", "released"}
        assert checked > 40
        # Evaluating everything with exposures logs no holdout exposure twice.
        client.evaluate(HOLDOUT_CASES[0]["context"], now_ms=HOLDOUT_CASES[0]["now_ms"], log_exposures=True)
        assert client.flush(5)
        again = [e for e in exposures(origin) if e[2] in ("held", "released")]
        assert sorted(again) == sorted(want)
    assert errors == []


def test_flags_log_the_arm_of_the_holdout_their_experiments_reached(tmp_path, errors):
    """A unit a holdout holds falls through the flag rule that consulted its experiment, so
    the flag's value alone cannot show it; `flag_detail` logs the arm of the holdout the
    unit reached through the flag's experiments, as the conformance vectors give it."""
    origin = FakeOrigin(HOLDOUTS)
    engine = abx._abx.Engine(HOLDOUTS)
    with client_for(origin, tmp_path, errors) as client:
        want = set()
        for case in HOLDOUT_CASES[:40]:
            context, now = case["context"], case["now_ms"]
            for key, expected in case["flags"].items():
                got = client.flag_detail(key, context, now_ms=now)
                assert json.dumps(got.value) == expected["value"], (key, expected)
                arm = expected.get("holdout")
                holdout = engine.flag(key, context, now)._holdout_exposure
                assert (holdout and holdout[1]) == arm, (key, expected)
                if arm is not None:
                    # The step of the experiment the unit reached the holdout through.
                    through = engine.assign(expected["holdout_experiment"], context, now)
                    assert holdout == through._holdout_exposure, (key, expected)
                    (holdout_id, unit_attribute, unit), _ = holdout
                    assert unit == str(context[unit_attribute])
                    want.add((holdout_id, unit, arm))
        assert client.flush(5)
        logged = [e for e in exposures(origin) if e[2] in ("held", "released")]
        assert sorted(logged) == sorted(want), "one exposure per unit and holdout"
        assert {arm for _, _, arm in want} == {"held", "released"}
    assert errors == []


DIMENSIONS = (GOLDEN / "dimensions.abxs").read_bytes()
DIMENSION_CASES = json.loads((GOLDEN.parent / "vectors" / "dimensions.json").read_text())["cases"]


def test_exposures_carry_the_attributes_their_experiment_is_broken_down_by(tmp_path, errors):
    """A format 2 snapshot lists, per experiment, the attributes its exposures carry: each
    unit's first exposure carries its context's values of them (the conformance vectors say
    which), from `assign`, from a prepared `abx.Context` and from `evaluate`; exposures to
    holdouts carry none."""
    origin = FakeOrigin(DIMENSIONS)
    engine = abx._abx.Engine(DIMENSIONS)
    with client_for(origin, tmp_path, errors) as client:
        want = {}
        for n, case in enumerate(DIMENSION_CASES[:60]):
            context, now = case["context"], case["now_ms"]
            if n % 3 == 1:
                client.evaluate(context, now_ms=now, log_exposures=True)
            for key, expected in case["expected"].items():
                client.assign(key, abx.Context(context) if n % 3 == 2 else context, now_ms=now)
                if expected["reason"] != "assigned":
                    continue
                # (experiment id, unit attribute, unit): a unit's first exposure is logged.
                exposure = engine.assign(key, context, now)._exposure
                want.setdefault(exposure, expected.get("attributes") or None)
        assert client.flush(5)
    logged = [e for e in origin.events if e["kind"] == "exposure"]
    holdouts = [e for e in logged if e["variant"] in ("held", "released")]
    experiments = [e for e in logged if e["variant"] not in ("held", "released")]
    assert holdouts and all("attributes" not in e for e in holdouts)
    carried = 0
    for event in experiments:
        expected = want[(event["experiment_id"], event["unit_attribute"], event["unit"])]
        assert event.get("attributes") == expected, event
        carried += expected is not None
    assert len(experiments) == len(want)
    assert carried > 20
    assert errors == []


def test_a_context_that_fails_to_read_its_attributes_costs_the_exposure_its_attributes(tmp_path, errors):
    """Reading the exposure's attributes is a second read of the context, after the
    evaluation: when it raises, the exposure is still logged, without attributes, and the
    error is reported."""

    class Clash:
        """A key that shares `country`'s hash and raises when compared with it."""

        def __hash__(self) -> int:
            return hash("country")

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("compared")

    origin = FakeOrigin(DIMENSIONS)
    with client_for(origin, tmp_path, errors) as client:
        # `respects_global` reads only `user_id`, and its exposures carry `country`.
        got = client.assign("respects_global", {Clash(): 1, "user_id": "u-clash"}, now_ms=NOW)
        assert got.reason == "assigned"
        assert client.flush(5)
    logged = [e for e in origin.events if e["experiment_id"] == got.experiment_id]
    assert len(logged) == 1 and "attributes" not in logged[0]
    assert [e.code for e in errors] == ["invalid_context"]


def test_invalid_events_raise():
    client = abx.Client.from_snapshot(BASIC)
    for unit, event_type, value in [("", "x", 1), ("u", "", 1), ("u", "x", float("nan")), (None, "x", 1)]:
        with pytest.raises(abx.AbxError) as raised:
            client.track(unit, event_type, value)
        assert raised.value.code == "invalid_event"


def test_retryable_failures_are_retried_after_retry_after_and_refusals_are_counted(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    origin.event_answers = [
        (503, {"retry-after": "1"}, b'{"error":{"code":"unavailable"}}'),
        (429, {"retry-after": "0"}, b"{}"),
    ]
    with client_for(origin, tmp_path, errors) as client:
        started = time.monotonic()
        client.track("u1", "purchase")
        assert client.flush(10)
        assert time.monotonic() - started >= 0.9, "Retry-After: 1 was not honoured"
        assert [e["unit"] for e in origin.events] == ["u1"]
        assert origin.event_posts == 3
        # A 400 can never succeed: the batch is dropped and counted, not retried.
        origin.event_answers = [(400, {}, b'{"error":{"code":"invalid_request"}}')]
        client.track("u2", "purchase")
        assert client.flush(10)
        # A 207 refuses some events of a batch.
        origin.event_answers = [(207, {}, b'{"accepted":1,"duplicates":0,"rejected":[{"index":1,"reason":"x"}]}')]
        client.track("u3", "purchase")
        client.track("u4", "purchase")
        assert client.flush(10)
        stats = client.event_stats
    assert stats == {"sent": 2, "dropped": 0, "rejected": 2, "retries": 2, "queued": 0}
    assert [e.code for e in errors] == ["events_rejected", "events_rejected"]


def test_a_full_queue_drops_new_events_and_counts_them(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    origin.event_answers = [(503, {"retry-after": "1"}, b"{}")]
    with client_for(origin, tmp_path, errors, max_queue=3, batch_size=2) as client:
        ids = [client.track(f"u{i}", "purchase") for i in range(5)]
        assert ids[3] is None and ids[4] is None and all(ids[:3])
        assert client.event_stats["dropped"] == 2
        assert client.flush(10)
    assert sorted(e["unit"] for e in origin.events) == ["u0", "u1", "u2"]
    assert [e.code for e in errors].count("events_dropped") == 1, "reported once per run of drops"


def test_close_sends_what_is_queued(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    client = client_for(origin, tmp_path, errors, flush_interval=3600)
    for i in range(1200):
        client.track(f"u{i}", "purchase")
    assert client.close(10)
    assert len(origin.events) == 1200
    assert origin.event_posts == 3  # batches of 500


def test_many_threads_share_one_client(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    with client_for(origin, tmp_path, errors) as client:
        expected = {f"u{i}": client.evaluate({"user_id": f"u{i}"}, now_ms=NOW).experiments["checkout_button_color"] for i in range(400)}

        def work(offset: int) -> None:
            for i in range(400):
                unit = f"u{(i + offset) % 400}"
                assert client.assign("checkout_button_color", {"user_id": unit}, now_ms=NOW) == expected[unit]

        threads = [threading.Thread(target=work, args=(n * 37,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.flush(10)
    assigned = sum(1 for a in expected.values() if a.reason == "assigned")
    assert len(exposures(origin)) == assigned, "each unit's exposure is logged once across threads"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_sends_its_own_events_and_not_its_parents(tmp_path, errors):
    origin = FakeOrigin(BASIC)
    with client_for(origin, tmp_path, errors, flush_interval=3600) as client:
        client.track("parent-before-fork", "purchase")
        pid = os.fork()
        if pid == 0:  # the worker: its own threads, its own queue
            code = 1
            try:
                client.track("child", "purchase")
                client.assign("checkout_button_color", {"user_id": "child"})
                code = 0 if client.flush(10) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.flush(10)
    units = sorted(e["unit"] for e in origin.events if e["kind"] == "metric")
    assert units == ["child", "parent-before-fork"]


def test_context_values_follow_the_context_rule():
    client = abx.Client.from_snapshot(BASIC)
    plain = client.assign("checkout_button_color", {"user_id": "user-411192"}, now_ms=NOW)
    # Values that are not attributes are absent, as in every runtime.
    noisy = {"user_id": "user-411192", "x": None, "y": {"a": 1}, "z": [1, "a"], 3: "non-string name"}
    assert client.assign("checkout_button_color", noisy, now_ms=NOW) == plain
    # A whole number is a unit as its decimal text; booleans are not numbers.
    assert client.assign("checkout_button_color", {"user_id": 12345}, now_ms=NOW) == client.assign(
        "checkout_button_color", {"user_id": "12345"}, now_ms=NOW
    )
    assert client.assign("checkout_button_color", {"user_id": True}, now_ms=NOW).reason == "missing_unit"
    assert client.assign("no_such_experiment", USER).reason == "unknown_key"
    assert json.dumps(client.evaluate(USER, now_ms=NOW).experiments["checkout_button_color"].config) is not None


def test_a_dict_read_in_place_answers_as_a_converted_context():
    # A dict is read in place, one attribute at a time as the evaluation asks; `abx.Context`
    # and `evaluate` convert it first. Python-only values must read alike on both paths:
    # `str` and `int` subclasses, tuples, `int`s beyond a float's range, lists read twice.
    class Text(str):
        pass

    class Whole(int):
        pass

    def pythonic(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return Text(value)
        if isinstance(value, int):
            return Whole(value)
        if isinstance(value, list):
            return tuple(pythonic(item) for item in value)
        return value

    client = abx.Client.from_snapshot((GOLDEN / "targeting.abxs").read_bytes())
    vectors = json.loads((GOLDEN.parent / "vectors" / "targeting.json").read_text())
    keys = list(client.evaluate({}, now_ms=NOW).experiments)
    assigned = 0
    for case in vectors["cases"][:150]:
        for context in (
            {name: pythonic(value) for name, value in case["context"].items()},
            {**case["context"], "age": 2**70, "score": float(case["context"].get("score", 0))},
        ):
            everything = client.evaluate(context, now_ms=case["now_ms"]).experiments
            prepared = abx.Context(context)
            for key in keys:
                in_place = client.assign(key, context, now_ms=case["now_ms"])
                assert in_place == client.assign(key, prepared, now_ms=case["now_ms"]) == everything[key], (key, context)
                assigned += in_place.variant is not None
    assert assigned > 1_000, assigned


def test_keys_are_found_by_their_text_whatever_the_str():
    client = abx.Client.from_snapshot(BASIC)
    literal = client.assign("checkout_button_color", USER, now_ms=NOW)

    class Key(str):
        pass

    assert client.assign(Key("checkout_button_color"), USER, now_ms=NOW) == literal
    assert client.assign("checkout_button_color\ud800", USER, now_ms=NOW).reason == "unknown_key"
    assert client.assign("\ud800", USER, now_ms=NOW).reason == "unknown_key"
    # This snapshot has no flags at all.
    assert client.flag("checkout_button_color", USER, "fallback", now_ms=NOW) == "fallback"
    assert client.flag_detail("anything", USER, now_ms=NOW).reason == "unknown_key"


def test_an_evaluation_reads_like_a_read_only_mapping():
    from collections.abc import Mapping

    client = abx.Client.from_snapshot(FLAGS)
    evaluation = client.evaluate(USER, now_ms=NOW)
    assert isinstance(evaluation.experiments, Mapping) and isinstance(evaluation.flags, Mapping)
    assert list(evaluation.experiments) == ["theme_experiment", "eu_checkout", "shipped_layout"]
    assert len(evaluation.flags) == 12 and "theme" in evaluation.flags
    assert "nope" not in evaluation.flags and 3 not in evaluation.flags
    with pytest.raises(KeyError):
        evaluation.flags["nope"]
    assert evaluation.flags.get("nope", "fallback") == "fallback"
    # Each answer equals the one-key call's.
    assert dict(evaluation.flags.items()) == {k: client.flag_detail(k, USER, now_ms=NOW) for k in evaluation.flags}
    assert dict(evaluation.experiments.items()) == {
        k: client.assign(k, USER, now_ms=NOW) for k in evaluation.experiments.keys()
    }
    # Objects are parsed afresh for every reader; scalars are immutable and shared.
    banner = evaluation.flags["banner_config"].value
    banner["text"] = "changed"
    assert evaluation.flags["banner_config"].value["text"] != "changed"
    assert client.flag("everyone", USER, now_ms=NOW) is True


def test_answers_are_shared_and_configs_never_are():
    client = abx.Client.from_snapshot(BASIC)
    # A paused experiment answers everyone alike: one object per experiment and reason.
    paused = client.assign("paused_experiment", USER, now_ms=NOW)
    assert paused.reason == "not_running" and paused.variant is None and paused.config is None
    assert client.assign("paused_experiment", {"user_id": "someone else"}, now_ms=NOW) is paused
    assert client.assign("draft_experiment", USER, now_ms=NOW) is not paused
    # One object per experiment, variant and reason, whoever it was given to.
    first = client.assign("checkout_button_color", USER, now_ms=NOW)
    second = client.assign("checkout_button_color", USER, now_ms=NOW)
    assert first.reason == "assigned" and first is second
    assert first.experiment_id == client.evaluate(USER, now_ms=NOW).experiments["checkout_button_color"].experiment_id
    other = next(
        a
        for a in (client.assign("checkout_button_color", {"user_id": f"u{i}"}, now_ms=NOW) for i in range(100))
        if a.variant != first.variant
    )
    assert other != first and other.config != first.config
    # Its config is parsed afresh for every read, so no caller sees another's changes.
    config = first.config
    config["button_color"] = "changed"
    assert first.config["button_color"] != "changed" and first.config is not config
    assert client.assign("checkout_button_color", USER, now_ms=NOW).config["button_color"] != "changed"
    # An answer that carries an exposure to log is the caller's own; the next, with nothing
    # left to log, is the shared one.
    logging = abx.Client.from_snapshot(BASIC)
    logging._record_exposure = lambda *_: None  # type: ignore[method-assign]
    logging._logs_exposures = True
    exposed = logging.assign("checkout_button_color", USER, now_ms=NOW)
    assert exposed._exposure == (first.experiment_id, "user_id", USER["user_id"])
    again = logging.assign("checkout_button_color", USER, now_ms=NOW)
    assert again == exposed and again is not exposed and again._exposure is None
    assert logging.assign("checkout_button_color", USER, now_ms=NOW) is again
    # A key that is not a `str` is a TypeError, an equal `str` finds the same experiment.
    with pytest.raises(TypeError):
        client.assign(42, USER, now_ms=NOW)  # type: ignore[arg-type]
    assert client.assign("".join(["checkout_", "button_color"]), USER, now_ms=NOW) == first


def test_an_error_raised_while_a_context_is_read_reaches_the_caller():
    class Clash:
        """A key equal in hash to `email`, whose comparison fails once armed (after the
        dict holding it is built)."""

        armed = False

        def __hash__(self) -> int:
            return hash("email")

        def __eq__(self, other: object) -> bool:
            if Clash.armed:
                raise RuntimeError("compared")
            return False

    # `t_not_exists` assigns units without an `email`, so a failed read of it would
    # still assign one.
    client = abx.Client.from_snapshot((GOLDEN / "targeting.abxs").read_bytes())
    logged: list[tuple[str, str, str]] = []
    client._record_exposure = lambda exposure, *_: logged.append(exposure)  # type: ignore[method-assign]
    client._logs_exposures = True
    context = {Clash(): 1, "user_id": "u0"}
    Clash.armed = True
    with pytest.raises(RuntimeError, match="compared"):
        client.assign("t_not_exists", context, now_ms=NOW)
    Clash.armed = False
    # The call that raised logged nothing and did not count as logging this exposure.
    assert logged == []
    assert client.assign("t_not_exists", {"user_id": "u0"}, now_ms=NOW).reason == "assigned"
    assert [unit for _, _, unit in logged] == ["u0"]


def test_the_engine_in_use_is_replaced_whole():
    client = abx.Client.from_snapshot(BASIC)
    engine = client._engine
    assert engine is not None and engine.version == 1
    with pytest.raises(TypeError):
        client._engine = "not an engine"  # type: ignore[assignment]
    assert client._engine is engine
    client._engine = None
    assert client.assign("checkout_button_color", USER, now_ms=NOW).reason == "not_loaded"
    client._engine = abx._abx.Engine(FLAGS)
    assert client._engine.version == 5
    assert client.assign("theme_experiment", USER, now_ms=NOW).reason != "unknown_key"
