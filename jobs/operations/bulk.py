"""Bulk operations — Retry All, re-sync, archive and delete by filter: the one place they start,
are read and controlled (REST, CLI and dashboard call these functions).

    start_retry_all | start_archive_all | start_delete_all | resync.start_resync
        ─► BulkOperation row + Redis hash + ONE audit row + ONE walker job (bulk lane)
    walk_bulk_operation (jobs.operations.bulk_walk, arq job) ─► per batch: read the flags once,
        then by kind: retry hands the entries' ids to the bulk lane as `deliver_entries` jobs;
        re-sync creates one new delivery per message and hands them out as `deliver_batch`
        jobs; both paced per endpoint. Archive and delete act on the batch's entries in the
        database (one compare-and-set statement), no HTTP.
    deliver_entries (jobs.deliver) ─► claims its entries (CAS active → retrying) and creates
        their deliveries, `running`, unless the operation was cancelled (jobs.operations.
        bulk_claim). deliver_batch ─► is_cancelling() once per batch, right after its claim.
        record_outcomes bumps the hash once per batch (record_progress) and the last batch
        finishes the operation. After a cancel, the first batch's cancel_queued() cancels
        every queued delivery of the operation (the others find theirs cancelled already)

Snapshot-bound: the scope is frozen by `max_id` (entries that fail later — or, for a re-sync,
messages published later — are not swept in) and by the start time (an entry changed since —
retried, archived, failed again — is left alone and counted `skipped`). Figures: `completed =
succeeded + failed`; the operation finishes when `completed + cancelled + skipped == total`.
Entries of a disabled or deleted endpoint are `skipped` by a retry (left active and untouched: a
retry cannot succeed and would only add noise to their history). A cancel counts the entries
never handed out or never claimed by their job, and the queued deliveries it stops, as
`cancelled`. Each bulk delivery gets
exactly one attempt (no policy retries), so progress ends.

Live figures are the Redis hash `{namespace}:bulk:{id}` (kept one hour after the end); the row
holds the walker's cursor and figures (a restarted walker resumes from them) and the final
figures. The cursor is also the walkers' lock: each batch moves it with a compare-and-set, so a
second walker of the same operation stops at its first batch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypedDict

from arq.connections import ArqRedis
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from jobs import audit
from jobs.errors import ConflictError, NotFoundError, ValidationError
from jobs.events import publish_events
from jobs.operations.dlq import TRANSITIONS
from jobs.operations.reasons import check_reason
from jobs.queue import bulk_queue_name
from models.bulk import BulkOperation
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.dlq_filter import DlqFilter, select
from models.enums import BulkKind, BulkState, DeadLetterStatus, DeliveryStatus

S = BulkState
LIVE_STATES = (S.RUNNING, S.PAUSED, S.HALTED, S.CANCELLING)  # not finished yet
FIGURES = ("total", "completed", "succeeded", "failed", "cancelled", "skipped")
HASH_TTL_S = 3600  # the live hash outlives its operation by an hour
#: how long a worker trusts what it read of an operation's cancel flag (jobs.deliver): a cancel
#: answers no sooner than this after setting the flag, so nothing starts after its answer
CANCEL_FLAG_TTL_S = 0.05

#: the entry statuses each DLQ kind acts on: a retry takes active entries; archive follows
#: jobs.operations.dlq.TRANSITIONS (active or resolved → archived); delete takes any entry
#: not being retried (its retry reports back to the entry)
ACTS_ON: dict[BulkKind, tuple[DeadLetterStatus, ...]] = {
    BulkKind.RETRY: (DeadLetterStatus.ACTIVE,),
    BulkKind.ARCHIVE: tuple(s for s, to in TRANSITIONS.items() if DeadLetterStatus.ARCHIVED in to),
    BulkKind.DELETE: tuple(s for s in DeadLetterStatus if s != DeadLetterStatus.RETRYING),
}
#: kind → (audit action, verb for messages)
_ACTIONS = {BulkKind.RETRY: ("dlq.retry_all", "retry"),
            BulkKind.ARCHIVE: ("dlq.archive_all", "archive"),
            BulkKind.DELETE: ("dlq.delete_all", "delete"),
            BulkKind.RESYNC: ("endpoint.resync", "re-sync")}


class NothingToRetryError(ConflictError):
    code = "nothing_to_retry"


class NothingToArchiveError(ConflictError):
    code = "nothing_to_archive"


class NothingToDeleteError(ConflictError):
    code = "nothing_to_delete"


_NOTHING: dict[BulkKind, type[ConflictError]] = {
    BulkKind.RETRY: NothingToRetryError, BulkKind.ARCHIVE: NothingToArchiveError,
    BulkKind.DELETE: NothingToDeleteError}


class Canary(BaseModel):
    """Retry the first `count` entries first; halt if more than `max_failure_pct` % fail."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(ge=1, le=100_000)
    max_failure_pct: float = Field(ge=0, le=100)


