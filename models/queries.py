"""Read-side queries returning plain rows (TypedDicts), never ORM objects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from models.agents import Agent
from models.audit import AuditLog
from models.cron import CronJob, CronRun
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.dlq_filter import DlqFilter, select
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


class DeadLetterPage(TypedDict):
    entries: list[DeadLetterRow]
    next_cursor: int | None  # the `cursor` of the next (older) page; None on the last page


async def dead_letter_page(f: DlqFilter, *, limit: int = 50,
                           cursor: int | None = None) -> DeadLetterPage:
    """One page of the entries matching `f`, newest first (by id, so the order is stable
    while new failures arrive); `cursor` is the previous page's `next_cursor`.

    With `f.status` unset: the entries an operator acts on (active and retrying).
    """
    query = select(f, default_statuses=True)
    if cursor is not None:
        query = query.filter(id__lt=cursor)
    entries = await query.order_by("-id").limit(limit + 1).select_related("message")
    rows = [dead_letter_row(e) for e in entries[:limit]]
    return DeadLetterPage(entries=rows,
                          next_cursor=rows[-1]["id"] if len(entries) > limit else None)


async def list_dead_letters(
    statuses: list[DeadLetterStatus] | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[DeadLetterRow]:
    """DLQ entries, newest first; `before_id` is the cursor (the last id of the previous page).

    By default the entries an operator acts on: active and retrying.
    """
    page = await dead_letter_page(DlqFilter(status=statuses), limit=limit, cursor=before_id)
    return page["entries"]


async def get_dead_letter(entry_id: int) -> DeadLetterRow | None:
    entry = await DeadLetter.get_or_none(id=entry_id).select_related("message")
    return dead_letter_row(entry) if entry else None


class AttemptRow(TypedDict):
    number: int
    started_at: str
    duration_ms: float
    status_code: int | None
    outcome: str  # success | retryable | final
    error: str | None  # stable failure reason code
    error_message: str | None
    response_excerpt: str | None


class DeliveryDetail(TypedDict):
    id: int
    status: str
    attempts_made: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    finished_at: str | None
    attempts: list[AttemptRow]


class DeadLetterDetail(DeadLetterRow):
    app_id: int
    resolved_at: str | None
    error_history: list[Any]
    policy: dict[str, Any]
    metadata: dict[str, Any]
    payload: Any
    original_delivery: DeliveryDetail | None
    last_retry_delivery: DeliveryDetail | None  # the retry in flight or last made


async def get_dead_letter_detail(entry_id: int) -> DeadLetterDetail | None:
    """Everything an operator inspects on one entry: the full payload, error history, policy
    snapshot, and the attempts of the failed delivery and of its last retry."""
    entry = await DeadLetter.get_or_none(id=entry_id).select_related("message")
    if entry is None:
        return None
    retry_id = entry.last_retry_delivery_id  # type: ignore[attr-defined]
    ids = [i for i in (entry.delivery_id, retry_id) if i]  # type: ignore[attr-defined]
    deliveries = {d.id: d for d in await Delivery.filter(id__in=ids)}
    attempts: dict[int, list[AttemptRow]] = {i: [] for i in ids}
    for a in await Attempt.filter(delivery_id__in=ids).order_by("delivery_id", "number"):
        attempts[a.delivery_id].append(AttemptRow(  # type: ignore[attr-defined]
            number=a.number, started_at=_iso(a.started_at) or "", duration_ms=a.duration_ms,
            status_code=a.status_code, outcome=a.outcome, error=a.error_class,
            error_message=a.error_message, response_excerpt=a.response_excerpt))

    def detail(delivery_id: int | None) -> DeliveryDetail | None:
        d = deliveries.get(delivery_id) if delivery_id else None
        if d is None:
            return None
        return DeliveryDetail(
            id=d.id, status=d.status.value, attempts_made=d.attempts,
            last_status_code=d.last_status_code, last_error=d.last_error,
            created_at=_iso(d.created_at) or "", finished_at=_iso(d.finished_at),
            attempts=attempts[d.id])

    return DeadLetterDetail(
        **dead_letter_row(entry), app_id=entry.message.app_id,  # type: ignore[attr-defined]
        resolved_at=_iso(entry.resolved_at), error_history=entry.error_history,
        policy=entry.policy, metadata=entry.metadata, payload=entry.message.payload,
        original_delivery=detail(entry.delivery_id),  # type: ignore[attr-defined]
        last_retry_delivery=detail(retry_id))


class AuditRow(TypedDict):
    id: int
    actor: str
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]
    created_at: str


class AuditPage(TypedDict):
    entries: list[AuditRow]
    next_cursor: int | None


async def audit_page(*, action: str | None = None, actor: str | None = None,
                     target_type: str | None = None, target_id: str | None = None,
                     limit: int = 50, cursor: int | None = None) -> AuditPage:
    """Audit rows, newest first (by id); each given filter must match exactly."""
    query = AuditLog.all()
    for name, value in (("action", action), ("actor", actor), ("target_type", target_type),
                        ("target_id", target_id)):
        if value is not None:
            query = query.filter(**{name: value})
    if cursor is not None:
        query = query.filter(id__lt=cursor)
    logs = await query.order_by("-id").limit(limit + 1)
    rows = [AuditRow(id=r.id, actor=r.actor, action=r.action, target_type=r.target_type,
                     target_id=r.target_id, details=r.details,
                     created_at=_iso(r.created_at) or "") for r in logs[:limit]]
    return AuditPage(entries=rows, next_cursor=rows[-1]["id"] if len(logs) > limit else None)


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
