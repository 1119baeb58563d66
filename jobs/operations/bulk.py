"""Bulk Retry All: the one place it lives (REST, CLI and dashboard call these functions).

    start_retry_all ─► BulkOperation row + Redis hash + ONE audit row + ONE walker job (bulk lane)
    walk_bulk_operation (arq job) ─► per batch: read the flags once, claim entries (CAS
        active → retrying), create their deliveries in one bulk_create, hand them to the bulk
        lane as `deliver_batch` jobs paced per endpoint
    deliver_batch (jobs.deliver) ─► cancel_queued() once per batch; record_outcomes bumps the
        hash once per batch (record_progress) and the last batch finishes the operation

Snapshot-bound: the scope is frozen by `max_id` (entries that fail later are not swept in) and
by the start time (an entry changed since — retried, archived, failed again — is left alone and
counted `skipped`). Figures: `completed = succeeded + failed`; the operation finishes when
`completed + cancelled + skipped == total`. Entries of a disabled or deleted endpoint are
`skipped` (left active and untouched: a retry cannot succeed and would only add noise to their
history). A cancel counts the entries never handed out, and the queued deliveries it stops, as
`cancelled`. Each bulk delivery gets exactly one attempt (no policy retries), so progress ends.

Live figures are the Redis hash `{namespace}:bulk:{id}` (kept one hour after the end); the row
holds the walker's cursor and figures (a restarted walker resumes from them) and the final
figures. The cursor is also the walkers' lock: each batch moves it with a compare-and-set, so a
second walker of the same operation stops at its first batch.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
from jobs.operations.reasons import check_reason
from jobs.queue import BATCH_SIZE, bulk_queue_name, enqueue_bulk_batch
from models.bulk import BulkOperation
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.dlq_filter import DlqFilter, select
from models.endpoints import Endpoint
from models.enums import BulkKind, BulkState, DeadLetterStatus, DeliveryStatus

S = BulkState
LIVE_STATES = (S.RUNNING, S.PAUSED, S.HALTED, S.CANCELLING)  # not finished yet
FIGURES = ("total", "completed", "succeeded", "failed", "cancelled", "skipped")
POLL_S = 0.5  # how often a paused walker (or one waiting for its canary) looks again
LOOKAHEAD_S = 1.0  # the walker hands out work at most this far ahead of its pacing
PACE_SLICE_S = 0.2  # one paced job carries about this much of an endpoint's rate
SEGMENT_S = 240.0  # a walker job re-enqueues itself after this long (bounded job_timeout)
HASH_TTL_S = 3600  # the live hash outlives its operation by an hour


class NothingToRetryError(ConflictError):
    code = "nothing_to_retry"


class Canary(BaseModel):
    """Retry the first `count` entries first; halt if more than `max_failure_pct` % fail."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(ge=1, le=100_000)
    max_failure_pct: float = Field(ge=0, le=100)


class Preview(TypedDict):
    total: int
    snapshot: int | None  # pass it back to start_retry_all: the count confirmed is the count acted on


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


def progress_key(operation_id: int) -> str:
    """The live hash of an operation (namespaced like every key of this instance)."""
    return f"{get_settings().namespace}:bulk:{operation_id}"


def rate_per_endpoint() -> float:
    """`OBSERVATORY_BULK_RATE_PER_ENDPOINT` (deliveries/s per endpoint; 0 = unpaced)."""
    return get_settings().bulk_rate_per_endpoint


# --- starting ---------------------------------------------------------------------------------

def _frozen(f: DlqFilter, snapshot: int | None) -> DlqFilter:
    """The scope as acted on: active entries only, bounded by the snapshot."""
    if f.status and set(f.status) != {DeadLetterStatus.ACTIVE}:
        raise ValidationError("scope.status: a bulk retry acts on active entries only", {
            "fields": [{"field": "scope.status", "rule": "active_only",
                        "message": "must be left out or be [\"active\"]"}]})
    return f.model_copy(update={"status": [DeadLetterStatus.ACTIVE],
                                "max_id": snapshot or f.max_id})


