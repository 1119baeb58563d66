"""Retry one dead-letter entry: the rule shared by the dashboard, REST and CLI.

A normal retry re-delivers the entry's message to its endpoint (entry → `retrying`). A sandbox
retry sends it to another URL, optionally with extra headers and changed payload fields, to
test a fix without touching production: the entry keeps its status, its outcome neither
resolves the entry nor adds one to the DLQ, and it counts nothing against the endpoint.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import weakref
from datetime import UTC, datetime
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

from arq.connections import ArqRedis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError
from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient, TransactionalDBClient
from tortoise.exceptions import IntegrityError, OperationalError
from tortoise.transactions import in_transaction

from jobs import audit
from jobs.errors import (AlreadyInFlightError, ConfigurationGoneError, ConflictError,
                         NotFoundError, NotRetryableError, OperationError, ValidationError)
from jobs.grouping import GroupCommit, for_target
from jobs.guard import DestinationBlockedError, check_url
from jobs.queue import Command, delivery_command
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.enums import DeadLetterStatus, DeliveryStatus

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
#: headers a sandbox may not set: the signature set, and what the HTTP client owns
RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature",
                              "content-type", "content-length", "host", "transfer-encoding",
                              "connection"})


class RetryOverrides(BaseModel):
    """What a sandbox retry changes: where it goes, extra headers, payload fields."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=2048,
                            description="where to send it (required for a sandbox retry)")
    headers: dict[str, str] = Field(default_factory=dict, max_length=20,
                                    description="extra request headers (not the signature ones)")
    payload: dict[str, Any] | None = Field(
        None, description="fields replacing those of the message's payload (shallow merge)")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by Observatory and cannot be overridden")
            if len(text) > 1000 or "\r" in text or "\n" in text:
                raise ValueError(f"the value of {name!r} must be one line of at most 1000 "
                                 "characters")
        return value

    def is_empty(self) -> bool:
        return self.url is None and not self.headers and self.payload is None


def _overrides(raw: RetryOverrides | dict[str, Any] | None) -> RetryOverrides:
    if isinstance(raw, RetryOverrides):
        return raw
    try:
        return RetryOverrides.model_validate(raw or {})
    except PydanticValidationError as exc:
        fields = [{"field": ".".join(["overrides", *map(str, e["loc"])]), "rule": e["type"],
                   "message": e["msg"]} for e in exc.errors()]
        raise ValidationError(f"{fields[0]['field']}: {fields[0]['message']}",
                              {"fields": fields}) from exc


def _sandbox_target(overrides: RetryOverrides) -> str:
    """The sandbox URL, checked like an endpoint's (scheme, host, SSRF guard)."""
    if overrides.url is None:
        raise ValidationError(
            "overrides.url: required for a sandbox retry (a sandbox never goes to the "
            "production endpoint unless you give its URL)",
            {"fields": [{"field": "overrides.url", "rule": "missing",
                         "message": "required for a sandbox retry"}]})
    try:
        check_url(overrides.url, get_settings().destination_allowlist)
    except (ValueError, DestinationBlockedError) as exc:
        raise ValidationError(f"overrides.url: {exc}", {"fields": [
            {"field": "overrides.url", "rule": "destination", "message": str(exc)}]}) from exc
    return overrides.url


class RetryResult(TypedDict):
    dead_letter_id: int
    original_delivery_id: int
    delivery_id: int
    status: str
    sandbox: bool