class Preview(TypedDict):
    total: int
    snapshot: int | None  # pass it back to start_…: the count confirmed is the count acted on


class Started(TypedDict):
    operation_id: int
    total: int
    snapshot: int


class OperationView(TypedDict):
    id: int
    kind: str
    state: str
    total: int
    completed: int
    succeeded: int
    failed: int
    cancelled: int
    skipped: int
    scope: dict[str, Any]
    reason: str | None
    actor: str
    started_at: str
    finished_at: str | None
    eta_s: float | None
    halted_reason: str | None
    canary: dict[str, Any] | None


#: cancel_operation, pause_operation, resume_operation: (id, actor, *, reason, redis) → view
ControlAction = Callable[..., Awaitable[OperationView]]
#: start_archive_all, start_delete_all: (filter, actor, *, reason, snapshot, redis) → Started
StartByFilter = Callable[..., Awaitable[Started]]


def progress_key(operation_id: int) -> str:
    """The live hash of an operation (namespaced like every key of this instance)."""
    return f"{get_settings().namespace}:bulk:{operation_id}"


def rate_per_endpoint() -> float:
    """`OBSERVATORY_BULK_RATE_PER_ENDPOINT` (deliveries/s per endpoint; 0 = unpaced)."""
    return get_settings().bulk_rate_per_endpoint


# --- starting ---------------------------------------------------------------------------------

def _frozen(f: DlqFilter, snapshot: int | None, kind: BulkKind = BulkKind.RETRY) -> DlqFilter:
    """The scope as acted on: the statuses `kind` acts on (or those of them asked for),
    bounded by the snapshot."""
    allowed = ACTS_ON[kind]
    if f.status and not set(f.status) <= set(allowed):
        names = ", ".join(s.value for s in allowed)
        only = "active entries only" if kind == BulkKind.RETRY else f"{names} entries only"
        raise ValidationError(f"scope.status: a bulk {_ACTIONS[kind][1]} acts on {only}", {
            "fields": [{"field": "scope.status", "rule": f"{kind.value}_statuses",
                        "message": f"must be left out or a subset of [{names}]"}]})
    return f.model_copy(update={"status": list(f.status or allowed),
                                "max_id": snapshot or f.max_id})


async def preview(f: DlqFilter, *, snapshot: int | None = None,
                  kind: BulkKind = BulkKind.RETRY) -> Preview:
    """How many entries a Retry All (or archive/delete by filter: `kind`) over `f` would act
    on, and the snapshot that freezes that selection (the highest matching id). Changes
    nothing."""
    frozen = await _snapshot(_frozen(f, snapshot, kind))
    if frozen.max_id is None:
        return Preview(total=0, snapshot=None)
    return Preview(total=await select(frozen).count(), snapshot=frozen.max_id)


async def _snapshot(frozen: DlqFilter) -> DlqFilter:
    """Bound an unbounded scope by its highest matching id now (unchanged when none match)."""
    if frozen.max_id is not None:
        return frozen
    top = await select(frozen).order_by("-id").first().values_list("id", flat=True)
    return frozen.model_copy(update={"max_id": top}) if top else frozen


