"""The OpenFeature provider through the official SDK (openfeature-sdk from PyPI): typed
resolution, errors, the targeting key as the unit, tracking, and provider events."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.track import TrackingEventDetails

import abx
from abx.openfeature import AbxProvider
from fake_origin import FakeOrigin

GOLDEN = Path(__file__).resolve().parents[2] / "snapshots" / "golden"
FLAGS = (GOLDEN / "flags.abxs").read_bytes()  # version 5
SWITCHBACK = (GOLDEN / "switchback.abxs").read_bytes()  # version 6


@pytest.fixture
def setup(tmp_path):
    origin = FakeOrigin(FLAGS)
    errors: list[abx.AbxError] = []
    client = abx.Client(
        origin.url, origin.key, cache_path=tmp_path / "s.abxs", flush_interval=0.05, on_error=errors.append
    )
    domain = f"abx-{uuid.uuid4()}"
    provider = AbxProvider(client)
    api.set_provider_and_wait(provider, domain)
    yield origin, client, api.get_client(domain), errors
    api.shutdown()


def user(n: int, **attributes) -> EvaluationContext:
    return EvaluationContext(f"user-{n}", attributes)


def test_typed_resolution(setup):
    _, _, features, _ = setup
    everyone = features.get_boolean_details("everyone", False, user(1))
    assert (everyone.value, everyone.reason, everyone.error_code) == (True, Reason.TARGETING_MATCH, None)
    assert features.get_boolean_details("killed", True, user(1)).reason == Reason.DISABLED
    limit = features.get_integer_details("tiered_limit", -1, user(1, plan="free"))
    assert isinstance(limit.value, int) and limit.value in {10, 25, 50, 100}
    as_float = features.get_float_details("tiered_limit", -1.0, user(1, plan="free"))
    assert as_float.value == float(limit.value) and isinstance(as_float.value, float)
    assert features.get_string_value("no_rules", "x", user(1)) == "plain"
    banner = features.get_object_value("banner_config", {}, user(1))
    assert isinstance(banner, dict) and "text" in banner
    # A flag whose value comes from an experiment names the variant and says SPLIT.
    theme = features.get_string_details("theme", "none", user(2))
    assigned = setup[1].assign("theme_experiment", {"user_id": "user-2"})
    assert (theme.value, theme.reason, theme.variant) == ("dark", Reason.SPLIT, assigned.variant) == ("dark", Reason.SPLIT, "dark")
    assert theme.flag_metadata["abx_reason"] == "experiment"


def test_experiments_resolve_as_their_variant_or_config(setup):
    _, client, features, _ = setup
    for n in range(50):
        direct = client.assign("theme_experiment", {"user_id": f"user-{n}"})
        variant = features.get_string_details("theme_experiment", "none", user(n))
        config = features.get_object_value("theme_experiment", {}, user(n))
        if direct.variant is None:
            assert variant.value == "none" and config == {}
        else:
            assert (variant.value, variant.variant, variant.reason) == (direct.variant, direct.variant, Reason.SPLIT)
            assert config == direct.config


def test_errors_carry_openfeature_codes_and_the_default(setup):
    _, _, features, _ = setup
    missing = features.get_boolean_details("no_such_flag", True, user(1))
    assert (missing.value, missing.error_code, missing.reason) == (True, ErrorCode.FLAG_NOT_FOUND, Reason.ERROR)
    mismatch = features.get_boolean_details("tiered_limit", False, user(1))
    assert (mismatch.value, mismatch.error_code) == (False, ErrorCode.TYPE_MISMATCH)
    assert features.get_integer_details("everyone", 7, user(1)).error_code == ErrorCode.TYPE_MISMATCH
    assert features.get_integer_details("theme_experiment", 7, user(1)).error_code == ErrorCode.TYPE_MISMATCH


def test_the_targeting_key_is_the_unit(setup):
    _, client, features, _ = setup
    for n in range(300):
        context = {"user_id": f"user-{n}", "plan": "pro" if n % 2 else "free", "country": "DE"}
        want = client.flag_detail("tiered_limit", context, -1)
        got = features.get_integer_details("tiered_limit", -1, user(n, plan=context["plan"], country="DE"))
        assert got.value == want.value
    # Without a targeting key there is no unit: rollouts answer the default.
    assert features.get_boolean_details("half_rollout", True, EvaluationContext()).value is False


def test_tracking_records_abx_metric_events(setup):
    origin, client, features, errors = setup
    features.track("purchase", user(42), TrackingEventDetails(value=9.5, attributes={"sku": "a-1"}))
    features.track("signup", user(43))
    features.track("orphan", EvaluationContext())  # no unit: reported, not raised
    assert client.flush(10)
    metrics = sorted((e["unit"], e["event_type"], e["value"]) for e in origin.events if e["kind"] == "metric")
    assert metrics == [("user-42", "purchase", 9.5), ("user-43", "signup", 1.0)]
    assert [e.code for e in errors] == ["invalid_event"]


def test_a_new_snapshot_emits_configuration_changed(setup):
    origin, client, features, _ = setup
    changed = threading.Event()
    features.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, lambda details: changed.set())
    origin.publish(SWITCHBACK)
    assert changed.wait(10)
    assert client.snapshot_version == 6
    assert features.get_boolean_details("everyone", False, user(1)).error_code == ErrorCode.FLAG_NOT_FOUND


def test_the_provider_becomes_ready_when_the_first_snapshot_arrives(tmp_path):
    origin = FakeOrigin(FLAGS)
    origin.fail_snapshots = True
    client = abx.Client(origin.url, origin.key, cache_path=tmp_path / "s.abxs", initial_timeout=0.2, on_error=lambda e: None)
    domain = f"abx-{uuid.uuid4()}"
    features = api.get_client(domain)
    api.set_provider(AbxProvider(client), domain)
    # Added after the provider: a handler runs at once if the status already matches, and
    # the domain's default provider is ready.
    ready = threading.Event()
    features.add_handler(ProviderEvent.PROVIDER_READY, lambda details: ready.set())
    assert not ready.is_set()
    try:
        before = features.get_boolean_details("everyone", False, user(1))
        assert (before.value, before.error_code) == (False, ErrorCode.PROVIDER_NOT_READY)
        origin.fail_snapshots = False
        origin.publish(FLAGS)
        assert ready.wait(10)
        assert features.get_boolean_value("everyone", False, user(1)) is True
    finally:
        api.shutdown()