async def retry_dead_letter(entry_id: int, actor: str, *, redis: ArqRedis, sandbox: bool = False,
                            overrides: RetryOverrides | dict[str, Any] | None = None
                            ) -> RetryResult:
    """Re-deliver a DLQ entry's message as a NEW delivery and mark the entry `retrying`
    (a sandbox retry, see the module's docstring, leaves the entry as it is).

    The failed delivery keeps its status and timestamps; the new one has `retry_of` set.

    Raises:
        NotFoundError: no such entry.
        ValidationError: overrides without `sandbox`, a sandbox without `overrides.url`, or
            an override that is not valid (naming the field).
        AlreadyInFlightError: a retry of this entry is already queued or running.
        NotRetryableError: the entry is resolved or archived.
        ConfigurationGoneError: its endpoint was deleted.
    """
    changes = _overrides(overrides)
    if not sandbox and not changes.is_empty():
        raise ValidationError("overrides: only a sandbox retry can change the URL, headers or "
                              "payload (send \"sandbox\": true)", {"fields": [
                                  {"field": "overrides", "rule": "sandbox_only",
                                   "message": "only with sandbox: true"}]})
    if sandbox:
        entry = await DeadLetter.get_or_none(id=entry_id).select_related("endpoint")
        if entry is None:
            raise NotFoundError(f"DLQ entry {entry_id} does not exist")
        return await _sandbox_retry(entry, actor, changes, redis=redis)
    try:
        return await _retry(entry_id, actor, redis=redis)
    except ConflictError as exc:  # refused clicks are audited too: who tried, and why not
        await audit.record(actor, "dlq.retry_refused", "dead_letter", entry_id, code=exc.code,
                           message=exc.message)
        raise


async def _retry(entry_id: int, actor: str, *, redis: ArqRedis) -> RetryResult:
    """Claim first (compare-and-set: of concurrent clicks exactly one wins), read only when
    refused, to say why. The claim, the new delivery, the entry's link to it and the audit
    row are one statement on PostgreSQL (one transaction on SQLite)."""
    created = await _claim_and_create(entry_id, actor)
    if created is None:
        raise await _refusal(entry_id)
    delivery_id, original_id = created
    await _hand_over(redis, delivery_id, [
        {"type": "dlq.changed", "id": entry_id, "status": DeadLetterStatus.RETRYING.value},
        {"type": "delivery.updated", "id": delivery_id, "status": DeliveryStatus.QUEUED.value}])
    return RetryResult(dead_letter_id=entry_id, original_delivery_id=original_id,
                       delivery_id=delivery_id, status=DeliveryStatus.QUEUED.value, sandbox=False)


async def _refusal(entry_id: int) -> OperationError:
    """Why the claim of `entry_id` missed (the entry as it is now)."""
    entry = await DeadLetter.get_or_none(id=entry_id)
    if entry is None:
        return NotFoundError(f"DLQ entry {entry_id} does not exist")
    if entry.status == DeadLetterStatus.RETRYING:
        return AlreadyInFlightError(f"A retry of DLQ entry {entry_id} is already in flight")
    if entry.status != DeadLetterStatus.ACTIVE:
        return NotRetryableError(
            f"DLQ entry {entry_id} is {entry.status.value}; only active entries can be retried")
    if entry.endpoint_id is None:  # type: ignore[attr-defined]
        return ConfigurationGoneError(
            f"DLQ entry {entry_id}: the original configuration could not be found "
            "(its endpoint was deleted)")
    # active with an endpoint: a concurrent retry finished (or was cancelled) meanwhile
    return AlreadyInFlightError(f"A retry of DLQ entry {entry_id} is already in flight")