async def start_retry_all(f: DlqFilter, actor: str, *, reason: str | None = None,
                          snapshot: int | None = None, canary: Canary | None = None,
                          redis: ArqRedis) -> Started:
    """Start retrying every active entry of `f` (frozen at `snapshot`, or now) in the
    background; returns at once. One audit row (`dlq.retry_all`) for the whole operation.

    Raises:
        ValidationError: a reason is required and missing, or the scope asks for other statuses.
        ConflictError: nothing to retry (no active entry in the scope).
    """
    return await _start_dlq(BulkKind.RETRY, f, actor, reason=reason, snapshot=snapshot,
                            canary=canary, redis=redis)


async def start_archive_all(f: DlqFilter, actor: str, *, reason: str | None = None,
                            snapshot: int | None = None, redis: ArqRedis) -> Started:
    """Archive every active or resolved entry of `f` (frozen at `snapshot`, or now) in
    batches in the background; one audit row (`dlq.archive_all`), not one per entry.

    Raises:
        ValidationError: a reason is required and missing, or the scope asks for a status
            that cannot become archived.
        ConflictError: nothing to archive.
    """
    return await _start_dlq(BulkKind.ARCHIVE, f, actor, reason=reason, snapshot=snapshot,
                            redis=redis)


async def start_delete_all(f: DlqFilter, actor: str, *, reason: str | None = None,
                           snapshot: int | None = None, redis: ArqRedis) -> Started:
    """Delete for good every entry of `f` that is not being retried (frozen at `snapshot`, or
    now), in batches in the background; one audit row (`dlq.delete_all`) keeps who, the scope,
    the total and the reason. The failed deliveries and messages stay (the delivery log).

    Raises:
        ValidationError: a reason is required and missing, or the scope asks for `retrying`.
        ConflictError: nothing to delete.
    """
    return await _start_dlq(BulkKind.DELETE, f, actor, reason=reason, snapshot=snapshot,
                            redis=redis)


async def _start_dlq(kind: BulkKind, f: DlqFilter, actor: str, *, reason: str | None,
                     snapshot: int | None, canary: Canary | None = None,
                     redis: ArqRedis) -> Started:
    reason = check_reason(reason, destructive=True)
    frozen = await _snapshot(_frozen(f, snapshot, kind))
    started_at = datetime.now(UTC)  # entries changed after this are left alone
    total = await select(frozen).count() if frozen.max_id else 0
    if not total:
        noun = "an active" if kind == BulkKind.RETRY else "a matching"
        verb = _ACTIONS[kind][1]
        raise _NOTHING[kind](f"nothing to {verb}: no {noun} DLQ entry matches the scope",
                             {"scope": frozen.described()})
    op_id = await launch(kind, frozen.described(), total, actor, reason=reason,
                         started_at=started_at, canary=canary, redis=redis)
    return Started(operation_id=op_id, total=total, snapshot=int(frozen.max_id))  # type: ignore[arg-type]


async def launch(kind: BulkKind, scope: dict[str, Any], total: int, actor: str, *,
                 reason: str | None, started_at: datetime, canary: Canary | None = None,
                 redis: ArqRedis, **details: Any) -> int:
    """Create the operation and its ONE audit row (in one transaction), its live hash and
    its walker job; returns the operation id. The scope is already frozen and counted."""
    async with in_transaction():
        op = await BulkOperation.create(
            kind=kind, scope=scope, total=total, actor=actor, reason=reason,
            canary=canary.model_dump() if canary else None, started_at=started_at)
        extra = {"canary": op.canary} if kind == BulkKind.RETRY else {}
        await audit.record(actor, _ACTIONS[kind][0], "bulk_operation", op.id, scope=scope,
                           total=total, reason=reason, **extra, **details)
    await redis.hset(progress_key(op.id), mapping={  # type: ignore[misc]
        "total": total, "completed": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
        "skipped": 0, "handed": 0, "state": S.RUNNING.value})
    await redis.enqueue_job("walk_bulk_operation", op.id, _queue_name=bulk_queue_name())
    await publish_events(redis, [_event(op.id, S.RUNNING, {"total": total})])
    return int(op.id)