async def preview(f: DlqFilter, *, snapshot: int | None = None) -> Preview:
    """How many active entries a Retry All over `f` would act on, and the snapshot that
    freezes that selection (the highest matching id). Changes nothing."""
    frozen = await _snapshot(_frozen(f, snapshot))
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
    reason = check_reason(reason, destructive=True)
    frozen = await _snapshot(_frozen(f, snapshot))
    started_at = datetime.now(UTC)  # entries changed after this are left alone
    total = await select(frozen).count() if frozen.max_id else 0
    if not total:
        raise NothingToRetryError("nothing to retry: no active DLQ entry matches the scope",
                                  {"scope": frozen.described()})
    scope = frozen.described()
    async with in_transaction():
        op = await BulkOperation.create(
            kind=BulkKind.RETRY, scope=scope, total=total, actor=actor, reason=reason,
            canary=canary.model_dump() if canary else None, started_at=started_at)
        await audit.record(actor, "dlq.retry_all", "bulk_operation", op.id, scope=scope,
                           total=total, reason=reason, canary=op.canary)
    await redis.hset(progress_key(op.id), mapping={  # type: ignore[misc]
        "total": total, "completed": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
        "skipped": 0, "handed": 0, "state": S.RUNNING.value})
    await redis.enqueue_job("walk_bulk_operation", op.id, _queue_name=bulk_queue_name())
    await publish_events(redis, [_event(op.id, S.RUNNING, {"total": total})])
    return Started(operation_id=op.id, total=total, snapshot=int(frozen.max_id))  # type: ignore[arg-type]


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
    await _audit(op, actor, "cancel", reason, was)
    await end_walk(redis, op.id, cancelled=True)  # the walker stops at its next batch
    return await get_operation(op.id, redis=redis)


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


async def cancel_queued(redis: Redis, operation_id: int, delivery_ids: list[int]) -> int | None:
    """Before a bulk batch is claimed (one read): if its operation was cancelled, mark the
    deliveries that have not started `cancelled` and their entries `active` again, count them,
    and return how many; None when the batch may go on."""
    state = await redis.hget(progress_key(operation_id), "state")  # type: ignore[misc]
    if state is None or _s(state) != S.CANCELLING.value:
        return None
    token, now = str(uuid.uuid4()), datetime.now(UTC)
    async with in_transaction():
        await Delivery.filter(id__in=delivery_ids, status=DeliveryStatus.QUEUED).update(
            status=DeliveryStatus.CANCELLED, finished_at=now, updated_at=now, claim_token=token)
        rows = await Delivery.filter(claim_token=token, status=DeliveryStatus.CANCELLED
                                     ).values_list("id", "metadata")
        entry_ids = [m["__retry_metadata"]["dead_letter_id"] for _, m in rows]
        await DeadLetter.filter(id__in=entry_ids, status=DeadLetterStatus.RETRYING).update(
            status=DeadLetterStatus.ACTIVE, retry_count=F("retry_count") - 1, updated_at=now)
    if rows:
        live = await redis.hincrby(progress_key(operation_id), "cancelled", len(rows))
        await publish_events(redis, [
            *({"type": "delivery.updated", "id": i, "status": "cancelled"} for i, _ in rows),
            *({"type": "dlq.changed", "id": i, "status": "active"} for i in entry_ids),
            _event(operation_id, S.CANCELLING, {"cancelled": int(live)})])
        await finish_if_complete(redis, operation_id)
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
        pipe.hset(key, mapping={"handed": op.handed,
                                "skipped": op.skipped + (0 if cancelled else untouched)})
        if cancelled:
            pipe.hincrby(key, "cancelled", untouched)
        await pipe.execute()
    await finish_if_complete(redis, operation_id)
    return True


# --- the walker -------------------------------------------------------------------------------

class _Superseded(Exception):
    """Another walker moved the cursor, or the walk was ended (cancel): stop walking."""


@dataclass
class _Pacer:
    """Per-endpoint start times: an endpoint's deliveries are spread at `rate` per second,
    later still while it asked to wait (Retry-After)."""

    rate: float
    next_free: dict[int, float] = field(default_factory=dict)

    @property
    def chunk(self) -> int:
        if not self.rate:
            return BATCH_SIZE
        return max(1, min(BATCH_SIZE, math.ceil(self.rate * PACE_SLICE_S)))

    @property
    def batch(self) -> int:
        """Entries per walker batch: at most LOOKAHEAD_S of one endpoint's rate, so a pause
        or cancel holds back all but about that much."""
        if not self.rate:
            return BATCH_SIZE
        return max(self.chunk, min(BATCH_SIZE, math.ceil(self.rate * LOOKAHEAD_S)))

    def schedule(self, endpoint_id: int, n: int, now: float, hold_until: float = 0.0) -> float:
        """When (seconds from now) `n` more deliveries to the endpoint may start."""
        if not self.rate:
            return max(hold_until - now, 0.0)
        start = max(now, self.next_free.get(endpoint_id, 0.0), hold_until)
        self.next_free[endpoint_id] = start + n / self.rate
        return start - now

    def ahead(self, now: float) -> float:
        return max(self.next_free.values(), default=now) - now