#: PostgreSQL, ONE statement (atomic without a transaction): claim the entry (active, its
#: endpoint still there) linking it to a delivery id drawn from the sequence, create that
#: delivery, write the audit row. Nothing when the claim misses.
_PG_RETRY = """
WITH claimed AS (
    UPDATE dead_letter SET status = $2, retry_count = retry_count + 1, updated_at = $3,
           last_retry_delivery_id = nextval(pg_get_serial_sequence('delivery', 'id'))
    WHERE id = $1 AND status = $4 AND endpoint_id IS NOT NULL
    RETURNING id, last_retry_delivery_id, delivery_id, message_id, endpoint_id, retry_count
), created AS (
    INSERT INTO delivery (id, message_id, endpoint_id, status, attempts, retry_of_id, metadata,
                          created_at, updated_at)
    SELECT last_retry_delivery_id, message_id, endpoint_id, $5, 0, delivery_id,
           jsonb_build_object('__retry_metadata', jsonb_build_object(
               'original_delivery_id', delivery_id, 'dead_letter_id', id,
               'retry_count', retry_count, 'sandbox', false)),
           $3, $3
    FROM claimed
    RETURNING id, retry_of_id
), audited AS (
    INSERT INTO audit_log (actor, action, target_type, target_id, details, created_at)
    SELECT $6, 'dlq.retry', 'dead_letter', $7, jsonb_build_object(
               'original_delivery_id', retry_of_id, 'new_delivery_id', id), $3
    FROM created
)
SELECT id, retry_of_id FROM created
"""
#: PostgreSQL, _PG_RETRY for several retries at once ($1 entry ids, $2 their actors, in
#: arrival order; an entry twice: the first click claims it, the later ones miss as they
#: would one after the other). Returns the claims that won, by position (`ord`, from 1).
_PG_RETRY_MANY = """
WITH wanted AS (
    SELECT DISTINCT ON (entry_id) entry_id, actor, ord
    FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(entry_id, actor, ord)
    ORDER BY entry_id, ord
), claimed AS (
    UPDATE dead_letter d SET status = $4, retry_count = d.retry_count + 1, updated_at = $3,
           last_retry_delivery_id = nextval(pg_get_serial_sequence('delivery', 'id'))
    FROM wanted w
    WHERE d.id = w.entry_id AND d.status = $5 AND d.endpoint_id IS NOT NULL
    RETURNING d.id, d.last_retry_delivery_id, d.delivery_id, d.message_id, d.endpoint_id,
              d.retry_count, w.actor, w.ord
), created AS (
    INSERT INTO delivery (id, message_id, endpoint_id, status, attempts, retry_of_id, metadata,
                          created_at, updated_at)
    SELECT last_retry_delivery_id, message_id, endpoint_id, $6, 0, delivery_id,
           jsonb_build_object('__retry_metadata', jsonb_build_object(
               'original_delivery_id', delivery_id, 'dead_letter_id', id,
               'retry_count', retry_count, 'sandbox', false)),
           $3, $3
    FROM claimed
), audited AS (
    INSERT INTO audit_log (actor, action, target_type, target_id, details, created_at)
    SELECT actor, 'dlq.retry', 'dead_letter', id::text, jsonb_build_object(
               'original_delivery_id', delivery_id, 'new_delivery_id', last_retry_delivery_id),
           $3
    FROM claimed
)
SELECT ord, last_retry_delivery_id AS id, delivery_id AS retry_of_id FROM claimed
"""
#: SQLite (no data-modifying CTE): the claim, then the rest in the same transaction, each the
#: counterpart of a part of _PG_RETRY (set-based SQL, as jobs/operations/bulk_claim.py's)
_SQLITE_CLAIM = """
UPDATE dead_letter SET status = ?, retry_count = retry_count + 1, updated_at = ?
WHERE id = ? AND status = ? AND endpoint_id IS NOT NULL
RETURNING delivery_id
"""
_SQLITE_CREATE = """
INSERT INTO delivery (message_id, endpoint_id, status, attempts, retry_of_id, metadata,
                      created_at, updated_at)
SELECT message_id, endpoint_id, ?, 0, delivery_id,
       json_object('__retry_metadata', json_object(
           'original_delivery_id', delivery_id, 'dead_letter_id', id,
           'retry_count', retry_count, 'sandbox', json('false'))),
       ?, ?
FROM dead_letter WHERE id = ?
RETURNING id
"""
_SQLITE_LINK = "UPDATE dead_letter SET last_retry_delivery_id = ? WHERE id = ?"
_SQLITE_AUDIT = """
INSERT INTO audit_log (actor, action, target_type, target_id, details, created_at)
VALUES (?, 'dlq.retry', 'dead_letter', ?,
        json_object('original_delivery_id', ?, 'new_delivery_id', ?), ?)
"""