def _event(operation_id: int, state: BulkState | str, figures: dict[str, int]) -> dict[str, Any]:
    return {"type": "bulk.progress", "id": operation_id, "state": str(state), **figures}


# --- reading ----------------------------------------------------------------------------------

async def _operation(operation_id: int) -> BulkOperation:
    op = await BulkOperation.get_or_none(id=operation_id)
    if op is None:
        raise NotFoundError(f"operation {operation_id} does not exist")
    return op


def _figures(op: BulkOperation, live: dict[str, str]) -> dict[str, int]:
    """Live figures from the hash when present, else the row's."""
    row = {"total": op.total, "completed": op.completed, "succeeded": op.succeeded,
           "failed": op.failed, "cancelled": op.cancelled_count, "skipped": op.skipped}
    return {k: int(live.get(k, row[k])) for k in FIGURES}


def _eta(op: BulkOperation, figures: dict[str, int]) -> float | None:
    """Seconds left at the rate so far; None until something finished (or while stopped)."""
    if op.state not in (S.RUNNING, S.CANCELLING):
        return 0.0 if op.finished_at else None
    done = figures["completed"] + figures["cancelled"] + figures["skipped"]
    elapsed = (datetime.now(UTC) - op.started_at).total_seconds()
    if done <= 0 or elapsed <= 0:
        return None
    return round(max(figures["total"] - done, 0) / (done / elapsed), 1)


def view(op: BulkOperation, live: dict[str, str]) -> OperationView:
    figures = _figures(op, live)
    return OperationView(
        id=op.id, kind=op.kind.value, state=op.state.value, **figures,  # type: ignore[typeddict-item]
        scope=op.scope, reason=op.reason, actor=op.actor,
        started_at=op.started_at.isoformat(),
        finished_at=op.finished_at.isoformat() if op.finished_at else None,
        eta_s=_eta(op, figures), halted_reason=op.halted_reason, canary=op.canary)


async def _live(redis: Redis, ids: list[int]) -> list[dict[str, str]]:
    async with redis.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hgetall(progress_key(i))
        rows = await pipe.execute()
    return [{_s(k): _s(v) for k, v in row.items()} for row in rows]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def get_operation(operation_id: int, *, redis: Redis) -> OperationView:
    """One operation with live figures and an ETA. Raises NotFoundError."""
    op = await _operation(operation_id)
    return view(op, (await _live(redis, [op.id]))[0])


async def list_operations(*, redis: Redis, limit: int = 20) -> list[OperationView]:
    """The most recent operations, newest first (running ones are among them)."""
    ops = await BulkOperation.all().order_by("-id").limit(limit)
    return [view(op, live) for op, live in zip(ops, await _live(redis, [o.id for o in ops]),
                                                  strict=True)]


# --- control: cancel, pause, resume -----------------------------------------------------------

async def _transition(op: BulkOperation, allowed: tuple[BulkState, ...], to: BulkState,
                      verb: str, **changes: Any) -> None:
    """Compare-and-set the row's state; 409 when it is not (or no longer) one of `allowed`."""
    if op.state not in allowed or not await BulkOperation.filter(
            id=op.id, state=op.state).update(state=to, **changes):
        now = (await _operation(op.id)).state
        names = ", ".join(s.value for s in allowed)
        raise ConflictError(f"operation {op.id} is {now.value}; only {names} operations can "
                            f"be {verb}", {"state": now.value})
    op.state = to


async def _audit(op: BulkOperation, actor: str, action: str, reason: str | None,
                 was: BulkState) -> None:
    await audit.record(actor, f"bulk.{action}", "bulk_operation", op.id, reason=reason,
                       state_before=was.value)