@dataclass
class _Walk:
    op: BulkOperation
    scope: DlqFilter
    pacer: _Pacer
    deadline: float


async def walk_bulk_operation(ctx: dict[str, Any], operation_id: int) -> str:
    """arq job (bulk lane): walk the operation's frozen scope in id order, in batches.

    Before each batch it reads the operation's hash once: cancelled → stop; paused → wait;
    halted → stop (resume starts a new walker). Resumes from the row's cursor, so a restarted
    or re-enqueued walker picks up where the last one stopped.
    """
    redis: ArqRedis = ctx["redis"]
    op = await BulkOperation.get_or_none(id=operation_id)
    if op is None or op.state not in LIVE_STATES or op.walked_at is not None:
        return "nothing_to_do"
    await redis.hset(progress_key(op.id), mapping={  # type: ignore[misc]
        "handed": op.handed, "skipped": op.skipped})  # the row is the truth for the walk
    walk = _Walk(op, DlqFilter.model_validate(op.scope), _Pacer(rate_per_endpoint()),
                 time.monotonic() + SEGMENT_S)
    try:
        return await _walk(redis, walk)
    except _Superseded:
        return "superseded"


async def _walk(redis: ArqRedis, walk: _Walk) -> str:
    op = walk.op
    while True:
        flags = {_s(k): _s(v) for k, v in (await redis.hgetall(progress_key(op.id))).items()}
        state = flags.get("state", op.state.value)
        if state == S.CANCELLING.value:
            await end_walk(redis, op.id, cancelled=True)
            return "cancelled"
        if state in (S.HALTED.value, S.CANCELLED.value, S.COMPLETED.value):
            return state
        if time.monotonic() > walk.deadline:  # bounded job: hand over to a fresh one
            await redis.enqueue_job("walk_bulk_operation", op.id, _queue_name=bulk_queue_name())
            return "continued"
        if state == S.PAUSED.value:
            await asyncio.sleep(POLL_S)
            continue
        if (wait := walk.pacer.ahead(time.time()) - LOOKAHEAD_S) > 0:  # far enough ahead
            await asyncio.sleep(min(wait, POLL_S))
            continue
        limit = walk.pacer.batch
        if op.canary and not op.canary_passed:
            left = op.canary["count"] - op.handed
            if left <= 0:
                if await _judge_canary(redis, op):
                    continue
                return "halted"
            limit = min(limit, left)
        rows = await select(walk.scope).filter(
            id__gt=op.cursor, updated_at__lte=op.started_at).order_by("id").limit(limit
            ).values_list("id", "delivery_id", "message_id", "endpoint_id", "retry_count")
        if not rows:
            await end_walk(redis, op.id, cancelled=False)
            return "walked"
        await _hand_out(redis, walk, rows, flags)


async def _hand_out(redis: ArqRedis, walk: _Walk, rows: list[tuple[Any, ...]],
                    flags: dict[str, str]) -> None:
    """One batch: claim the entries (CAS), create their deliveries, move the cursor — in one
    transaction — then enqueue them paced per endpoint."""
    op = walk.op
    enabled = dict(await Endpoint.filter(id__in={r[3] for r in rows if r[3]}
                                         ).values_list("id", "enabled"))
    wanted = [r for r in rows if r[3] and enabled.get(r[3])]
    now, token = datetime.now(UTC), str(uuid.uuid4())
    async with in_transaction() as conn:
        # the cursor is the walkers' lock: a second walker (or a cancel) makes this 0
        if not await BulkOperation.filter(id=op.id, cursor=op.cursor, walked_at=None).update(
                cursor=rows[-1][0]):
            raise _Superseded
        claimed = await _claim(wanted, op, now)
        await Delivery.bulk_create([Delivery(
            message_id=r[2], endpoint_id=r[3], status=DeliveryStatus.QUEUED, retry_of_id=r[1],
            bulk_operation_id=op.id, claim_token=token,
            metadata={"__retry_metadata": {
                "original_delivery_id": r[1], "dead_letter_id": r[0], "retry_count": r[4] + 1,
                "sandbox": False, "bulk_operation_id": op.id}}) for r in claimed])
        created = await Delivery.filter(claim_token=token).values_list(
            "id", "endpoint_id", "retry_of_id")
        by_original = {original: d for d, _, original in created}
        if claimed:
            # one statement for the batch; ids are integers read from the database
            whens = " ".join(f"WHEN {int(r[0])} THEN {int(by_original[r[1]])}" for r in claimed)
            await conn.execute_query(
                f"UPDATE dead_letter SET last_retry_delivery_id = CASE id {whens} END "
                f"WHERE id IN ({', '.join(str(int(r[0])) for r in claimed)})")
        skipped = len(rows) - len(claimed)
        await BulkOperation.filter(id=op.id).update(handed=op.handed + len(claimed),
                                                    skipped=op.skipped + skipped)
    op.cursor, op.handed, op.skipped = rows[-1][0], op.handed + len(claimed), op.skipped + skipped
    await redis.hset(progress_key(op.id), mapping={  # type: ignore[misc]
        "handed": op.handed, "skipped": op.skipped})
    await _enqueue_paced(redis, walk, [(d, e) for d, e, _ in created], flags)
    await publish_events(redis, [_event(op.id, S.RUNNING, {"handed": op.handed,
                                                          "skipped": op.skipped})])
    if skipped:
        await finish_if_complete(redis, op.id)