async def _claim_and_create(entry_id: int, actor: str) -> tuple[int, int] | None:
    """(new delivery id, original delivery id), or None when the claim missed."""
    now = datetime.now(UTC)
    retrying, active = DeadLetterStatus.RETRYING.value, DeadLetterStatus.ACTIVE.value
    queued = DeliveryStatus.QUEUED.value
    conn = connections.get("default")
    if conn.capabilities.dialect != "postgres":
        return await _sqlite_claim_and_create(conn, entry_id, actor, now)
    if isinstance(conn, TransactionalDBClient):  # in a caller's transaction: alone
        rows = await conn.execute_query_dict(_PG_RETRY, [
            entry_id, retrying, now, active, queued, actor, str(entry_id)])
        return (int(rows[0]["id"]), int(rows[0]["retry_of_id"])) if rows else None
    return await _claims(conn, _pg_write).run(conn, (entry_id, actor, now))


async def _pg_write(conn: BaseDBAsyncClient, items: list[_Item]) -> list[_Claimed | Exception]:
    """PostgreSQL, a group of retries (see _claims) in ONE statement (_PG_RETRY_MANY: one
    round trip for all); if it fails (nothing done: one statement), each alone, so that each
    gets its own answer."""
    retrying, active = DeadLetterStatus.RETRYING.value, DeadLetterStatus.ACTIVE.value
    queued = DeliveryStatus.QUEUED.value
    if len(items) > 1:
        try:
            rows = await conn.execute_query_dict(_PG_RETRY_MANY, [
                [retry[0] for retry, _ in items], [retry[1] for retry, _ in items],
                items[0][0][2], retrying, active, queued])
        except Exception:  # noqa: BLE001 - each alone below says which and why
            pass
        else:
            won = {int(row["ord"]): (int(row["id"]), int(row["retry_of_id"])) for row in rows}
            return [won.get(i) for i in range(1, len(items) + 1)]
    outcomes: list[_Claimed | Exception] = []
    for (entry_id, actor, now), _ in items:
        try:
            rows = await conn.execute_query_dict(_PG_RETRY, [
                entry_id, retrying, now, active, queued, actor, str(entry_id)])
        except Exception as exc:  # noqa: BLE001 - that retry's answer
            outcomes.append(exc)
        else:
            outcomes.append((int(rows[0]["id"]), int(rows[0]["retry_of_id"])) if rows else None)
    return outcomes


async def _sqlite_claim_and_create(conn: BaseDBAsyncClient, entry_id: int, actor: str,
                                   now: datetime) -> tuple[int, int] | None:
    """SQLite: the claim, the new delivery, the link and the audit row as one transaction run
    in ONE call on aiosqlite's thread. A process has one SQLite connection, guarded by an
    asyncio lock that a transaction holds throughout: run statement by statement, every step
    is a hop to that thread and back through a busy event loop (7 per retry), and under 20
    concurrent clients the lock was held ~10 ms per retry, serialising every request of the
    process (measured: bench/bulk_retry.py --single-retries-only). Here the lock is held
    for one hop, and SQLite's write lock only while the statements run.

    Concurrent retries share that hop and that transaction (group commit, see
    _claims): BEGIN IMMEDIATE and COMMIT (the WAL write) were ~a fifth of the API's
    CPU per retry under 20 clients. Each retry runs in its own savepoint, so one that fails
    leaves the others (and its own all-or-nothing rule) as they were.

    Errors are tortoise's, as through `execute_query` (sqlite3's OperationalError and
    IntegrityError translated). Inside a caller's transaction it runs alone, in a savepoint."""
    if isinstance(conn, TransactionalDBClient):  # the caller's transaction holds the lock
        async with conn.acquire_connection() as connection:  # aiosqlite.Connection
            try:
                # aiosqlite has no public call for "run this on the connection's thread"
                [outcome] = await connection._execute(  # noqa: SLF001
                    _sqlite_retry_transaction, connection._conn,  # noqa: SLF001
                    [(entry_id, actor, now)])
            except Exception as exc:
                raise _translated(exc) from exc
        if isinstance(outcome, Exception):
            raise _translated(outcome) from outcome
        return outcome
    return await _claims(conn, _sqlite_write).run(conn, (entry_id, actor, now))