async def cancel_operation(operation_id: int, actor: str, *, reason: str | None = None,
                           redis: ArqRedis) -> OperationView:
    """Stop the operation: nothing new starts (entries never handed out and queued deliveries
    are counted `cancelled`, their entries stay or go back to `active`), deliveries in flight
    finish; the state becomes `cancelled` once nothing is left in flight."""
    reason, op = check_reason(reason, destructive=False), await _operation(operation_id)
    was = op.state
    await _transition(op, (S.RUNNING, S.PAUSED, S.HALTED), S.CANCELLING, "cancelled",
                      cancelled=True)
    await _set_state(redis, op.id, S.CANCELLING)
    flag_set = time.monotonic()
    await _audit(op, actor, "cancel", reason, was)
    if op.kind == BulkKind.RETRY:
        await _cancel_unclaimed(redis, op.id)
    await end_walk(redis, op.id, cancelled=True)  # the walker stops at its next batch
    await finish_if_complete(redis, op.id)  # nothing was in flight
    # a worker may trust a read of the flag from just before it was set for CANCEL_FLAG_TTL_S:
    # once this answers, no delivery waiting for its endpoint's slot starts any more
    await asyncio.sleep(max(flag_set + CANCEL_FLAG_TTL_S - time.monotonic(), 0.0))
    return await get_operation(op.id, redis=redis)


async def _cancel_unclaimed(redis: Redis, operation_id: int) -> int:
    """Once the cancel committed: the entries handed out to jobs that had not claimed them
    yet are `cancelled` (they stay `active`). No job claims after the cancel (its claim
    locks the operation's row and checks `cancelled`), so the row's figures are final."""
    op = await _operation(operation_id)
    unclaimed = max(op.handed - op.claimed - op.late_skipped, 0)
    if unclaimed:
        await redis.hincrby(progress_key(operation_id), "cancelled", unclaimed)  # type: ignore[misc]
    return unclaimed


async def pause_operation(operation_id: int, actor: str, *, reason: str | None = None,
                          redis: ArqRedis) -> OperationView:
    """Stop handing out batches (deliveries already handed out still run) until resumed."""
    reason, op = check_reason(reason, destructive=False), await _operation(operation_id)
    await _transition(op, (S.RUNNING,), S.PAUSED, "paused")
    await _set_state(redis, op.id, S.PAUSED)
    await _audit(op, actor, "pause", reason, S.RUNNING)
    return await get_operation(op.id, redis=redis)


async def resume_operation(operation_id: int, actor: str, *, reason: str | None = None,
                           redis: ArqRedis) -> OperationView:
    """Go on with a paused operation, or with one its canary halted (overriding the canary)."""
    reason, op = check_reason(reason, destructive=False), await _operation(operation_id)
    was = op.state
    await _transition(op, (S.PAUSED, S.HALTED), S.RUNNING, "resumed",
                      **({"canary_passed": True, "halted_reason": None} if was == S.HALTED else {}))
    await _set_state(redis, op.id, S.RUNNING)
    await _audit(op, actor, "resume", reason, was)
    if was == S.HALTED:  # its walker had stopped
        await redis.enqueue_job("walk_bulk_operation", op.id, _queue_name=bulk_queue_name())
    return await get_operation(op.id, redis=redis)


async def _set_state(redis: Redis, operation_id: int, state: BulkState) -> None:
    await redis.hset(progress_key(operation_id), "state", state.value)  # type: ignore[misc]
    figures = await _live(redis, [operation_id])
    await publish_events(redis, [_event(operation_id, state, {
        k: int(v) for k, v in figures[0].items() if k in FIGURES})])


# --- progress (called once per batch by jobs.deliver / jobs.outcomes) -------------------------

async def record_late_skips(redis: Redis, operation_id: int, skipped: int) -> None:
    """A bulk-lane job found `skipped` of its entries changed since they were handed out:
    count them (finishing the operation when that was all that was left)."""
    figures = await redis.hincrby(progress_key(operation_id), "skipped", skipped)  # type: ignore[misc]
    await publish_events(redis, [_event(operation_id, S.RUNNING, {"skipped": int(figures)})])
    await finish_if_complete(redis, operation_id)


