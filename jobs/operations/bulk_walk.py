"""The bulk walker: one arq job (bulk lane) per operation walks its frozen scope in id order,
one batch (step) at a time, reading the operation's flags (cancel, pause) once before each.

What a batch does depends on the operation's kind:

    retry    read the next entries (still active, unchanged, of an enabled endpoint) and hand
             their ids to the bulk lane as `deliver_entries` jobs, paced per endpoint (canary
             first, when asked): each job claims its entries and creates their deliveries
             (jobs.operations.bulk_claim); unpaced, a step takes WALK_BATCH entries
    resync   create one new delivery per message (linked to the message's active DLQ entry of
             that endpoint, if any) and hand them out paced, like a retry
    archive  one compare-and-set UPDATE of the batch's entries (active/resolved → archived)
    delete   one DELETE of the batch's entries that are not retrying

Each batch moves the cursor with a compare-and-set in the same transaction as its work, so a
second walker, or a cancel, stops the walk at a batch boundary and no batch is done twice. A
delivering batch then writes the figures to the hash, enqueues its jobs (up to
OBSERVATORY_BULK_BATCH_SIZE deliveries each) and publishes its progress event in ONE Redis
round trip.
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
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from jobs import audit
from jobs.events import publish_commands, publish_events
from jobs.operations.bulk import (LIVE_STATES, S, _complete, _event, _ints, _s, _set_state,
                                  end_walk, finish_if_complete, progress_key, rate_per_endpoint)
from jobs.operations.bulk_claim import Superseded, retry_step
from jobs.operations.resync import scope_messages
from jobs.queue import bulk_batch_commands, bulk_queue_name
from models.bulk import BulkOperation
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.dlq_filter import DlqFilter, select
from models.endpoints import Endpoint
from models.enums import BulkKind, DeadLetterStatus, DeliveryStatus

POLL_S = 0.5  # how often a paused walker (or one waiting for its canary) looks again
#: how often a paced walker that is far enough ahead reads its flags again: the walker job
#: ends this soon after a cancel (bench.bulk_retry's paced cancel: ~0.5 s with POLL_S)
PACED_POLL_S = 0.05
#: entries per walker step at most (unpaced). A step's cost is mostly its wait for the database
#: (on SQLite, the one connection the bulk jobs' claims and records share), not its rows:
#: bench.bulk_retry, SQLite, 100,000 entries under load handed out 15,000 entries/s with
#: steps of 2,000 and 32,000/s with 5,000 (a step then took ~0.15 s; a cancel or pause is
#: read before each step)
WALK_BATCH = 5000
#: a re-sync step writes a delivery per message in one transaction: at most this many
RESYNC_STEP = 2000
LOOKAHEAD_S = 1.0  # the walker hands out work at most this far ahead of its pacing
PACE_SLICE_S = 0.2  # one paced job carries about this much of an endpoint's rate
SEGMENT_S = 240.0  # a walker job re-enqueues itself after this long (bounded job_timeout)
DB_BATCH = 500  # entries per archive/delete batch (no HTTP: one statement each)


@dataclass
class _Pacer:
    """Per-endpoint start times: an endpoint's deliveries are spread at `rate` per second,
    later still while it asked to wait (Retry-After)."""

    rate: float
    size: int  # entries per bulk-lane job at most (OBSERVATORY_BULK_BATCH_SIZE)
    next_free: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls) -> _Pacer:
        return cls(rate_per_endpoint(), get_settings().bulk_batch_size)

    @property
    def chunk(self) -> int:
        """Entries per bulk-lane job: unpaced, `size` (each job costs the bulk worker a claim
        and a record on the database whatever its size: bench.bulk_retry, 100,000 entries,
        delivered 2,550/s in jobs of 50 and 3,500–4,400/s in jobs of 200 on SQLite, 3,200/s
        and 4,000/s on PostgreSQL); paced, about PACE_SLICE_S of the endpoint's rate."""
        if not self.rate:
            return self.size
        return max(1, min(self.size, math.ceil(self.rate * PACE_SLICE_S)))

    @property
    def batch(self) -> int:
        """Entries per walker step: unpaced, WALK_BATCH (the flags are read before each step,
        so a cancel or pause stops the walk within one step, well under a second); paced, at
        most LOOKAHEAD_S of one endpoint's rate, so a pause or cancel holds back all but about
        that much."""
        if not self.rate:
            return WALK_BATCH
        return max(self.chunk, min(WALK_BATCH, math.ceil(self.rate * LOOKAHEAD_S)))

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
    truth: dict[str, int] = {"handed": op.handed, "skipped": op.skipped + op.late_skipped}
    if op.kind in (BulkKind.ARCHIVE, BulkKind.DELETE):  # acted on = completed, no deliveries
        truth |= {"completed": op.handed, "succeeded": op.handed}
    await redis.hset(progress_key(op.id), mapping=truth)  # type: ignore[misc]
    walk = _Walk(op, _Pacer.from_settings(), time.monotonic() + SEGMENT_S)
    try:
        return await _walk(redis, walk)
    except Superseded:  # another walker goes on, or a cancel came: the cancel ends the walk
        # itself, and should it have stopped before doing so, this does
        cancelled = await BulkOperation.exists(id=op.id, cancelled=True, walked_at=None)
        if cancelled and await end_walk(redis, op.id, cancelled=True):
            return "cancelled"
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
            await asyncio.sleep(min(wait, PACED_POLL_S))
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