async def _sqlite_write(conn: BaseDBAsyncClient, items: list[_Item]
                        ) -> list[_Claimed | Exception | None]:
    """SQLite, a group of retries (see _claims): one hop, one transaction."""
    async with conn.acquire_connection() as connection:  # aiosqlite.Connection
        wanted = [i for i, (_, future) in enumerate(items) if not future.done()]  # not cancelled
        outcomes: list[_Claimed | Exception | None] = [None] * len(items)
        if wanted:
            for i, outcome in zip(wanted, await connection._execute(  # noqa: SLF001
                    _sqlite_retry_transaction, connection._conn,  # noqa: SLF001
                    [items[i][0] for i in wanted]), strict=True):
                outcomes[i] = outcome
        return outcomes


def _translated(exc: Exception) -> Exception:
    """tortoise's exception for a sqlite3 one (a new one per caller: several may share it)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(exc)
    if isinstance(exc, sqlite3.OperationalError):
        return OperationalError(exc)
    return exc


_Claimed = tuple[int, int] | None
#: a retry waiting for its group: (entry id, actor, now), the caller's future
_Item = tuple[tuple[int, str, datetime], "asyncio.Future[_Claimed]"]

#: database client -> its retries waiting for the next write
_claim_groups: weakref.WeakKeyDictionary[BaseDBAsyncClient, GroupCommit[Any, Any, Any]] = (
    weakref.WeakKeyDictionary())


def _claims(conn: BaseDBAsyncClient, write: Callable[[BaseDBAsyncClient, list[_Item]],
                                                     Awaitable[list[Any]]]
            ) -> GroupCommit[BaseDBAsyncClient, tuple[int, str, datetime], _Claimed]:
    """Group commit of single retries on one database client (jobs.grouping): `write`
    (the dialect's) answers per retry: the claim, None when it missed, or the exception of
    that retry alone. A caller cancelled before its turn is left out; after it, its retry
    stands (as a statement already sent would)."""
    group = for_target(_claim_groups, conn, lambda: GroupCommit(write, _translated))
    group.send = write  # (looked up by the caller: tests replace the module's functions)
    return group


def _sqlite_retry_transaction(db: sqlite3.Connection, items: list[tuple[int, str, datetime]]
                              ) -> list[_Claimed | Exception]:
    """On aiosqlite's thread (blocking): the retries `items` (entry id, actor, now) in one
    transaction (a savepoint in a caller's), each in its own savepoint when there are several;
    per retry (new delivery id, original delivery id), None when its claim missed, or the
    exception that undid it."""
    nested = db.in_transaction  # a caller's transaction (tortoise's in_transaction)
    db.execute("SAVEPOINT dlq_retry" if nested else "BEGIN IMMEDIATE")
    try:
        if len(items) == 1:  # alone: its failure undoes the transaction (below)
            outcomes: list[_Claimed | Exception] = [_sqlite_retry_one(db, *items[0])]
        else:
            outcomes = []
            for item in items:
                db.execute("SAVEPOINT dlq_retry_one")
                try:
                    outcomes.append(_sqlite_retry_one(db, *item))
                except Exception as exc:  # noqa: BLE001 - that retry's answer
                    db.execute("ROLLBACK TO dlq_retry_one")
                    outcomes.append(exc)
                db.execute("RELEASE dlq_retry_one")
        db.execute("RELEASE dlq_retry" if nested else "COMMIT")
        return outcomes
    except BaseException:
        if nested:
            db.execute("ROLLBACK TO dlq_retry")
            db.execute("RELEASE dlq_retry")
        elif db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _sqlite_retry_one(db: sqlite3.Connection, entry_id: int, actor: str,
                      now: datetime) -> _Claimed:
    """The claim, and when it wins the new delivery, the link and the audit row."""
    row = db.execute(_SQLITE_CLAIM, [DeadLetterStatus.RETRYING.value, now, entry_id,
                                     DeadLetterStatus.ACTIVE.value]).fetchone()
    if row is None:
        return None
    original_id = int(row[0])
    [delivery_id] = db.execute(_SQLITE_CREATE, [DeliveryStatus.QUEUED.value, now, now,
                                                entry_id]).fetchone()
    db.execute(_SQLITE_LINK, [delivery_id, entry_id])
    db.execute(_SQLITE_AUDIT, [actor, str(entry_id), original_id, delivery_id, now])
    return int(delivery_id), original_id


async def _sandbox_retry(entry: DeadLetter, actor: str, overrides: RetryOverrides, *,
                         redis: ArqRedis) -> RetryResult:
    target = _sandbox_target(overrides)
    endpoint = entry.endpoint  # loaded with the entry
    if endpoint is None:  # its secret signs the request
        raise ConfigurationGoneError(
            f"DLQ entry {entry.id}: the original configuration could not be found "
            "(its endpoint was deleted)")
    original_id: int = entry.delivery_id  # type: ignore[attr-defined]
    async with in_transaction():
        delivery = await Delivery.create(
            message_id=entry.message_id,  # type: ignore[attr-defined]
            endpoint=endpoint, status=DeliveryStatus.QUEUED, retry_of_id=original_id,
            metadata={"__retry_metadata": {
                "original_delivery_id": original_id, "dead_letter_id": entry.id,
                "retry_count": entry.retry_count, "sandbox": True,
                "overrides": overrides.model_dump(exclude_none=True)}},
        )
        await audit.record(actor, "dlq.sandbox_retry", "dead_letter", entry.id,
                           original_delivery_id=original_id, new_delivery_id=delivery.id,
                           url=target, header_names=sorted(overrides.headers),
                           payload_fields=sorted(overrides.payload or {}))
    await _hand_over(redis, delivery.id, [
        {"type": "delivery.updated", "id": delivery.id, "status": DeliveryStatus.QUEUED.value}])
    return RetryResult(dead_letter_id=entry.id, original_delivery_id=original_id,
                       delivery_id=delivery.id, status=DeliveryStatus.QUEUED.value, sandbox=True)


async def _hand_over(redis: ArqRedis, delivery_id: int, events: list[dict[str, Any]]) -> None:
    """Enqueue the delivery's first try and publish `events`: one command (see
    jobs.queue.delivery_command); hand-overs of concurrent retries go to Redis together, in one
    pipeline (one write and one read for all: the socket write of each command alone was
    ~a sixth of the API's CPU per retry under 20 clients). Returns once this one has run."""
    command = delivery_command(redis, delivery_id, events=events)
    group = for_target(_hand_overs, redis, lambda: GroupCommit(
        lambda redis_, commands: _send_commands(redis_, commands)))
    await group.run(redis, command)


#: Redis pool -> hand-overs waiting for the next pipeline
_hand_overs: weakref.WeakKeyDictionary[ArqRedis, GroupCommit[Any, Any, Any]] = (
    weakref.WeakKeyDictionary())


async def _send_commands(redis: ArqRedis, group: list[tuple[Command, asyncio.Future[Any]]]
                         ) -> list[Any]:
    """Commands of concurrent hand-overs: alone, a plain command; several, one pipeline
    (each command's error is its caller's)."""
    if len(group) == 1:
        return [await redis.execute_command(*group[0][0])]
    async with redis.pipeline(transaction=False) as pipe:
        for command, _ in group:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)
