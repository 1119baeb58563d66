"""The bulk walker: one arq job (bulk lane) per operation walks its frozen scope in id order,
one batch at a time, reading the operation's flags (cancel, pause) once before each batch.

What a batch does depends on the operation's kind:

    retry    claim the entries (CAS active → retrying), create their deliveries, hand them to
             the bulk lane paced per endpoint (canary first, when asked)
    resync   create one new delivery per message (linked to the message's active DLQ entry of
             that endpoint, if any) and hand them out paced, like a retry
    archive  one compare-and-set UPDATE of the batch's entries (active/resolved → archived)
    delete   one DELETE of the batch's entries that are not retrying

Each batch moves the cursor with a compare-and-set in the same transaction as its work, so a
second walker, or a cancel, stops the walk at a batch boundary and no batch is done twice.
Progress rules, figures and the live hash are jobs.operations.bulk's.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from jobs import audit
from jobs.events import publish_events
from jobs.operations.bulk import (LIVE_STATES, S, _complete, _event, _ints, _s, _set_state,
                                  end_walk, finish_if_complete, progress_key, rate_per_endpoint)
from jobs.operations.resync import scope_messages
from jobs.queue import BATCH_SIZE, bulk_queue_name, enqueue_bulk_batch
from models.bulk import BulkOperation
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.dlq_filter import DlqFilter, select
from models.endpoints import Endpoint
from models.enums import BulkKind, DeadLetterStatus, DeliveryStatus

POLL_S = 0.5  # how often a paused walker (or one waiting for its canary) looks again
LOOKAHEAD_S = 1.0  # the walker hands out work at most this far ahead of its pacing
PACE_SLICE_S = 0.2  # one paced job carries about this much of an endpoint's rate
SEGMENT_S = 240.0  # a walker job re-enqueues itself after this long (bounded job_timeout)
DB_BATCH = 500  # entries per archive/delete batch (no HTTP: one statement each)


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
    pacer: _Pacer
    deadline: float

    @property
    def scope(self) -> DlqFilter:
        """The frozen DLQ selection (retry, archive, delete)."""
        return DlqFilter.model_validate(self.op.scope)


#: one batch of a kind: (redis, walk, flags, limit) → False once the scope is exhausted
Batch = Callable[[ArqRedis, _Walk, dict[str, str], int], Awaitable[bool]]


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
    truth: dict[str, int] = {"handed": op.handed, "skipped": op.skipped}
    if op.kind in (BulkKind.ARCHIVE, BulkKind.DELETE):  # acted on = completed, no deliveries
        truth |= {"completed": op.handed, "succeeded": op.handed}
    await redis.hset(progress_key(op.id), mapping=truth)  # type: ignore[misc]
    walk = _Walk(op, _Pacer(rate_per_endpoint()), time.monotonic() + SEGMENT_S)
    try:
        return await _walk(redis, walk)
    except _Superseded:
        return "superseded"


async def _walk(redis: ArqRedis, walk: _Walk) -> str:
    op = walk.op
    batch = _BATCHES[op.kind]
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
        if not await batch(redis, walk, flags, limit):
            await end_walk(redis, op.id, cancelled=False)
            return "walked"


async def _move_cursor(op: BulkOperation, to: int) -> None:
    """Inside the batch's transaction: the cursor is the walkers' lock — a second walker (or
    a cancel, which sets `walked_at`) makes this compare-and-set miss."""
    if not await BulkOperation.filter(id=op.id, cursor=op.cursor, walked_at=None).update(
            cursor=to):
        raise _Superseded


async def _handed_out(redis: ArqRedis, walk: _Walk, cursor: int, handed: int, skipped: int,
                      created: list[tuple[int, int]], flags: dict[str, str]) -> None:
    """After a delivering batch committed: figures to the row's truth and the hash, then the
    deliveries to the bulk lane, paced per endpoint."""
    op = walk.op
    op.cursor, op.handed, op.skipped = cursor, op.handed + handed, op.skipped + skipped
    await redis.hset(progress_key(op.id), mapping={  # type: ignore[misc]
        "handed": op.handed, "skipped": op.skipped})
    await _enqueue_paced(redis, walk, created, flags)
    await publish_events(redis, [_event(op.id, S.RUNNING, {"handed": op.handed,
                                                          "skipped": op.skipped})])
    if skipped:
        await finish_if_complete(redis, op.id)


async def _figures_update(op: BulkOperation, handed: int, skipped: int) -> None:
    await BulkOperation.filter(id=op.id).update(handed=op.handed + handed,
                                                skipped=op.skipped + skipped)


# --- retry ------------------------------------------------------------------------------------

async def _retry_batch(redis: ArqRedis, walk: _Walk, flags: dict[str, str], limit: int) -> bool:
    op = walk.op
    rows = await select(walk.scope).filter(
        id__gt=op.cursor, updated_at__lte=op.started_at).order_by("id").limit(limit
        ).values_list("id", "delivery_id", "message_id", "endpoint_id", "retry_count")
    if not rows:
        return False
    enabled = dict(await Endpoint.filter(id__in={r[3] for r in rows if r[3]}
                                         ).values_list("id", "enabled"))
    wanted = [r for r in rows if r[3] and enabled.get(r[3])]
    now, token = datetime.now(UTC), str(uuid.uuid4())
    async with in_transaction() as conn:
        await _move_cursor(op, rows[-1][0])
        claimed = await _claim(wanted, op, now)
        await Delivery.bulk_create([Delivery(
            message_id=r[2], endpoint_id=r[3], status=DeliveryStatus.QUEUED, retry_of_id=r[1],
            bulk_operation_id=op.id, claim_token=token,
            metadata={"__retry_metadata": _retry_meta(r, op.id)}) for r in claimed])
        created = await Delivery.filter(claim_token=token).values_list(
            "id", "endpoint_id", "retry_of_id")
        by_original = {original: d for d, _, original in created}
        await _link(conn, [(r[0], by_original[r[1]]) for r in claimed])
        await _figures_update(op, len(claimed), len(rows) - len(claimed))
    await _handed_out(redis, walk, rows[-1][0], len(claimed), len(rows) - len(claimed),
                      [(d, e) for d, e, _ in created], flags)
    return True


def _retry_meta(entry: tuple[Any, ...], op_id: int) -> dict[str, Any]:
    """`__retry_metadata` of a bulk delivery re-running the entry (id, delivery_id, …,
    retry_count): jobs.outcomes resolves or re-activates the entry from it."""
    return {"original_delivery_id": entry[1], "dead_letter_id": entry[0],
            "retry_count": entry[-1] + 1, "sandbox": False, "bulk_operation_id": op_id}


async def _link(conn: BaseDBAsyncClient, pairs: list[tuple[int, int]]) -> None:
    """Point each (entry, delivery) entry's `last_retry_delivery` at its new delivery, in one
    statement for the batch (ids are integers read from the database)."""
    if not pairs:
        return
    whens = " ".join(f"WHEN {int(e)} THEN {int(d)}" for e, d in pairs)
    await conn.execute_query(
        f"UPDATE dead_letter SET last_retry_delivery_id = CASE id {whens} END "
        f"WHERE id IN ({', '.join(str(int(e)) for e, _ in pairs)})")


async def _claim(wanted: list[tuple[Any, ...]], op: BulkOperation,
                 now: datetime) -> list[tuple[Any, ...]]:
    """Compare-and-set active → retrying of the entries (rows whose first item is the entry
    id); entries changed since the start are left alone."""
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


# --- re-sync ----------------------------------------------------------------------------------

async def _resync_batch(redis: ArqRedis, walk: _Walk, flags: dict[str, str], limit: int) -> bool:
    """Up to `limit` messages: one new delivery each to the endpoint (none at all when the
    endpoint was disabled or deleted meanwhile: the batch is `skipped`)."""
    op = walk.op
    endpoint_id = int(op.scope["endpoint_id"])
    ids = list(await scope_messages(op.scope).filter(id__gt=op.cursor).order_by("id").limit(
        limit).values_list("id", flat=True))
    if not ids:
        return False
    enabled = bool(await Endpoint.filter(id=endpoint_id, enabled=True).exists())
    originals = dict(sorted(await Delivery.filter(  # the latest earlier delivery of each
        endpoint_id=endpoint_id, message_id__in=ids).values_list("message_id", "id"),
        key=lambda row: row[1]))
    entries = {row[2]: row for row in sorted(await DeadLetter.filter(  # newest per message
        endpoint_id=endpoint_id, message_id__in=ids, status=DeadLetterStatus.ACTIVE,
        updated_at__lte=op.started_at).values_list("id", "delivery_id", "message_id",
                                                   "retry_count"))}
    now, token = datetime.now(UTC), str(uuid.uuid4())
    async with in_transaction() as conn:
        await _move_cursor(op, ids[-1])
        handed: list[int] = ids if enabled else []
        linked = {r[2]: r for r in await _claim(list(entries.values()), op, now)} if enabled else {}
        await Delivery.bulk_create([Delivery(
            message_id=m, endpoint_id=endpoint_id, status=DeliveryStatus.QUEUED,
            retry_of_id=originals.get(m), bulk_operation_id=op.id, claim_token=token,
            metadata=_resync_meta(op.id, originals.get(m), linked.get(m))) for m in handed])
        created = await Delivery.filter(claim_token=token).values_list("id", "message_id")
        by_message = {m: d for d, m in created}
        await _link(conn, [(r[0], by_message[m]) for m, r in linked.items()])
        await _figures_update(op, len(handed), len(ids) - len(handed))
    await _handed_out(redis, walk, ids[-1], len(handed), len(ids) - len(handed),
                      [(d, endpoint_id) for d, _ in created], flags)
    return True


def _resync_meta(op_id: int, original: int | None,
                 entry: tuple[Any, ...] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"__resync": {"bulk_operation_id": op_id,
                                         "original_delivery_id": original}}
    if entry is not None:  # it re-runs this active DLQ entry (see jobs.operations.resync)
        meta["__retry_metadata"] = _retry_meta(entry, op_id)
    return meta


# --- archive and delete -----------------------------------------------------------------------

async def _dlq_batch(redis: ArqRedis, walk: _Walk, flags: dict[str, str], limit: int) -> bool:
    """Archive or delete a batch of entries with one compare-and-set statement: only those
    still in a status the kind acts on and unchanged since the start (the rest: `skipped`)."""
    op, scope = walk.op, walk.scope
    ids = list(await select(scope).filter(id__gt=op.cursor, updated_at__lte=op.started_at
                                          ).order_by("id").limit(DB_BATCH).values_list(
        "id", flat=True))
    if not ids:
        return False
    now = datetime.now(UTC)
    async with in_transaction():
        await _move_cursor(op, ids[-1])
        acting = DeadLetter.filter(id__in=ids, status__in=scope.status or [],
                                   updated_at__lte=op.started_at)
        if op.kind == BulkKind.ARCHIVE:
            done = await acting.update(status=DeadLetterStatus.ARCHIVED, updated_at=now)
        else:
            done = await acting.delete()
        await _figures_update(op, done, len(ids) - done)
    op.cursor, op.handed, op.skipped = ids[-1], op.handed + done, op.skipped + len(ids) - done
    key = progress_key(op.id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping={"handed": op.handed, "skipped": op.skipped})
        pipe.hincrby(key, "completed", done)
        pipe.hincrby(key, "succeeded", done)
        pipe.hgetall(key)
        live = (await pipe.execute())[-1]
    status = "archived" if op.kind == BulkKind.ARCHIVE else "deleted"
    figures = _ints({_s(k): _s(v) for k, v in live.items()})
    await publish_events(redis, [
        {"type": "dlq.changed", "operation_id": op.id, "status": status, "count": done},
        _event(op.id, S.RUNNING, figures)])
    return True  # the walk's end (end_walk) finishes the operation


_BATCHES: dict[BulkKind, Batch] = {
    BulkKind.RETRY: _retry_batch,
    BulkKind.RESYNC: _resync_batch,
    BulkKind.ARCHIVE: _dlq_batch,
    BulkKind.DELETE: _dlq_batch,
}


async def resume_walkers(redis: ArqRedis) -> int:
    """On bulk worker start-up: a walker for every operation whose walk was interrupted
    (worker killed or restarted); the cursor's compare-and-set makes extra walkers harmless."""
    ids = await BulkOperation.filter(state__in=[S.RUNNING, S.PAUSED, S.CANCELLING],
                                     walked_at=None).values_list("id", flat=True)
    for op_id in ids:
        await redis.enqueue_job("walk_bulk_operation", op_id, _queue_name=bulk_queue_name())
    return len(ids)
