"""The delivery jobs: the fast lane (`deliver_batch`, first attempts in batches) and `deliver`
(one retry, its own job `{delivery_id}:{attempt}`), sharing one path:

claim (one compare-and-set for the whole batch) → POST each concurrently, each endpoint capped
in flight → record the finished ones in a few statements. Deliveries still in flight after
`DETACH_AFTER_S` are detached: the job returns (freeing its slot, so a slow receiver never holds
healthy deliveries hostage) and each records itself when done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs.claim_gate import ClaimGate
from jobs.attempt import (ATTEMPT_DEADLINE_S, AttemptResult, DirectPoster, no_attempt, post_once,
                          webhook_body)
from jobs.http import make_poster
from jobs.classify import Outcome
from jobs.operations import bulk
from jobs.operations.bulk_claim import claim_entries
from jobs.outcomes import Finished, record_outcomes, sandbox_overrides
from jobs.queue import enqueue_batch, enqueue_bulk_batch
from jobs.metrics import DeliveryMetrics
from jobs.signing import signing_secrets, signature_headers
from jobs.tracing import attempt_span
from models.config import get_settings
from models.deliveries import Delivery
from models.delivery_batches import ClaimedDelivery, claim_deliveries, load_endpoints
from models.enums import DeliveryStatus

log = logging.getLogger("observatory.deliver")

DETACH_AFTER_S = 2.0  # a batch waits at most this long for its slowest members...
IDLE_DETACH_S = 0.25  # ...or until none finished for this long, then detaches the rest
STRAGGLER_FLUSH_S = 0.05  # detached attempts finishing within this window are recorded together
DEFAULT_MAX_IN_FLIGHT = 16  # per endpoint and worker process, unless the endpoint says
STALE_RUNNING_S = ATTEMPT_DEADLINE_S + 90  # past arq's job_timeout + in-progress key expiry
CLAIM_AHEAD_BATCHES = 2  # a bulk-lane worker claims this many batches beyond an endpoint's cap
CLAIM_WAIT_S = DETACH_AFTER_S  # a bulk-lane job waits at most this long for its claim gate...
CLAIM_REQUEUE_S = 1.0  # ...then goes back to the queue, due again after this long


async def claim(delivery_ids: list[int], agent_id: str | None = None) -> list[ClaimedDelivery]:
    """Take the deliveries that are still waiting, atomically (one UPDATE), with their
    messages and endpoints.

    `agent_id` (the worker's, see jobs.heartbeats) is stored so that the zombie sweep can hand
    back what a dead worker held (jobs.fleet.sweep_zombies).
    """
    return await _with_endpoints(await claim_deliveries(delivery_ids, str(uuid.uuid4()),
                                                        agent_id, datetime.now(UTC)))


async def _with_endpoints(deliveries: list[ClaimedDelivery]) -> list[ClaimedDelivery]:
    # a batch usually targets a few endpoints: load each once and share it (building one
    # Endpoint per delivery was a tenth of the worker's time under load)
    endpoints = await load_endpoints({d.endpoint_id for d in deliveries} - {None},
                                     {d.endpoint_id: d.endpoint_version for d in deliveries
                                      if d.endpoint_version})
    for delivery in deliveries:
        delivery.endpoint = endpoints.get(delivery.endpoint_id)
    return deliveries


async def release_claim(delivery_id: int) -> bool:
    """Undo a claim: running → queued/retrying with the interrupted try not counted."""
    delivery = await Delivery.get_or_none(id=delivery_id, status=DeliveryStatus.RUNNING)
    if delivery is None:
        return False
    attempts = max(delivery.attempts - 1, 0)
    status = DeliveryStatus.RETRYING if attempts else DeliveryStatus.QUEUED
    return bool(await Delivery.filter(id=delivery_id, status=DeliveryStatus.RUNNING,
                                      attempts=delivery.attempts).update(
        status=status, attempts=attempts, updated_at=datetime.now(UTC)))


def init_context(ctx: dict[str, Any]) -> None:
    """Worker-wide state shared by every job's ctx copy (arq copies ctx per job)."""
    ctx["endpoint_limits"] = {}
    ctx["detached"] = set()
    ctx["shared"] = {}  # worker-wide objects made lazily by jobs (see _poster)
    ctx["straggler_buffer"] = []  # finished detached attempts waiting to be recorded together
    ctx["metrics"] = DeliveryMetrics()  # flushed by jobs.metrics.start_flushing/stop_flushing


def _poster(ctx: dict[str, Any]) -> DirectPoster:
    # ctx is a per-job copy: keep the poster in the shared dict, or every job would open (and
    # leak) its own session and connection pool
    shared: dict[str, DirectPoster] = ctx["shared"]
    if "poster" not in shared:  # created on first use, inside the running loop
        shared["poster"] = make_poster()
    return shared["poster"]


async def close_context(ctx: dict[str, Any]) -> None:
    """Release what `init_context` and the jobs opened (after `stop_detached`)."""
    if (poster := ctx["shared"].pop("poster", None)) is not None:
        await poster.aclose()


def _limiter(ctx: dict[str, Any], endpoint: Any) -> asyncio.Semaphore:
    limits: dict[int, asyncio.Semaphore] = ctx["endpoint_limits"]
    if endpoint.id not in limits:
        limits[endpoint.id] = asyncio.Semaphore(endpoint.max_in_flight or DEFAULT_MAX_IN_FLIGHT)
    return limits[endpoint.id]


async def attempt_one(ctx: dict[str, Any], delivery: Delivery) -> Finished:
    """Sign and POST one claimed delivery (waiting for its endpoint's in-flight cap)."""
    endpoint = delivery.endpoint
    if endpoint is None:
        return Finished(delivery, no_attempt("endpoint_deleted"), attempted=False)
    if (sandbox := sandbox_overrides(delivery)) is not None:  # not the endpoint's URL
        return await _attempt_sandbox(ctx, delivery, sandbox)
    if not endpoint.enabled:
        return Finished(delivery, no_attempt("endpoint_disabled"), attempted=False)
    body = webhook_body(delivery.message)
    async with _limiter(ctx, endpoint):
        if delivery.bulk_operation_id is not None and await _operation_cancelled(
                ctx, delivery.bulk_operation_id):
            cancelled = True  # it waited for the slot past the cancel: it never starts
        else:
            cancelled = False
            span = attempt_span(delivery.id, delivery.attempts, endpoint.url,
                                endpoint_id=endpoint.id, job_id=ctx.get("job_id"),
                                end_on_exit=False)  # ended by record_outcomes
            headers = signature_headers(signing_secrets(endpoint), f"msg_{delivery.message.id}",
                                        int(time.time()), body)
            with span:
                if endpoint.follow_redirects:
                    result = await post_once(ctx["http"], endpoint.url, body, headers,
                                             follow_redirects=True)
                else:
                    result = await _poster(ctx).post(endpoint.url, body, headers)
    if cancelled:  # after the slot is freed: hand the claim back, then cancel it
        await release_claim(delivery.id)
        await bulk.cancel_queued(ctx["redis"], delivery.bulk_operation_id, [delivery.id])
        return Finished(delivery, no_attempt("cancelled"), attempted=False, cancelled=True)
    span.set_status(result.status_code)
    span.set_outcome(result.outcome.kind, result.outcome.reason)
    return Finished(delivery, result, span=span)


async def _operation_cancelled(ctx: dict[str, Any], operation_id: int) -> bool:
    """Whether the bulk operation is being cancelled, read from Redis at most every
    `bulk.CANCEL_FLAG_TTL_S` per operation (a cancel is for good; bulk.cancel_operation answers
    no sooner than that after setting the flag). Checked by each bulk delivery
    once it has its endpoint's slot: a batch claims up to 50 deliveries at once, and those
    waiting behind the endpoint's in-flight cap must not start after a cancel (measured with
    bench/bulk_retry.py at 100,000 entries: 400 attempts began after the cancel answered).

    Deliveries that ask while a read is on its way wait for that read rather than each
    sending its own: the 64 deliveries in flight asked at once, and their reads cost the bulk
    worker an eighth of its CPU (py-spy, bench/bulk_retry.py).
    """
    flags: dict[int, tuple[float, bool | asyncio.Future[bool]]] = (
        ctx["shared"].setdefault("cancel_flags", {}))
    now = time.monotonic()
    seen = flags.get(operation_id)
    if seen is not None and (seen[1] is True or now - seen[0] < bulk.CANCEL_FLAG_TTL_S):
        return await asyncio.shield(seen[1]) if isinstance(seen[1], asyncio.Future) else seen[1]
    read = asyncio.ensure_future(bulk.is_cancelling(ctx["redis"], operation_id))
    flags[operation_id] = (now, read)
    try:
        cancelled = await asyncio.shield(read)
    finally:
        if flags.get(operation_id, (0.0, None))[1] is read:  # not replaced by a newer read
            if read.done() and not read.cancelled() and read.exception() is None:
                flags[operation_id] = (now, read.result())
            else:
                del flags[operation_id]  # the next one reads again
    return cancelled


async def _attempt_sandbox(ctx: dict[str, Any], delivery: Delivery,
                           overrides: dict[str, Any]) -> Finished:
    """A sandbox retry: the override URL (guarded like any destination, no redirects), extra
    headers, changed payload fields; signed with the endpoint's secret as usual."""
    endpoint = delivery.endpoint
    body = webhook_body(delivery.message, overrides.get("payload"))
    headers = {**overrides.get("headers", {}), **signature_headers(
        signing_secrets(endpoint), f"msg_{delivery.message.id}", int(time.time()), body)}
    result = await _poster(ctx).post(overrides["url"], body, headers)
    return Finished(delivery, result)


async def run_claimed(ctx: dict[str, Any], deliveries: list[Delivery],
                      detach_after_s: float | None = DETACH_AFTER_S,
                      gate: ClaimGate | None = None) -> dict[str, int]:
    """Attempt claimed deliveries concurrently; record the finished ones together.

    Waits while attempts keep finishing; once none finished for `IDLE_DETACH_S` (or
    `detach_after_s` passed) the stragglers are detached and record themselves later.
    Each attempt that ends gives its place in `gate` back (detached ones included).
    """
    tasks = {asyncio.create_task(attempt_one(ctx, d)): d for d in deliveries}
    if gate is not None:
        for task in tasks:
            task.add_done_callback(lambda _: gate.give(1))
    try:
        done, pending = await _wait_for_most(set(tasks), detach_after_s)
    except asyncio.CancelledError:  # the job was cancelled (worker shutdown): hand all back
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.shield(asyncio.gather(*(release_claim(d.id) for d in deliveries)))
        raise
    counts = await record_outcomes(ctx, [_finished(t, tasks[t]) for t in done])
    for task in pending:
        _detach(ctx, task, tasks[task])
    return {**counts, "detached": len(pending)}


async def _wait_for_most(pending: set[asyncio.Task[Finished]], limit_s: float | None
                         ) -> tuple[set[asyncio.Task[Finished]], set[asyncio.Task[Finished]]]:
    """Wait until all are done, none finished for `IDLE_DETACH_S`, or `limit_s` passed.

    One done-callback per task, not one `asyncio.wait(FIRST_COMPLETED)` per completion (that
    re-registers callbacks on every pending task each time: quadratic in the batch size).
    """
    if limit_s is None:
        return await asyncio.wait(pending)
    loop = asyncio.get_running_loop()
    pending, done = set(pending), set()
    all_done = loop.create_future()
    last_finish = loop.time()

    def finished(task: asyncio.Task[Finished]) -> None:
        nonlocal last_finish
        pending.discard(task)
        done.add(task)
        last_finish = loop.time()
        if not pending and not all_done.done():
            all_done.set_result(None)

    for task in pending:
        task.add_done_callback(finished)
    deadline = loop.time() + limit_s
    try:
        while pending and (left := min(last_finish + IDLE_DETACH_S, deadline) - loop.time()) > 0:
            await asyncio.wait([all_done], timeout=left)
    finally:
        for task in pending:
            task.remove_done_callback(finished)
    return set(done), set(pending)


def _finished(task: asyncio.Task[Finished], delivery: Delivery) -> Finished:
    """The task's outcome; a bug in our own code becomes a retryable `internal_error`."""
    if (exc := task.exception()) is None:
        return task.result()
    log.error("attempt of delivery %s crashed", delivery.id, exc_info=exc)
    return Finished(delivery, AttemptResult(
        started_at=datetime.now(UTC), duration_ms=0.0, outcome=Outcome("retryable", "internal_error"),
        error_message=f"{type(exc).__name__}: {exc}"))


def _detach(ctx: dict[str, Any], task: asyncio.Task[Finished], delivery: Delivery) -> None:
    async def finish_later() -> None:
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.shield(release_claim(delivery.id))
            raise
        await _record_soon(ctx, _finished(task, delivery))

    detached: set[asyncio.Task[None]] = ctx["detached"]
    follow = asyncio.create_task(finish_later())
    follow.delivery_id = delivery.id  # type: ignore[attr-defined]
    detached.add(follow)
    follow.add_done_callback(detached.discard)


async def _record_soon(ctx: dict[str, Any], finished: Finished) -> None:
    """Record stragglers together: the first to arrive waits briefly for others to join."""
    buffer: list[Finished] = ctx["straggler_buffer"]
    buffer.append(finished)
    if len(buffer) > 1:
        return  # the first one's flush takes this one too
    await asyncio.sleep(STRAGGLER_FLUSH_S)
    batch = buffer[:]
    buffer.clear()
    await record_outcomes(ctx, batch)


async def stop_detached(ctx: dict[str, Any], grace_s: float = 3.0) -> None:
    """On worker shutdown: let detached attempts finish briefly, then cancel and re-enqueue."""
    detached: set[asyncio.Task[None]] = ctx.get("detached", set())
    if not detached:
        return
    _, pending = await asyncio.wait(set(detached), timeout=grace_s)
    ids = [t.delivery_id for t in pending]  # type: ignore[attr-defined]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if leftovers := ctx["straggler_buffer"][:]:  # finished, but their flush was cancelled
        ctx["straggler_buffer"].clear()
        await record_outcomes(ctx, leftovers)
    if ids:
        await enqueue_batch(ctx["redis"], ids)


async def deliver_batch(ctx: dict[str, Any], delivery_ids: list[int],
                        operation_id: int | None = None,
                        endpoint_id: int | None = None) -> dict[str, int]:
    """arq job (fast lane): first attempts of up to a batch of deliveries.

    A batch of a bulk operation (`operation_id`, on the bulk lane) reads the operation's cancel
    flag once, right after its claim: a cancel that landed before that moment stops the whole
    batch (its deliveries are handed back and marked `cancelled`, their entries `active`);
    one that lands later finds them in flight.

    A bulk-lane batch names its endpoint (`endpoint_id`): it claims only once its endpoint's
    claim gate admits it (jobs.claim_gate), and goes back to the queue when that takes longer
    than `CLAIM_WAIT_S`.
    """
    gate = None
    if endpoint_id is not None:
        if (gate := await _admitted(ctx, delivery_ids, operation_id, endpoint_id,
                                    "deliver_batch")) is None:
            return {"claimed": 0, "requeued": len(delivery_ids)}
    try:
        deliveries = await claim(delivery_ids, ctx.get("agent_id"))
    except BaseException:
        if gate is not None:
            gate.give(len(delivery_ids))
        raise
    if gate is not None:
        gate.give(len(delivery_ids) - len(deliveries))  # taken by someone else, or finished
        if deliveries and deliveries[0].endpoint is not None:
            gate.limit = _claim_limit(deliveries[0].endpoint.max_in_flight)
    if not deliveries:
        return {"claimed": 0}
    if operation_id is not None and await bulk.is_cancelling(ctx["redis"], operation_id):
        if gate is not None:
            gate.give(len(deliveries))
        await asyncio.gather(*(release_claim(d.id) for d in deliveries))
        cancelled = await bulk.cancel_queued(ctx["redis"], operation_id, delivery_ids)
        return {"claimed": 0, "cancelled": cancelled or 0}
    return {"claimed": len(deliveries), **await run_claimed(ctx, deliveries, gate=gate)}


async def deliver_entries(ctx: dict[str, Any], entry_ids: list[int], operation_id: int,
                          endpoint_id: int) -> dict[str, int]:
    """arq job (bulk lane): DLQ entries of one endpoint that a Retry All's walker handed out.

    Once the endpoint's claim gate admits it (as a bulk `deliver_batch`), it claims the
    entries and creates their deliveries, `running`, in one statement that does nothing once
    the operation is cancelled (jobs.operations.bulk_claim), then delivers them. Entries
    changed since they were handed out are counted `skipped`.
    """
    if (gate := await _admitted(ctx, entry_ids, operation_id, endpoint_id,
                                "deliver_entries")) is None:
        return {"claimed": 0, "requeued": len(entry_ids)}
    try:
        taken = await claim_entries(entry_ids, operation_id, ctx.get("agent_id"),
                                    datetime.now(UTC))
        deliveries = await _with_endpoints(taken.deliveries)
    except BaseException:
        gate.give(len(entry_ids))
        raise
    gate.give(len(entry_ids) - len(deliveries))
    if deliveries and deliveries[0].endpoint is not None:
        gate.limit = _claim_limit(deliveries[0].endpoint.max_in_flight)
    if taken.late_skipped:
        await bulk.record_late_skips(ctx["redis"], operation_id, taken.late_skipped)
    if not deliveries:
        return {"claimed": 0, "skipped": taken.late_skipped, "refused": int(not taken.open)}
    return {"claimed": len(deliveries), **await run_claimed(ctx, deliveries, gate=gate)}


async def _admitted(ctx: dict[str, Any], ids: list[int], operation_id: int | None,
                    endpoint_id: int, function: str) -> ClaimGate | None:
    """The endpoint's claim gate once it admitted the job's `ids`; None when it did not within
    `CLAIM_WAIT_S`: the job (`function`) then went back to the queue, deferred."""
    gate = _claim_gate(ctx, endpoint_id)
    if await gate.take(len(ids), CLAIM_WAIT_S):
        return gate
    await enqueue_bulk_batch(ctx["redis"], ids, operation_id, CLAIM_REQUEUE_S,
                             endpoint_id=endpoint_id, function=function)
    return None


def _claim_limit(max_in_flight: int | None) -> int:
    """Deliveries of an endpoint a bulk-lane worker may hold claimed: its in-flight cap (the
    default until the endpoint is known), and `CLAIM_AHEAD_BATCHES` bulk-lane jobs waiting for
    a slot."""
    return ((max_in_flight or DEFAULT_MAX_IN_FLIGHT)
            + CLAIM_AHEAD_BATCHES * get_settings().bulk_batch_size)


def _claim_gate(ctx: dict[str, Any], endpoint_id: int) -> ClaimGate:
    gates: dict[int, ClaimGate] = ctx["shared"].setdefault("claim_gates", {})
    if (gate := gates.get(endpoint_id)) is None:
        gate = gates[endpoint_id] = ClaimGate(_claim_limit(None))
    return gate


async def deliver(ctx: dict[str, Any], delivery_id: int) -> str:
    """arq job: the next attempt of one delivery (retries, the reconciler, manual retries)."""
    deliveries = await claim([delivery_id], ctx.get("agent_id"))
    if not deliveries:
        return "skipped"
    counts = await run_claimed(ctx, deliveries)
    return next((k for k in counts if counts[k] and k != "detached"), "detached")


async def recover_stale_running(ctx: dict[str, Any], older_than_s: float = STALE_RUNNING_S,
                                claimed_by: str | None = None) -> int:
    """Deliveries stuck `running` (their worker was killed): count the lost try, then retry or
    dead-letter them through the normal path (exactly once: the claim below is a CAS).

    arq never calls us for a job whose last try was killed, so this is the only way out.
    `claimed_by` limits it to what one agent held (the zombie sweep, with `older_than_s=0`);
    the CAS clears it, so two sweeps never both count the lost try.
    """
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=older_than_s)
    scope = {"claimed_by": claimed_by} if claimed_by is not None else {}
    stale = await Delivery.filter(status=DeliveryStatus.RUNNING, updated_at__lt=cutoff, **scope
                                  ).select_related("message", "endpoint")
    finished = []
    for delivery in stale:
        taken = await Delivery.filter(id=delivery.id, status=DeliveryStatus.RUNNING,
                                      updated_at__lt=cutoff, **scope).update(
            updated_at=now, claimed_by=None)
        if taken:
            finished.append(Finished(delivery, AttemptResult(
                started_at=delivery.updated_at, duration_ms=0.0,
                outcome=Outcome("retryable", "worker_lost"),
                error_message="the worker stopped during this attempt")))
    await record_outcomes(ctx, finished)
    return len(finished)