async def record_progress(redis: Redis, counts: dict[int, tuple[int, int]],
                          holds: dict[int, dict[int, float]]) -> list[dict[str, Any]]:
    """Bump each operation's hash once for a batch: `counts` maps operation id to (succeeded,
    failed); `holds` the endpoints that asked to wait (Retry-After → epoch seconds). Finishes
    operations whose figures are complete; returns their progress events."""
    async with redis.pipeline(transaction=False) as pipe:
        for op_id, (ok, bad) in counts.items():
            key = progress_key(op_id)
            pipe.hincrby(key, "completed", ok + bad)
            pipe.hincrby(key, "succeeded", ok)
            pipe.hincrby(key, "failed", bad)
            if hold := holds.get(op_id):
                pipe.hset(key, mapping={f"hold:{e}": t for e, t in hold.items()})
            pipe.hgetall(key)
        replies = await pipe.execute()
    events = []
    for op_id, live in zip(counts, [r for r in replies if isinstance(r, dict)], strict=True):
        figures = {_s(k): _s(v) for k, v in live.items()}
        events.append(_event(op_id, figures.get("state", ""), _ints(figures)))
        if _complete(figures):
            await finish(redis, op_id)
    return events


def _ints(figures: dict[str, str]) -> dict[str, int]:
    return {k: int(figures.get(k, 0)) for k in FIGURES}


def _complete(figures: dict[str, str]) -> bool:
    f = _ints(figures)
    return "total" in figures and f["completed"] + f["cancelled"] + f["skipped"] >= f["total"]


async def is_cancelling(redis: Redis, operation_id: int) -> bool:
    """Whether the operation was cancelled (one read of its live hash)."""
    state = await redis.hget(progress_key(operation_id), "state")  # type: ignore[misc]
    return state is not None and _s(state) == S.CANCELLING.value


async def cancel_queued(redis: Redis, operation_id: int, delivery_ids: list[int]) -> int | None:
    """Before a bulk batch is claimed (one read): if its operation was cancelled, mark the
    deliveries that have not started `cancelled` and their entries `active` again, count them,
    and return how many; None when the batch may go on.

    The first batch to see the cancel does so for ALL the operation's queued deliveries (a
    fast walker may have handed out the whole scope: the operation then ends as soon as the
    deliveries in flight finish, not after every queued job ran); the others, for their own.
    Each delivery is cancelled once (a compare-and-set on its status, as a claim is).
    """
    key = progress_key(operation_id)
    state = await redis.hget(key, "state")  # type: ignore[misc]
    if state is None or _s(state) != S.CANCELLING.value:
        return None
    if await redis.hsetnx(key, "swept", 1):  # type: ignore[misc]
        cancelled = await _sweep_queued(redis, operation_id)
    else:
        cancelled = await _cancel_deliveries(redis, operation_id, delivery_ids, itemised=True)
    if cancelled:
        await finish_if_complete(redis, operation_id)
    return cancelled


SWEEP_CHUNK = 2000  # deliveries per statement when a cancel sweeps an operation's queue


async def _sweep_queued(redis: Redis, operation_id: int) -> int:
    """Cancel every queued delivery of the operation, a chunk at a time (in id order)."""
    cancelled, after = 0, 0
    while ids := list(await Delivery.filter(
            bulk_operation_id=operation_id, status=DeliveryStatus.QUEUED, id__gt=after
    ).order_by("id").limit(SWEEP_CHUNK).values_list("id", flat=True)):
        cancelled += await _cancel_deliveries(redis, operation_id, ids, itemised=False)
        after = ids[-1]
    return cancelled


