"""Endpoint operations on the real database: each change audited, bad input changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobs.errors import ConflictError, NotFoundError, ValidationError
from jobs.operations.endpoints import (delete_endpoint, disable_endpoint, enable_endpoint,
                                       get_retry_config, list_endpoints_overview,
                                       retry_summary, rotate_secret, set_retry_config,
                                       update_endpoint, validate_retry_config)
from jobs.policy import DEFAULT_POLICY, RetryPolicy
from jobs.signing import SECRET_PREFIX, sign
from models.audit import AuditLog
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.endpoints import Application, Endpoint
from models.enums import DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint

URL = "http://127.0.0.1:9/hook"
OWN_POLICY = {"max_retries": 3, "backoff": "linear", "base_delay": 2.0, "max_delay": 60.0,
              "jitter": False}


async def snapshot(endpoint_id: int) -> dict[str, Any]:
    """Every column except updated_at (to prove nothing changed)."""
    row = (await Endpoint.filter(id=endpoint_id).values())[0]
    row.pop("updated_at")
    return row


def fields_of(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {f["field"]: f["rule"] for f in exc.value.details["fields"]}


# -- update ------------------------------------------------------------------------------------

async def test_update_endpoint_changes_given_fields_and_audits_the_diff(db):
    endpoint = await make_endpoint(URL, description="old")
    row = await update_endpoint(endpoint.id, "alice", url="https://example.com/hook",
                                event_types=["order.paid", "order.paid", "order.created"],
                                follow_redirects=True, max_in_flight=8)

    assert row["url"] == "https://example.com/hook"
    assert row["event_types"] == ["order.paid", "order.created"]  # de-duplicated
    assert (row["follow_redirects"], row["max_in_flight"], row["description"]) == (True, 8, "old")
    assert "secret" not in row
    [entry] = await AuditLog.all()
    assert (entry.actor, entry.action, entry.target_type, entry.target_id) == (
        "alice", "endpoint.update", "endpoint", str(endpoint.id))
    assert entry.details["changes"]["url"] == {"from": URL, "to": "https://example.com/hook"}
    assert set(entry.details["changes"]) == {"url", "event_types", "follow_redirects",
                                             "max_in_flight"}


async def test_update_with_unchanged_values_writes_no_audit_row(db):
    endpoint = await make_endpoint(URL)
    await update_endpoint(endpoint.id, "alice", url=URL)
    assert not await AuditLog.exists()


async def test_update_clears_event_filter_and_in_flight_cap(db):
    endpoint = await make_endpoint(URL, event_types=["a"], max_in_flight=4)
    row = await update_endpoint(endpoint.id, "alice", clear=["event_types", "max_in_flight"])
    assert (row["event_types"], row["max_in_flight"]) == (None, None)
    endpoint = await make_endpoint("http://127.0.0.1:9/other", event_types=["a"])
    assert (await update_endpoint(endpoint.id, "alice", event_types=[]))["event_types"] is None


@pytest.mark.parametrize(("changes", "field", "rule"), [
    ({"url": "ftp://example.com/"}, "url", "value_error"),
    ({"url": "not a url"}, "url", "value_error"),
    ({"description": "x" * 501}, "description", "string_too_long"),
    ({"event_types": ["ok", ""]}, "event_types.1", "string_too_short"),
    ({"max_in_flight": 0}, "max_in_flight", "greater_than_equal"),
    ({"clear": ["url"]}, "url", "clear"),
    ({"clear": ["max_in_flight"], "max_in_flight": 3}, "max_in_flight", "clear"),
    ({}, "body", "missing"),
])
async def test_bad_update_names_the_field_and_changes_nothing(db, changes, field, rule):
    endpoint = await make_endpoint(URL, max_in_flight=2)
    before = await snapshot(endpoint.id)
    with pytest.raises(ValidationError) as exc:
        await update_endpoint(endpoint.id, "alice", **changes)
    assert fields_of(exc)[field] == rule
    assert exc.value.status == 422
    assert await snapshot(endpoint.id) == before
    assert not await AuditLog.exists()


# -- delete ------------------------------------------------------------------------------------

async def test_delete_endpoint_keeps_deliveries_and_dlq_entries_and_audits(db):
    endpoint = await make_endpoint(URL)
    entry = await make_dead_letter(endpoint)

    row = await delete_endpoint(endpoint.id, "alice")

    assert row["id"] == endpoint.id
    assert not await Endpoint.exists(id=endpoint.id)
    delivery = await Delivery.get(id=entry.delivery_id)  # type: ignore[attr-defined]
    assert delivery.endpoint_id is None  # type: ignore[attr-defined]
    assert (await DeadLetter.get(id=entry.id)).endpoint_id is None  # type: ignore[attr-defined]
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor, audit.details["url"]) == ("endpoint.delete", "alice", URL)


@pytest.mark.parametrize("call", [
    lambda: update_endpoint(4242, "a", url=URL),
    lambda: delete_endpoint(4242, "a"),
    lambda: get_retry_config(4242),
    lambda: set_retry_config(4242, "a", None),
    lambda: set_retry_config(4242, "a", {"max_retries": 99}),
    lambda: rotate_secret(4242, "a"),
    lambda: disable_endpoint(4242, "a", "why"),
    lambda: enable_endpoint(4242, "a"),
])
async def test_unknown_endpoint_is_not_found(db, call):
    with pytest.raises(NotFoundError, match="endpoint 4242 does not exist"):
        await call()
    assert not await AuditLog.exists()


# -- retry config ------------------------------------------------------------------------------

async def test_get_retry_config_reports_the_default_policy(db):
    endpoint = await make_endpoint(URL, retry_config=None)
    view = await get_retry_config(endpoint.id)
    assert view == {"endpoint_id": endpoint.id, "policy": DEFAULT_POLICY.model_dump(),
                    "is_default": True, "max_attempts": DEFAULT_POLICY.max_attempts}


async def test_set_retry_config_stores_the_complete_policy_and_audits(db):
    endpoint = await make_endpoint(URL, retry_config=None)
    view = await set_retry_config(endpoint.id, "alice", {"max_retries": 3, "backoff": "fixed"})

    expected = RetryPolicy(max_retries=3, backoff="fixed").model_dump()
    assert view == {"endpoint_id": endpoint.id, "policy": expected, "is_default": False,
                    "max_attempts": 4}
    assert (await Endpoint.get(id=endpoint.id)).retry_config == expected
    assert await get_retry_config(endpoint.id) == view
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor) == ("endpoint.retry_config", "alice")
    assert audit.details == {"previous": None, "new": expected}


async def test_set_retry_config_none_resets_to_the_default(db):
    endpoint = await make_endpoint(URL, retry_config=OWN_POLICY)
    view = await set_retry_config(endpoint.id, "alice", None)
    assert view["is_default"] is True and view["policy"] == DEFAULT_POLICY.model_dump()
    assert (await Endpoint.get(id=endpoint.id)).retry_config is None
    [audit] = await AuditLog.all()
    assert audit.details == {"previous": OWN_POLICY, "new": None}


@pytest.mark.parametrize(("config", "expected"), [
    ({"max_retries": 11}, {"max_retries": "less_than_equal"}),
    ({"max_retries": -1, "backoff": "random"},
     {"max_retries": "greater_than_equal", "backoff": "literal_error"}),
    ({"base_delay": 0.5}, {"base_delay": "greater_than_equal"}),
    ({"base_delay": 10, "max_delay": 5}, {"max_delay": "value_error"}),
    ({"max_retries": "three"}, {"max_retries": "int_parsing"}),
    ({"retries": 3}, {"retries": "extra_forbidden"}),
    ([1, 2], {"retry_config": "dict_type"}),
    ("fast", {"retry_config": "dict_type"}),
])
async def test_bad_retry_config_names_each_field_and_changes_nothing(db, config, expected):
    endpoint = await make_endpoint(URL, retry_config=OWN_POLICY)
    before = await snapshot(endpoint.id)
    with pytest.raises(ValidationError) as exc:
        await set_retry_config(endpoint.id, "alice", config)
    assert fields_of(exc) == expected
    assert all(f["message"] for f in exc.value.details["fields"])
    assert await snapshot(endpoint.id) == before
    assert not await AuditLog.exists()


def test_cap_below_base_error_reads_well_and_sits_on_max_delay():
    with pytest.raises(ValidationError) as exc:
        validate_retry_config({"base_delay": 10, "max_delay": 5})
    [field] = exc.value.details["fields"]
    assert field == {"field": "max_delay", "rule": "value_error",
                     "message": "max_delay must be >= base_delay"}
    assert exc.value.message == "Invalid retry config: max_delay: max_delay must be >= base_delay"


@pytest.mark.parametrize(("policy", "summary"), [
    (DEFAULT_POLICY, "5 retries · exponential 5 s → 1 h · jitter"),
    (RetryPolicy(max_retries=1, backoff="fixed", base_delay=30, jitter=False),
     "1 retry · fixed 30 s"),
    (RetryPolicy(max_retries=3, backoff="linear", base_delay=90, max_delay=600, jitter=False),
     "3 retries · linear 90 s → 10 min"),
    (RetryPolicy(max_retries=0), "no retries"),
])
def test_retry_summary(policy, summary):
    assert retry_summary(policy) == summary


# -- secret rotation ---------------------------------------------------------------------------

async def test_rotate_secret_keeps_the_old_one_for_the_grace_period(db):
    endpoint = await make_endpoint(URL)
    old = endpoint.secret
    before = datetime.now(UTC)

    result = await rotate_secret(endpoint.id, "alice", grace_s=3600)

    assert result["secret"].startswith(SECRET_PREFIX) and result["secret"] != old
    sign(result["secret"], "msg_1", 0, b"{}")  # a usable key
    stored = await Endpoint.get(id=endpoint.id)
    assert (stored.secret, stored.previous_secret) == (result["secret"], old)
    expires = stored.previous_secret_expires_at
    assert before + timedelta(seconds=3599) <= expires <= datetime.now(UTC) + timedelta(hours=1)
    assert result["previous_secret_expires_at"] == expires.isoformat()
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor, audit.details["grace_s"]) == (
        "endpoint.rotate_secret", "alice", 3600)
    assert old not in str(audit.details) and result["secret"] not in str(audit.details)


async def test_rotate_secret_default_grace_is_a_day_and_zero_drops_the_old_secret(db):
    endpoint = await make_endpoint(URL)
    await rotate_secret(endpoint.id, "alice")
    stored = await Endpoint.get(id=endpoint.id)
    left = stored.previous_secret_expires_at - datetime.now(UTC)
    assert timedelta(hours=23) < left <= timedelta(days=1)

    result = await rotate_secret(endpoint.id, "alice", grace_s=0)
    stored = await Endpoint.get(id=endpoint.id)
    assert result["previous_secret_expires_at"] is None
    assert (stored.previous_secret, stored.previous_secret_expires_at) == (None, None)


@pytest.mark.parametrize("grace_s", [-1, 8 * 86400, 1.5, True])
async def test_bad_grace_period_changes_nothing(db, grace_s):
    endpoint = await make_endpoint(URL)
    before = await snapshot(endpoint.id)
    with pytest.raises(ValidationError) as exc:
        await rotate_secret(endpoint.id, "alice", grace_s=grace_s)
    assert fields_of(exc) == {"grace_s": "int_range"}
    assert await snapshot(endpoint.id) == before
    assert not await AuditLog.exists()


# -- disable / enable --------------------------------------------------------------------------

async def test_disable_then_enable_is_audited_and_clears_the_health_record(db):
    endpoint = await make_endpoint(URL)
    await Endpoint.filter(id=endpoint.id).update(failing_since=datetime.now(UTC),
                                                 consecutive_failures=7)

    row = await disable_endpoint(endpoint.id, "alice", "  receiver migrating  ")
    assert (row["enabled"], row["disabled_reason"]) == (False, "receiver migrating")
    assert row["disabled_at"] is not None

    row = await enable_endpoint(endpoint.id, "bob")
    assert row["enabled"] is True
    assert (row["disabled_reason"], row["disabled_at"], row["failing_since"],
            row["consecutive_failures"]) == (None, None, None, 0)

    disable, enable = await AuditLog.all().order_by("id")
    assert (disable.action, disable.actor, disable.details) == (
        "endpoint.disable", "alice", {"reason": "receiver migrating"})
    assert (enable.action, enable.actor) == ("endpoint.enable", "bob")
    assert enable.details["previous_reason"] == "receiver migrating"
    assert enable.details["consecutive_failures"] == 7


@pytest.mark.parametrize("reason", ["", "   ", "x" * 201, None])
async def test_disable_needs_a_reason(db, reason):
    endpoint = await make_endpoint(URL)
    with pytest.raises(ValidationError) as exc:
        await disable_endpoint(endpoint.id, "alice", reason)  # type: ignore[arg-type]
    assert fields_of(exc) == {"reason": "string_length"}
    assert (await Endpoint.get(id=endpoint.id)).enabled is True
    assert not await AuditLog.exists()


async def test_disabling_twice_or_enabling_an_enabled_endpoint_conflicts(db):
    endpoint = await make_endpoint(URL)
    with pytest.raises(ConflictError, match="already enabled"):
        await enable_endpoint(endpoint.id, "alice")
    await disable_endpoint(endpoint.id, "alice", "maintenance")
    with pytest.raises(ConflictError, match="already disabled"):
        await disable_endpoint(endpoint.id, "alice", "again")
    assert (await Endpoint.get(id=endpoint.id)).disabled_reason == "maintenance"
    assert await AuditLog.all().count() == 1


# -- overview ----------------------------------------------------------------------------------

async def add_deliveries(endpoint: Endpoint, status: DeliveryStatus, n: int,
                         finished_ago_s: float | None = None) -> None:
    message = await Message.create(app_id=endpoint.app_id,  # type: ignore[attr-defined]
                                   event_type="order.created", payload={})
    finished = (datetime.now(UTC) - timedelta(seconds=finished_ago_s)
                if finished_ago_s is not None else None)
    for _ in range(n):
        await Delivery.create(message=message, endpoint=endpoint, status=status,
                              finished_at=finished)


async def test_overview_shows_health_load_success_rate_and_policy(db):
    shop = await Application.create(name="shop")
    healthy = await make_endpoint("http://127.0.0.1:9/a", app=shop, retry_config=None)
    failing = await make_endpoint("http://127.0.0.1:9/b", app=shop, retry_config=OWN_POLICY,
                                  failing_since=datetime.now(UTC), consecutive_failures=3)
    off = await make_endpoint("http://127.0.0.1:9/c", enabled=False, disabled_reason="gone")
    await add_deliveries(healthy, DeliveryStatus.RUNNING, 2)
    await add_deliveries(healthy, DeliveryStatus.SUCCEEDED, 3, finished_ago_s=60)
    await add_deliveries(healthy, DeliveryStatus.FAILED, 1, finished_ago_s=120)
    await add_deliveries(healthy, DeliveryStatus.SUCCEEDED, 5, finished_ago_s=7200)  # too old
    await add_deliveries(healthy, DeliveryStatus.QUEUED, 4)
    await add_deliveries(failing, DeliveryStatus.FAILED, 2, finished_ago_s=10)

    rows = {row["id"]: row for row in await list_endpoints_overview()}

    a, b, c = rows[healthy.id], rows[failing.id], rows[off.id]
    assert (a["app_name"], a["health"], a["in_flight"]) == ("shop", "healthy", 2)
    assert (a["recent_succeeded"], a["recent_finished"], a["success_rate"]) == (3, 4, 0.75)
    assert (a["retry_is_default"], a["retry_summary"]) == (
        True, "5 retries · exponential 5 s → 1 h · jitter")
    assert (b["health"], b["success_rate"], b["in_flight"]) == ("failing", 0.0, 0)
    assert b["failing_since"] is not None
    assert (b["retry_is_default"], b["retry_summary"]) == (False, "3 retries · linear 2 s → 1 min")
    assert (c["health"], c["disabled_reason"], c["success_rate"]) == ("disabled", "gone", None)
    assert all("secret" not in row for row in rows.values())