async def _move_cursor(op: BulkOperation, to: int, handed: int, skipped: int) -> None:
    """Last in the batch's transaction: move the cursor and add to the figures with one
    compare-and-set (and then in `op`). The cursor is the walkers' lock — a second walker (or
    a cancel: its first write sets `cancelled`, then `walked_at`) makes it miss, and the
    whole batch rolls back."""
    if not await BulkOperation.filter(id=op.id, cursor=op.cursor, walked_at=None,
                                      cancelled=False).update(
            cursor=to, handed=op.handed + handed, skipped=op.skipped + skipped):
        raise Superseded
    op.cursor, op.handed, op.skipped = to, op.handed + handed, op.skipped + skipped


async def _handed_out(redis: ArqRedis, walk: _Walk, handed: list[tuple[int, int]],
                      flags: dict[str, str], skipped: int, function: str) -> None:
    """After a delivering batch committed (and `walk.op` holds its figures), in ONE Redis
    round trip: the figures to the hash (`skipped` is the batch's: the bulk lane's jobs add
    theirs), the batch to the bulk lane as `function` jobs (paced per endpoint,
    `walk.pacer.chunk` per job) and the progress event."""
    op, key = walk.op, progress_key(walk.op.id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, "handed", op.handed)
        pipe.hincrby(key, "skipped", skipped)
        for command in bulk_batch_commands(redis, _paced(walk, handed, flags), op.id, function):
            pipe.execute_command(*command)
        pipe.hget(key, "skipped")
        figures = {"handed": op.handed, "skipped": int((await pipe.execute())[-1] or 0)}
    await publish_events(redis, [_event(op.id, S.RUNNING, figures)])
    if skipped:
        await finish_if_complete(redis, op.id)


# --- retry ------------------------------------------------------------------------------------

async def _retry_batch(redis: ArqRedis, walk: _Walk, flags: dict[str, str], limit: int) -> bool:
    """Up to `limit` entries of the scope in set-based SQL (jobs.operations.bulk_claim)."""
    op = walk.op
    step = await retry_step(op, select(walk.scope).filter(
        id__gt=op.cursor, updated_at__lte=op.started_at).order_by("id").limit(limit
        ).values_list("id", "endpoint_id"))
    if step is None:
        return False
    await _handed_out(redis, walk, step.handed, flags, step.taken - len(step.handed),
                      "deliver_entries")
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
    values = ", ".join(f"({int(e)}, {int(d)})" for e, d in pairs)
    await conn.execute_query(
        "UPDATE dead_letter SET last_retry_delivery_id = v.column2 "
        f"FROM (VALUES {values}) AS v WHERE dead_letter.id = v.column1")


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


def _paced(walk: _Walk, handed: list[tuple[int, int]],
           flags: dict[str, str]) -> list[tuple[list[int], float, int]]:
    """The (entry or delivery id, endpoint id) pairs as bulk-lane jobs of up to `chunk` each,
    per endpoint: (ids, defer s, endpoint id), each endpoint's spread at the rate (and held
    while it asked to wait)."""
    by_endpoint: dict[int, list[int]] = {}
    for item_id, endpoint_id in sorted(handed):
        by_endpoint.setdefault(endpoint_id, []).append(item_id)
    now, chunk = time.time(), walk.pacer.chunk
    batches = []
    for endpoint_id, ids in by_endpoint.items():
        hold = float(flags.get(f"hold:{endpoint_id}", 0.0))
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            batches.append((part, walk.pacer.schedule(endpoint_id, len(part), now, hold),
                            endpoint_id))
    return batches