async def _cancel_deliveries(redis: Redis, operation_id: int, delivery_ids: list[int], *,
                             itemised: bool) -> int:
    """Cancel those of `delivery_ids` still queued (their entries back to `active`), count
    them in the hash and tell the dashboard (one event per row when `itemised`)."""
    token, now = str(uuid.uuid4()), datetime.now(UTC)
    async with in_transaction():
        await Delivery.filter(id__in=delivery_ids, status=DeliveryStatus.QUEUED).update(
            status=DeliveryStatus.CANCELLED, finished_at=now, updated_at=now, claim_token=token)
        rows = await Delivery.filter(claim_token=token, bulk_operation_id=operation_id,
                                     status=DeliveryStatus.CANCELLED).values_list("id", "metadata")
        entry_ids = [i for _, m in rows  # a re-sync delivery may have no entry
                     if (i := (m.get("__retry_metadata") or {}).get("dead_letter_id"))]
        await DeadLetter.filter(id__in=entry_ids, status=DeadLetterStatus.RETRYING).update(
            status=DeadLetterStatus.ACTIVE, retry_count=F("retry_count") - 1, updated_at=now)
    if not rows:
        return 0
    live = await redis.hincrby(progress_key(operation_id), "cancelled", len(rows))
    progress = _event(operation_id, S.CANCELLING, {"cancelled": int(live)})
    if itemised:
        await publish_events(redis, [
            *({"type": "delivery.updated", "id": i, "status": "cancelled"} for i, _ in rows),
            *({"type": "dlq.changed", "id": i, "status": "active"} for i in entry_ids),
            progress])
    else:
        await publish_events(redis, [
            {"type": "delivery.updated", "operation_id": operation_id, "status": "cancelled",
             "count": len(rows)},
            {"type": "dlq.changed", "operation_id": operation_id, "status": "active",
             "count": len(entry_ids)},
            progress])
    return len(rows)


async def finish_if_complete(redis: Redis, operation_id: int) -> None:
    live = (await _live(redis, [operation_id]))[0]
    if _complete(live):
        await finish(redis, operation_id)


async def finish(redis: Redis, operation_id: int) -> bool:
    """Persist the final figures and state (once: a compare-and-set on the state), give the
    hash its TTL and tell the dashboard. Returns whether this call finished it."""
    live = (await _live(redis, [operation_id]))[0]
    f = _ints(live)
    state = S.CANCELLED if live.get("state") == S.CANCELLING.value else S.COMPLETED
    done = await BulkOperation.filter(id=operation_id, state__in=LIVE_STATES).update(
        state=state, finished_at=datetime.now(UTC), completed=f["completed"],
        succeeded=f["succeeded"], failed=f["failed"], cancelled_count=f["cancelled"],
        skipped=f["skipped"])
    if not done:
        return False
    key = progress_key(operation_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, "state", state.value)
        pipe.expire(key, HASH_TTL_S)
        await pipe.execute()
    await publish_events(redis, [_event(operation_id, state, f)])
    return True


async def end_walk(redis: Redis, operation_id: int, *, cancelled: bool) -> bool:
    """The walk is over (end of the scope, or cancelled): entries never handed out are counted
    `cancelled` or `skipped` (once: a compare-and-set on `walked_at`, which also stops any
    walker still running at its next batch). Returns whether this call ended it."""
    async with in_transaction():
        if not await BulkOperation.filter(id=operation_id, walked_at=None).update(
                walked_at=datetime.now(UTC)):
            return False
        op = await BulkOperation.get(id=operation_id)
        untouched = max(op.total - op.handed - op.skipped, 0)
        if not cancelled:
            await BulkOperation.filter(id=operation_id).update(skipped=op.skipped + untouched)
    key = progress_key(operation_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, "handed", op.handed)  # `skipped` also has the bulk lane's (late) skips
        pipe.hincrby(key, "cancelled" if cancelled else "skipped", untouched)
        await pipe.execute()
    await finish_if_complete(redis, operation_id)
    return True


def __getattr__(name: str) -> Any:
    """The walker lives in jobs.operations.bulk_walk; its names stay importable from here."""
    if name in ("walk_bulk_operation", "resume_walkers", "SEGMENT_S"):
        from jobs.operations import bulk_walk

        return getattr(bulk_walk, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