async def _claim(wanted: list[tuple[Any, ...]], op: BulkOperation,
                 now: datetime) -> list[tuple[Any, ...]]:
    """Compare-and-set active → retrying; entries changed since the start are left alone."""
    if not wanted:
        return []
    ids = [r[0] for r in wanted]
    n = await DeadLetter.filter(id__in=ids, status=DeadLetterStatus.ACTIVE,
                                updated_at__lte=op.started_at).update(
        status=DeadLetterStatus.RETRYING, retry_count=F("retry_count") + 1, updated_at=now)
    if n == len(ids):
        return wanted
    # a concurrent change took some: ours are those carrying this very update
    mine = set(await DeadLetter.filter(id__in=ids, status=DeadLetterStatus.RETRYING,
                                       updated_at=now).values_list("id", flat=True))
    return [r for r in wanted if r[0] in mine]


async def _enqueue_paced(redis: ArqRedis, walk: _Walk, created: list[tuple[int, int]],
                         flags: dict[str, str]) -> None:
    by_endpoint: dict[int, list[int]] = {}
    for delivery_id, endpoint_id in sorted(created):
        by_endpoint.setdefault(endpoint_id, []).append(delivery_id)
    now, chunk = time.time(), walk.pacer.chunk
    for endpoint_id, ids in by_endpoint.items():
        hold = float(flags.get(f"hold:{endpoint_id}", 0.0))
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            delay = walk.pacer.schedule(endpoint_id, len(part), now, hold)
            await enqueue_bulk_batch(redis, part, walk.op.id, defer_s=delay)


async def _judge_canary(redis: ArqRedis, op: BulkOperation) -> bool:
    """Wait until the canary's deliveries finished; True to go on, False when halted (or the
    operation stopped meanwhile)."""
    while True:
        live = {_s(k): _s(v) for k, v in (await redis.hgetall(progress_key(op.id))).items()}
        f = _ints(live)
        if live.get("state") not in (S.RUNNING.value, S.PAUSED.value):
            return True  # cancelled or finished meanwhile: the walk loop sees to it
        if f["completed"] + f["cancelled"] >= op.handed:
            break
        await asyncio.sleep(POLL_S)
    assert op.canary is not None
    pct = 100.0 * f["failed"] / f["completed"] if f["completed"] else 0.0
    if pct <= op.canary["max_failure_pct"] or _complete(live):
        await BulkOperation.filter(id=op.id).update(canary_passed=True)
        op.canary_passed = True
        return True
    reason = (f"canary: {f['failed']} of the first {f['completed']} retries failed "
              f"({pct:.0f}% > {op.canary['max_failure_pct']:g}%)")
    if await BulkOperation.filter(id=op.id, state=S.RUNNING).update(state=S.HALTED,
                                                                   halted_reason=reason):
        await _set_state(redis, op.id, S.HALTED)
        await audit.record("system", "bulk.halt", "bulk_operation", op.id, reason=reason)
    return False


async def resume_walkers(redis: ArqRedis) -> int:
    """On bulk worker start-up: a walker for every operation whose walk was interrupted
    (worker killed or restarted); the cursor's compare-and-set makes extra walkers harmless."""
    ids = await BulkOperation.filter(state__in=[S.RUNNING, S.PAUSED, S.CANCELLING],
                                     walked_at=None).values_list("id", flat=True)
    for op_id in ids:
        await redis.enqueue_job("walk_bulk_operation", op_id, _queue_name=bulk_queue_name())
    return len(ids)