async def _judge_canary(redis: ArqRedis, op: BulkOperation) -> bool:
    """Wait until the canary's deliveries finished; True to go on, False when halted (or the
    operation stopped meanwhile)."""
    while True:
        live = {_s(k): _s(v) for k, v in (await redis.hgetall(progress_key(op.id))).items()}
        f = _ints(live)
        if live.get("state") not in (S.RUNNING.value, S.PAUSED.value):
            return True  # cancelled or finished meanwhile: the walk loop sees to it
        late = await BulkOperation.filter(id=op.id).values_list("late_skipped", flat=True)
        if f["completed"] + f["cancelled"] + late[0] >= op.handed:  # every one handed out ended
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
        min(limit, RESYNC_STEP)).values_list("id", flat=True))
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
        handed: list[int] = ids if enabled else []
        linked = {r[2]: r for r in await _claim(list(entries.values()), op, now)} if enabled else {}
        await Delivery.bulk_create([Delivery(
            message_id=m, endpoint_id=endpoint_id, status=DeliveryStatus.QUEUED,
            retry_of_id=originals.get(m), bulk_operation_id=op.id, claim_token=token,
            metadata=_resync_meta(op.id, originals.get(m), linked.get(m))) for m in handed])
        created = await Delivery.filter(claim_token=token, bulk_operation_id=op.id
                                        ).values_list("id", "message_id")
        by_message = {m: d for d, m in created}
        await _link(conn, [(r[0], by_message[m]) for m, r in linked.items()])
        await _move_cursor(op, ids[-1], len(handed), len(ids) - len(handed))
    await _handed_out(redis, walk, [(d, endpoint_id) for d, _ in created], flags,
                      len(ids) - len(handed), "deliver_batch")
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
        acting = DeadLetter.filter(id__in=ids, status__in=scope.status or [],
                                   updated_at__lte=op.started_at)
        if op.kind == BulkKind.ARCHIVE:
            done = await acting.update(status=DeadLetterStatus.ARCHIVED, updated_at=now)
        else:
            done = await acting.delete()
        await _move_cursor(op, ids[-1], done, len(ids) - done)
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
    (worker killed or restarted); the cursor's compare-and-set makes extra walkers harmless.
    Retry Alls that Redis forgot are recovered first (`recover_lost`)."""
    await recover_lost(redis)
    ids = await BulkOperation.filter(state__in=[S.RUNNING, S.PAUSED, S.CANCELLING],
                                     walked_at=None).values_list("id", flat=True)
    for op_id in ids:
        await redis.enqueue_job("walk_bulk_operation", op_id, _queue_name=bulk_queue_name())
    return len(ids)


async def recover_lost(redis: ArqRedis) -> int:
    """Running (or paused) Retry Alls whose live hash is gone — Redis lost its data, and with
    it their jobs: rebuild the hash from the database (succeeded, failed and cancelled counted
    from the operation's deliveries), hand out again the entries handed out but never claimed
    (`rehand`) and restart the walker if its walk was not over. Run by the reconciler (cron)
    and on bulk worker start-up; returns how many operations it recovered."""
    recovered = 0
    for op in await BulkOperation.filter(kind=BulkKind.RETRY, state__in=[S.RUNNING, S.PAUSED]):
        key = progress_key(op.id)
        if await redis.hexists(key, "total"):  # type: ignore[misc]
            continue
        rows = await Delivery.filter(bulk_operation_id=op.id).annotate(n=Count("id")).group_by(
            "status").values_list("status", "n")
        by_status = {DeliveryStatus(status): n for status, n in rows}
        ok, bad = by_status.get(DeliveryStatus.SUCCEEDED, 0), by_status.get(DeliveryStatus.FAILED, 0)
        await redis.hset(key, mapping={  # type: ignore[misc]
            "total": op.total, "handed": op.handed, "skipped": op.skipped + op.late_skipped,
            "completed": ok + bad, "succeeded": ok, "failed": bad,
            "cancelled": by_status.get(DeliveryStatus.CANCELLED, 0), "state": op.state.value})
        if op.handed > op.claimed + op.late_skipped:
            await rehand(redis, op)
        if op.walked_at is None:
            await redis.enqueue_job("walk_bulk_operation", op.id, _queue_name=bulk_queue_name())
        recovered += 1
    return recovered


async def rehand(redis: ArqRedis, op: BulkOperation) -> int:
    """Hand out again the entries of a Retry All that were handed out but never claimed (their
    jobs were lost): still active, unchanged since the start, up to the cursor. A job that
    still exists and one enqueued here claim each entry once (a compare-and-set). Returns how
    many entries were handed out again."""
    walk = _Walk(op, _Pacer.from_settings(), time.monotonic())
    rows = await select(walk.scope).filter(id__lte=op.cursor, updated_at__lte=op.started_at
                                           ).order_by("id").values_list("id", "endpoint_id")
    async with redis.pipeline(transaction=False) as pipe:
        for command in bulk_batch_commands(redis, _paced(walk, list(rows), {}), op.id,
                                           "deliver_entries"):
            pipe.execute_command(*command)
        await pipe.execute()
    return len(rows)
