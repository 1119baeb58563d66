"""Queue names and the one place deliveries are handed to arq."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from jobs.events import encode_event
from models.config import Settings, get_settings


BATCH_SIZE = 50  # deliveries per fast-lane job by default (OBSERVATORY_BATCH_SIZE)


def queue_name(settings: Settings | None = None) -> str:
    """The arq queue for deliveries, namespaced so test runs and instances never mix."""
    return f"{(settings or get_settings()).namespace}:queue"


def bulk_queue_name() -> str:
    """The arq queue of bulk operations (walkers and their deliveries): its own lane, so a
    large replay never delays live traffic on `queue_name()`."""
    return f"{get_settings().namespace}:bulk"


def redis_settings(url: str | None = None) -> RedisSettings:
    url = url or get_settings().redis_url
    if not url:
        raise RuntimeError("REDIS_URL is not set: start Observatory with `observatory up`, "
                           "or export REDIS_URL=redis://host:port/db")
    return RedisSettings.from_dsn(url)


async def connect(url: str | None = None) -> ArqRedis:
    """An arq Redis pool on REDIS_URL."""
    return await create_pool(redis_settings(url), default_queue_name=queue_name())


async def enqueue_delivery(redis: ArqRedis, delivery_id: int, attempt: int = 1,
                           defer_s: float | None = None) -> None:
    """Enqueue try `attempt` of a delivery as its own job, id `{delivery_id}:{attempt}`.

    A duplicate enqueue of the same try is a no-op in arq (same job id).
    """
    await redis.enqueue_job(
        "deliver", delivery_id, _job_id=f"{delivery_id}:{attempt}", _queue_name=queue_name(),
        _defer_by=defer_s if defer_s else None,
    )


async def enqueue_batch(redis: ArqRedis, delivery_ids: Iterable[int],
                        batch_size: int | None = None) -> int:
    """Hand first attempts to the fast lane: one `deliver_batch` job per `batch_size` ids
    (default: the `OBSERVATORY_BATCH_SIZE` setting).

    A delivery handed out twice is still delivered once (the batch claims it with a CAS).
    Returns the number of jobs enqueued.
    """
    ids = list(delivery_ids)
    size = batch_size or get_settings().batch_size
    chunks = [ids[i:i + size] for i in range(0, len(ids), size)]
    for chunk in chunks:
        await redis.enqueue_job("deliver_batch", chunk, _queue_name=queue_name())
    return len(chunks)


async def enqueue_bulk_batch(redis: ArqRedis, delivery_ids: list[int], operation_id: int | None,
                             defer_s: float | None = None, *, endpoint_id: int | None = None,
                             function: str = "deliver_batch") -> None:
    """Hand deliveries of a bulk operation (or, `function="deliver_entries"`, a Retry All's
    DLQ entries) to the bulk lane as one job; the job reads the operation's cancel flag before
    claiming them. With `endpoint_id` (all of them are that endpoint's), the job waits for the
    endpoint's claim gate (jobs.claim_gate)."""
    args = (delivery_ids, operation_id) if endpoint_id is None else (
        delivery_ids, operation_id, endpoint_id)
    await redis.enqueue_job(function, *args,
                            _queue_name=bulk_queue_name(), _defer_by=defer_s or None)


#: a Redis command as `pipe.execute_command(*command)` takes it
Command = tuple[str | bytes | int, ...]


def bulk_batch_commands(redis: ArqRedis, batches: list[tuple[list[int], float, int]],
                        operation_id: int, function: str = "deliver_batch") -> list[Command]:
    """The Redis commands enqueueing one `function` job (`deliver_batch`: delivery ids;
    `deliver_entries`: a Retry All's DLQ entry ids) per (ids, defer seconds, their endpoint's
    id) of a bulk operation, for the caller to send in ONE pipeline with whatever else it
    writes.

    They are those of arq's `enqueue_job` (the job key with its expiry, then its place in the
    queue's sorted set) without its existence check, which only matters for chosen job ids:
    these get fresh random ids, as `enqueue_bulk_batch`'s do.
    """
    import uuid

    from arq.constants import job_key_prefix
    from arq.jobs import serialize_job
    from arq.utils import timestamp_ms

    queue, now = bulk_queue_name(), timestamp_ms()
    commands: list[Command] = []
    for delivery_ids, defer_s, endpoint_id in batches:
        job_id = uuid.uuid4().hex
        score = now + (round(defer_s * 1000) if defer_s and defer_s > 0 else 0)
        job = serialize_job(function, (delivery_ids, operation_id, endpoint_id), {},
                            None, now, serializer=redis.job_serializer)
        commands.append(("PSETEX", job_key_prefix + job_id,
                         score - now + redis.expires_extra_ms, job))
        commands.append(("ZADD", queue, score, job_id))
    return commands


#: arq's enqueue_job as one script: nothing when the job or its result exists (a duplicate
#: enqueue of the same job id is a no-op), else the job key and its place in the queue; then
#: every ARGV after the fifth is published on the channel ARGV[5] (whether or not the job was
#: new). Returns 1 when the job was enqueued, 0 otherwise.
_ENQUEUE_ONCE = """
local added = 0
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then
    redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
    added = 1
end
for i = 6, #ARGV do redis.call('PUBLISH', ARGV[5], ARGV[i]) end
return added
"""


def delivery_command(redis: ArqRedis, delivery_id: int, attempt: int = 1, *,
                     events: Sequence[dict[str, Any]] = ()) -> Command:
    """`enqueue_delivery` as one Redis command (a script), which also publishes `events` on
    the events channel (jobs/events.py), so that enqueueing and publishing take one command
    and one round trip, without a pipeline: same job id `{delivery_id}:{attempt}`, and the
    same no-op when that job or its result exists (checked inside Redis)."""
    from arq.constants import job_key_prefix, result_key_prefix
    from arq.jobs import serialize_job
    from arq.utils import timestamp_ms

    settings = get_settings()  # read once: it parses the environment
    job_id, now = f"{delivery_id}:{attempt}", timestamp_ms()
    job = serialize_job("deliver", (delivery_id,), {}, None, now,
                        serializer=redis.job_serializer)
    return ("EVAL", _ENQUEUE_ONCE, 3, job_key_prefix + job_id, result_key_prefix + job_id,
            queue_name(settings), redis.expires_extra_ms, job, now, job_id,
            settings.events_channel, *map(encode_event, events))
