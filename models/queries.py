"""Read-side queries returning plain rows (TypedDicts), never ORM objects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from models.agents import Agent
from models.cron import CronJob, CronRun
from models.dead_letters import DeadLetter
from models.enums import AgentStatus, DeadLetterStatus

PREVIEW_CHARS = 120
DEFAULT_ZOMBIE_AFTER_S = 30.0


class DeadLetterRow(TypedDict):
    id: int
    delivery_id: int
    message_id: int
    endpoint_id: int | None
    endpoint_url: str
    event_type: str
    payload_preview: str
    failure_reason: str
    status: str
    attempts: int
    retry_count: int
    last_retry_delivery_id: int | None
    created_at: str
    updated_at: str


class CronRunRow(TypedDict):
    id: int | None  # None for an upcoming run not yet recorded
    job: str
    expression: str
    status: str  # pending | running | succeeded | failed
    scheduled_at: str
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None
    error: str | None


class AgentRow(TypedDict):
    id: str
    kind: str
    host: str
    pid: int | None
    status: str  # alive | zombie | stopped
    last_seen: str
    age_s: float


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def payload_preview(payload: object, limit: int = PREVIEW_CHARS) -> str:
    text = json.dumps(payload, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dead_letter_row(entry: DeadLetter) -> DeadLetterRow:
    """Plain row of an entry fetched with `select_related("message")`."""
    return DeadLetterRow(
        id=entry.id,
        delivery_id=entry.delivery_id,  # type: ignore[attr-defined]
        message_id=entry.message_id,  # type: ignore[attr-defined]
        endpoint_id=entry.endpoint_id,  # type: ignore[attr-defined]
        endpoint_url=entry.endpoint_url,
        event_type=entry.message.event_type,
        payload_preview=payload_preview(entry.message.payload),
        failure_reason=entry.failure_reason,
        status=str(entry.status.value if hasattr(entry.status, "value") else entry.status),
        attempts=entry.attempts,
        retry_count=entry.retry_count,
        last_retry_delivery_id=entry.last_retry_delivery_id,  # type: ignore[attr-defined]
        created_at=_iso(entry.created_at) or "",
        updated_at=_iso(entry.updated_at) or "",
    )


async def list_dead_letters(
    statuses: list[DeadLetterStatus] | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[DeadLetterRow]:
    """DLQ entries, newest first; `before_id` is the cursor (the last id of the previous page).

    By default the entries an operator acts on: active and retrying.
    """
    statuses = statuses or [DeadLetterStatus.ACTIVE, DeadLetterStatus.RETRYING]
    query = DeadLetter.filter(status__in=statuses)
    if before_id is not None:
        query = query.filter(id__lt=before_id)
    entries = await query.order_by("-id").limit(limit).select_related("message")
    return [dead_letter_row(e) for e in entries]


async def get_dead_letter(entry_id: int) -> DeadLetterRow | None:
    entry = await DeadLetter.get_or_none(id=entry_id).select_related("message")
    return dead_letter_row(entry) if entry else None


async def list_cron_runs(recent: int = 20) -> list[CronRunRow]:
    """The next (pending) run of every cron job, then the most recent runs, newest first."""
    from croniter import croniter

    now = datetime.now(UTC)
    rows: list[CronRunRow] = []
    for job in await CronJob.all().order_by("name"):
        if job.paused:
            continue
        upcoming = job.next_run_at or croniter(job.expression, now).get_next(datetime)
        rows.append(CronRunRow(
            id=None, job=job.name, expression=job.expression, status="pending",
            scheduled_at=_iso(upcoming) or "", started_at=None, finished_at=None,
            duration_ms=None, error=None,
        ))
    for run in await CronRun.all().order_by("-scheduled_at", "-id").limit(recent).select_related("job"):
        rows.append(CronRunRow(
            id=run.id, job=run.job.name, expression=run.job.expression,
            status=str(run.status.value), scheduled_at=_iso(run.scheduled_at) or "",
            started_at=_iso(run.started_at), finished_at=_iso(run.finished_at),
            duration_ms=run.duration_ms, error=run.error,
        ))
    return rows


async def list_agents(zombie_after_s: float = DEFAULT_ZOMBIE_AFTER_S) -> list[AgentRow]:
    """Workers and agents; an alive one whose heartbeat is older than the window is a zombie."""
    now = datetime.now(UTC)
    rows: list[AgentRow] = []
    for agent in await Agent.all().order_by("-last_seen"):
        age = (now - agent.last_seen).total_seconds()
        status = agent.status.value
        if agent.status == AgentStatus.ALIVE and age > zombie_after_s:
            status = "zombie"
        rows.append(AgentRow(
            id=agent.id, kind=agent.kind, host=agent.host, pid=agent.pid, status=status,
            last_seen=_iso(agent.last_seen) or "", age_s=round(age, 1),
        ))
    return rows


def zombie_cutoff(zombie_after_s: float = DEFAULT_ZOMBIE_AFTER_S) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=zombie_after_s)
