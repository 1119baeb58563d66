"""Endpoint management: edit, delete, retry policy, secret rotation, disable and re-enable.

The one place each action lives: the dashboard handlers, the REST routes and the CLI call
these functions, and every change writes an audit row (in the same transaction) naming the
actor. Bad input raises `jobs.errors.ValidationError` whose `details["fields"]` lists
`{field, rule, message}` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypedDict
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError
from tortoise.transactions import in_transaction

from jobs import audit
from jobs.errors import ConflictError, NotFoundError, ValidationError
from jobs.policy import DEFAULT_POLICY, RetryPolicy
from jobs.signing import generate_secret
from models.endpoint_queries import (EndpointRow, delivery_stats, get_endpoint_row,
                                     list_endpoint_rows)
from models.endpoints import Endpoint

DEFAULT_GRACE_S = 86400  # a rotated-out secret keeps signing for a day
MAX_GRACE_S = 7 * 86400
CLEARABLE = frozenset({"event_types", "max_in_flight"})  # fields `clear=` may reset to null
RETRY_FIELDS = tuple(RetryPolicy.model_fields)


class FieldError(TypedDict):
    field: str
    rule: str
    message: str


class RetryConfigView(TypedDict):
    endpoint_id: int
    policy: dict[str, Any]  # the effective policy, every field filled in
    is_default: bool  # the endpoint has no config of its own (retry_config is null)
    max_attempts: int


class RotatedSecret(TypedDict):
    endpoint_id: int
    secret: str
    previous_secret_expires_at: str | None  # None when the old secret stopped at once


class EndpointOverview(EndpointRow):
    health: str  # healthy | failing | disabled
    in_flight: int  # deliveries running now
    recent_succeeded: int  # finished in the last hour
    recent_finished: int
    success_rate: float | None  # recent_succeeded / recent_finished; None without any
    retry_summary: str  # "5 retries · exponential 5 s → 1 h · jitter"
    retry_is_default: bool


def field_errors(exc: PydanticValidationError, fallback: str = "body") -> list[FieldError]:
    """`{field, rule, message}` per pydantic error; a model-level error is given to the
    first known field its message names (`max_delay must be >= base_delay` -> max_delay)."""
    errors: list[FieldError] = []
    for err in exc.errors():
        message = str(err["msg"]).removeprefix("Value error, ")
        field = ".".join(str(p) for p in err["loc"])
        if not field:
            field = next((name for name in RETRY_FIELDS if message.startswith(name)), fallback)
        errors.append(FieldError(field=field, rule=str(err["type"]), message=message))
    return errors


def _invalid(what: str, errors: list[FieldError]) -> ValidationError:
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ValidationError(f"Invalid {what}: {summary}", {"fields": errors})


def validate_retry_config(config: Any) -> RetryPolicy:
    """The RetryPolicy for `config` (a mapping of its fields; missing ones take defaults).

    Raises:
        ValidationError: naming each bad field and the rule it breaks.
    """
    if not isinstance(config, Mapping):
        raise _invalid("retry config", [FieldError(
            field="retry_config", rule="dict_type",
            message="must be an object of retry policy fields, or null for the default")])
    try:
        return RetryPolicy.model_validate(dict(config))
    except PydanticValidationError as exc:
        raise _invalid("retry config", field_errors(exc, "retry_config")) from exc


class _EndpointChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=2048)
    description: str | None = Field(None, max_length=500)
    event_types: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    follow_redirects: bool | None = None
    max_in_flight: int | None = Field(None, ge=1, le=10_000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an absolute http:// or https:// URL")
        return value


async def _endpoint(endpoint_id: int) -> Endpoint:
    endpoint = await Endpoint.get_or_none(id=endpoint_id)
    if endpoint is None:
        raise NotFoundError(f"endpoint {endpoint_id} does not exist")
    return endpoint


async def _row(endpoint_id: int) -> EndpointRow:
    row = await get_endpoint_row(endpoint_id)
    if row is None:  # deleted between the change and this read
        raise NotFoundError(f"endpoint {endpoint_id} does not exist")
    return row


async def update_endpoint(endpoint_id: int, actor: str, *, url: str | None = None,
                          description: str | None = None, event_types: list[str] | None = None,
                          follow_redirects: bool | None = None,
                          max_in_flight: int | None = None,
                          clear: Collection[str] = ()) -> EndpointRow:
    """Change an endpoint's settings; arguments left None stay as they are.

    Args:
        clear: Fields to reset to null: "event_types" (every event type again) and/or
            "max_in_flight" (the default cap). `event_types=[]` also means every type.

    Raises:
        NotFoundError, ValidationError (nothing changed).
    """
    given = {k: v for k, v in {"url": url, "description": description,
                               "event_types": event_types, "follow_redirects": follow_redirects,
                               "max_in_flight": max_in_flight}.items() if v is not None}
    unknown = sorted(set(clear) - CLEARABLE)
    if unknown or set(clear) & set(given):
        bad = unknown or sorted(set(clear) & set(given))
        raise _invalid("update", [FieldError(
            field=f, rule="clear", message="only event_types and max_in_flight can be cleared, "
            "and not while also given a value") for f in bad])
    endpoint = await _endpoint(endpoint_id)
    try:
        changes = _EndpointChanges.model_validate(given).model_dump(exclude_unset=True)
    except PydanticValidationError as exc:
        raise _invalid("update", field_errors(exc)) from exc
    if "event_types" in changes:  # de-duplicated; an empty filter means every event type
        changes["event_types"] = list(dict.fromkeys(changes["event_types"])) or None
    changes.update({name: None for name in clear})
    if not changes:
        raise _invalid("update", [FieldError(field="body", rule="missing", message=(
            "nothing to change: give url, description, event_types, follow_redirects "
            "or max_in_flight"))])
    diff = {name: {"from": getattr(endpoint, name), "to": value}
            for name, value in changes.items() if getattr(endpoint, name) != value}
    if diff:
        async with in_transaction():
            await Endpoint.filter(id=endpoint_id).update(
                **{name: d["to"] for name, d in diff.items()}, updated_at=datetime.now(UTC))
            await audit.record(actor, "endpoint.update", "endpoint", endpoint_id, changes=diff)
    return await _row(endpoint_id)


async def delete_endpoint(endpoint_id: int, actor: str) -> EndpointRow:
    """Delete an endpoint. Its deliveries and DLQ entries stay (their endpoint becomes null,
    so retrying them is refused as "configuration gone").

    Returns:
        The endpoint as it was.
    """
    row = await _row(endpoint_id)
    async with in_transaction():
        deleted = await Endpoint.filter(id=endpoint_id).delete()
        if not deleted:
            raise NotFoundError(f"endpoint {endpoint_id} does not exist")
        await audit.record(actor, "endpoint.delete", "endpoint", endpoint_id,
                           url=row["url"], app_id=row["app_id"])
    return row


def _retry_view(endpoint: Endpoint) -> RetryConfigView:
    if endpoint.retry_config is None:
        policy = DEFAULT_POLICY
    else:
        try:
            policy = RetryPolicy.model_validate(endpoint.retry_config)
        except PydanticValidationError as exc:
            raise ConflictError(
                f"endpoint {endpoint.id} has an invalid stored retry config "
                f"({exc.error_count()} error(s)); PUT a valid one, or null for the default",
                {"fields": field_errors(exc, "retry_config")}) from exc
    return RetryConfigView(endpoint_id=endpoint.id, policy=policy.model_dump(),
                           is_default=endpoint.retry_config is None,
                           max_attempts=policy.max_attempts)


async def get_retry_config(endpoint_id: int) -> RetryConfigView:
    """The retry policy in force for an endpoint and whether it is the default one."""
    return _retry_view(await _endpoint(endpoint_id))


async def set_retry_config(endpoint_id: int, actor: str,
                           config: Mapping[str, Any] | None) -> RetryConfigView:
    """Give an endpoint its own retry policy, or None to fall back to the default one.

    The config is validated with RetryPolicy and stored complete (missing fields filled in).

    Raises:
        NotFoundError, ValidationError (nothing changed).
    """
    endpoint = await _endpoint(endpoint_id)
    stored = None if config is None else validate_retry_config(config).model_dump()
    previous = endpoint.retry_config
    async with in_transaction():
        await Endpoint.filter(id=endpoint_id).update(retry_config=stored,
                                                     updated_at=datetime.now(UTC))
        await audit.record(actor, "endpoint.retry_config", "endpoint", endpoint_id,
                           previous=previous, new=stored)
    endpoint.retry_config = stored
    return _retry_view(endpoint)


async def rotate_secret(endpoint_id: int, actor: str,
                        grace_s: int = DEFAULT_GRACE_S) -> RotatedSecret:
    """Give an endpoint a new `whsec_` secret; the old one keeps signing for `grace_s`.

    During the grace period deliveries carry both signatures, so receivers can switch keys
    without losing messages. `grace_s=0` drops the old secret at once. Rotating again within
    the grace period replaces the kept secret with the one just rotated out.

    Raises:
        NotFoundError, ValidationError, ConflictError (a concurrent rotation won).
    """
    endpoint = await _endpoint(endpoint_id)
    if isinstance(grace_s, bool) or not isinstance(grace_s, int) or not 0 <= grace_s <= MAX_GRACE_S:
        raise _invalid("rotation", [FieldError(
            field="grace_s", rule="int_range",
            message=f"must be an integer number of seconds from 0 to {MAX_GRACE_S}")])
    now = datetime.now(UTC)
    secret = generate_secret()
    expires = now + timedelta(seconds=grace_s) if grace_s else None
    async with in_transaction():
        # Compare-and-set on the old secret: of two concurrent rotations one wins cleanly.
        swapped = await Endpoint.filter(id=endpoint_id, secret=endpoint.secret).update(
            secret=secret, previous_secret=endpoint.secret if grace_s else None,
            previous_secret_expires_at=expires, updated_at=now)
        if not swapped:
            raise ConflictError(f"endpoint {endpoint_id}: its secret was rotated concurrently; "
                                "read the endpoint and try again")
        await audit.record(actor, "endpoint.rotate_secret", "endpoint", endpoint_id,
                           grace_s=grace_s,
                           previous_secret_expires_at=expires.isoformat() if expires else None)
    return RotatedSecret(endpoint_id=endpoint_id, secret=secret,
                         previous_secret_expires_at=expires.isoformat() if expires else None)


async def disable_endpoint(endpoint_id: int, actor: str, reason: str) -> EndpointRow:
    """Stop delivering to an endpoint, saying why.

    Raises:
        NotFoundError, ValidationError (empty or too long reason),
        ConflictError (already disabled).
    """
    await _endpoint(endpoint_id)
    reason = reason.strip() if isinstance(reason, str) else ""
    if not 1 <= len(reason) <= 200:
        raise _invalid("disable", [FieldError(
            field="reason", rule="string_length",
            message="say why the endpoint is disabled (1 to 200 characters)")])
    now = datetime.now(UTC)
    async with in_transaction():
        changed = await Endpoint.filter(id=endpoint_id, enabled=True).update(
            enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        if not changed:
            raise ConflictError(f"endpoint {endpoint_id} is already disabled")
        await audit.record(actor, "endpoint.disable", "endpoint", endpoint_id, reason=reason)
    return await _row(endpoint_id)


async def enable_endpoint(endpoint_id: int, actor: str) -> EndpointRow:
    """Re-enable a disabled endpoint with a clean health record.

    Clears the disabled reason and time, `failing_since` and `consecutive_failures`.

    Raises:
        NotFoundError, ConflictError (already enabled).
    """
    endpoint = await _endpoint(endpoint_id)
    async with in_transaction():
        changed = await Endpoint.filter(id=endpoint_id, enabled=False).update(
            enabled=True, disabled_reason=None, disabled_at=None, failing_since=None,
            consecutive_failures=0, updated_at=datetime.now(UTC))
        if not changed:
            raise ConflictError(f"endpoint {endpoint_id} is already enabled")
        await audit.record(
            actor, "endpoint.enable", "endpoint", endpoint_id,
            previous_reason=endpoint.disabled_reason,
            disabled_at=endpoint.disabled_at.isoformat() if endpoint.disabled_at else None,
            consecutive_failures=endpoint.consecutive_failures)
    return await _row(endpoint_id)


def _seconds(value: float) -> str:
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g} h"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g} min"
    return f"{value:g} s"


def retry_summary(policy: RetryPolicy) -> str:
    """One line: `5 retries · exponential 5 s → 1 h · jitter`."""
    if policy.max_retries == 0:
        return "no retries"
    retries = f"{policy.max_retries} retr{'y' if policy.max_retries == 1 else 'ies'}"
    delays = (_seconds(policy.base_delay) if policy.backoff == "fixed"
              else f"{_seconds(policy.base_delay)} → {_seconds(policy.max_delay)}")
    parts = [retries, f"{policy.backoff} {delays}"] + (["jitter"] if policy.jitter else [])
    return " · ".join(parts)


def _overview(row: EndpointRow, stats: Mapping[str, int]) -> EndpointOverview:
    config = row["retry_config"]
    try:
        summary = retry_summary(RetryPolicy.model_validate(config) if config else DEFAULT_POLICY)
    except PydanticValidationError:
        summary = "invalid retry config"
    health = ("disabled" if not row["enabled"]
              else "failing" if row["failing_since"] else "healthy")
    finished = stats.get("succeeded", 0) + stats.get("failed", 0)
    return EndpointOverview(
        **row, health=health, in_flight=stats.get("in_flight", 0),
        recent_succeeded=stats.get("succeeded", 0), recent_finished=finished,
        success_rate=round(stats.get("succeeded", 0) / finished, 4) if finished else None,
        retry_summary=summary, retry_is_default=config is None)


async def list_endpoints_overview() -> list[EndpointOverview]:
    """Every endpoint (by application) with its health, in-flight deliveries, success rate
    over the last hour and a summary of its retry policy. Three queries in all."""
    stats = await delivery_stats()
    return [_overview(row, stats.get(row["id"], {}))  # type: ignore[arg-type]
            for row in await list_endpoint_rows()]

