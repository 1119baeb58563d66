"""Heartbeats: each worker registers as an Agent and beats every few seconds with what it is
doing; external agents beat through `POST /v1/agents/{id}/heartbeat` (see `record_heartbeat`).

A worker's figures come from `WorkerStats`, its `ctx["metrics"]`: the delivery metrics object
every attempt already reports to (jobs.outcomes), plus arq's `on_job_start`/`on_job_end`
hooks for the running-job count. Nothing is added to the delivery hot path.

A worker that exits cleanly beats once more with `stopped` and is never a zombie; one that
goes silent is found by the zombie sweep (jobs.fleet.sweep_zombies).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError

from jobs.events import publish_event
from jobs.metrics import DeliveryMetrics
from models.agents import Agent, heartbeat_interval_s
from models.enums import AgentStatus

log = logging.getLogger("observatory.heartbeats")

HEARTBEAT_INTERVAL_S = 5.0  # the default; HEARTBEAT_INTERVAL overrides it (models.agents)
#: what a beat may report (a worker's own, or an external agent's body)
REPORT_FIELDS = frozenset({"host", "pid", "queue", "version", "running", "jobs_done",
                           "succeeded", "failed", "metadata"})


def worker_id() -> str:
    return f"worker@{socket.gethostname()}:{os.getpid()}"


def software_version() -> str:
    try:
        return metadata.version("observatory")
    except metadata.PackageNotFoundError:
        return "dev"


class WorkerStats(DeliveryMetrics):
    """A worker's delivery metrics (flushed to Redis as before) plus its totals since start,
    reported by each heartbeat."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0  # arq jobs in progress
        self.jobs_done = 0
        self.succeeded = 0  # delivery attempts that succeeded
        self.failed = 0  # ... and that did not (retrying or dead-lettered)

    def record(self, outcome: str, reason: str | None = None,
               duration_s: float | None = None) -> None:
        super().record(outcome, reason, duration_s)
        if outcome == "succeeded":
            self.succeeded += 1
        else:
            self.failed += 1

    def record_successes(self, durations_s: Sequence[float | None]) -> None:
        super().record_successes(durations_s)
        self.succeeded += len(durations_s)

    def report(self) -> dict[str, int]:
        return {"running": self.running, "jobs_done": self.jobs_done,
                "succeeded": self.succeeded, "failed": self.failed}


def _stats(ctx: dict[str, Any]) -> WorkerStats | None:
    stats = ctx.get("metrics")
    return stats if isinstance(stats, WorkerStats) else None


async def job_started(ctx: dict[str, Any]) -> None:
    """arq `on_job_start` hook (ctx is the job's copy; the stats object is shared)."""
    if (stats := _stats(ctx)) is not None:
        stats.running += 1


async def job_ended(ctx: dict[str, Any]) -> None:
    """arq `on_job_end` hook."""
    if (stats := _stats(ctx)) is not None:
        stats.running = max(stats.running - 1, 0)
        stats.jobs_done += 1


async def register(agent_id: str, redis: Redis | None, *, queue: str,
                   kind: str = "worker") -> None:
    """A worker's first beat: its row (re)starts — alive, started now, totals at zero."""
    now = datetime.now(UTC)
    await Agent.update_or_create(id=agent_id, defaults={
        "kind": kind, "host": socket.gethostname(), "pid": os.getpid(), "queue": queue,
        "version": software_version(), "status": AgentStatus.ALIVE, "started_at": now,
        "last_seen": now, "running": 0, "jobs_done": 0, "succeeded": 0, "failed": 0,
        "stopped_at": None, "zombie_at": None})
    if redis is not None:
        await publish_event(redis, "agent.heartbeat", id=agent_id, status="alive")


async def beat(agent_id: str, redis: Redis | None = None, kind: str | None = None,
               status: AgentStatus = AgentStatus.ALIVE, **report: Any) -> Agent:
    """Record one heartbeat of `agent_id` (created on first beat, as a `worker` unless `kind`
    says otherwise).

    `report` holds any of REPORT_FIELDS; a beat with `stopped` marks a clean exit. A zombie
    that beats again is alive again (its held deliveries were already handed back: they are
    delivered at least once, with the same webhook-id).
    """
    unknown = set(report) - REPORT_FIELDS
    if unknown:
        raise TypeError(f"beat(): unknown report fields {sorted(unknown)}")
    now = datetime.now(UTC)
    values: dict[str, Any] = {"status": status, "last_seen": now, **report}
    if kind:
        values["kind"] = kind
    values["stopped_at"] = now if status == AgentStatus.STOPPED else None
    if status != AgentStatus.ZOMBIE:
        values["zombie_at"] = None
    if not await Agent.filter(id=agent_id).update(**values):
        defaults = {"kind": "worker", "host": socket.gethostname(), "pid": os.getpid()}
        try:
            await Agent.create(id=agent_id, **{**defaults, **values})
        except IntegrityError:  # created meanwhile by a concurrent beat
            await Agent.filter(id=agent_id).update(**values)
    if redis is not None:
        await publish_event(redis, "agent.heartbeat", id=agent_id, status=status.value)
    return await Agent.get(id=agent_id)


async def beat_worker(ctx: dict[str, Any], status: AgentStatus = AgentStatus.ALIVE) -> None:
    """One beat of this worker process with its figures."""
    stats = _stats(ctx)
    await beat(ctx["agent_id"], ctx.get("redis"), status=status,
               **(stats.report() if stats is not None else {}))


async def heartbeat_loop(ctx: dict[str, Any], interval_s: float | None = None) -> None:
    """Beat until cancelled; a failed beat is logged and retried at the next interval."""
    interval = interval_s or heartbeat_interval_s()
    while True:
        await asyncio.sleep(interval)
        try:
            await beat_worker(ctx)
        except Exception:  # noqa: BLE001 - a heartbeat must never kill the worker
            log.exception("heartbeat of %s failed", ctx.get("agent_id"))


async def start_heartbeat(ctx: dict[str, Any], queue: str) -> None:
    """Worker start-up (after the DB is up): register, then beat in the background."""
    heartbeat_interval_s()  # a bad HEARTBEAT_INTERVAL stops the worker here, with its name
    await register(ctx["agent_id"], ctx.get("redis"), queue=queue)
    ctx["heartbeat"] = asyncio.create_task(heartbeat_loop(ctx), name="observatory-heartbeat")


async def stop_heartbeat(ctx: dict[str, Any]) -> None:
    """Worker shutdown: stop beating and mark the agent `stopped` (never a zombie)."""
    if task := ctx.pop("heartbeat", None):
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if ctx.get("agent_id"):
        try:
            await beat_worker(ctx, AgentStatus.STOPPED)
        except Exception:  # noqa: BLE001 - shutting down: report, do not raise
            log.exception("could not mark %s stopped", ctx["agent_id"])


async def record_heartbeat(agent_id: str, report: dict[str, Any], redis: Redis | None,
                           status: AgentStatus = AgentStatus.ALIVE) -> Agent:
    """An external agent's beat (REST); `report` is already validated (dashboard/api/agents)."""
    kind = report.pop("kind", None)
    if not await Agent.exists(id=agent_id):
        # first beat: what it did not say stays empty (not the API server's host and pid)
        report = {"host": "", "pid": None, **report}
        kind = kind or "agent"
    return await beat(agent_id, redis, kind=kind, status=status, **report)
