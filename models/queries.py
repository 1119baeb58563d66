"""Read-side queries returning plain rows (TypedDicts), never ORM objects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict

from models.agents import Agent, ScalingEvent, zombie_after_s as _zombie_after_s
from models.audit import AuditLog
from models.cron import CronJob, CronRun
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.dlq_filter import DlqFilter, reading, search_hint, select
from models.enums import AgentStatus, CronRunStatus, DeadLetterStatus

PREVIEW_CHARS = 120


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
    id: int | None  # None for an upcoming run not yet recorded (one row per job)
    job: str
    expression: str
    status: str  # pending | running | succeeded | failed | missed; "paused" for a paused job
    trigger: str  # schedule | manual | retry
    scheduled_at: str
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None
    drift_s: float | None  # how late it started after scheduled_at
    error: str | None  # a failure's error, or why the tick was missed
    retry_of: int | None
    retried_by: int | None  # the run that retries this one (a run is retried once)
    actor: str | None  # who asked for a manual run or a retry
    # upcoming rows (id None) only: the job's state; defaults on run rows
    paused: bool
    last_status: str | None  # the job's latest run's status
    missed_24h: int


class CronJobRow(TypedDict):
    name: str
    expression: str
    description: str
    paused: bool
    paused_at: str | None
    paused_by: str | None
    grace_s: float
    timeout_s: float
    last_run: CronRunRow | None
    next_runs: list[str]  # the ticks of the next 24 h, at most NEXT_RUNS_CAP
    missed_24h: int
    failed_24h: int


class CronRunPage(TypedDict):
    runs: list[CronRunRow]
    next_cursor: int | None


class AgentRow(TypedDict):
    id: str
    kind: str
    host: str
    pid: int | None
    status: str  # alive | zombie | stopped
    last_seen: str
    age_s: float
    queue: NotRequired[str]
    version: NotRequired[str]
    started_at: NotRequired[str | None]
    running: NotRequired[int]  # jobs running at the last beat
    totals: NotRequired[dict[str, int]]  # since start: jobs, succeeded, failed
    metadata: NotRequired[dict[str, Any]]


class ScalingEventRow(TypedDict):
    id: int
    created_at: str
    direction: str  # scale_up | scale_down
    reason: str
    queue_depth: int
    oldest_age_s: float
    workers: int
    suggested_workers: int
    hooks: dict[str, Any]


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
    async with reading(f) as conn:
        if (hint := await search_hint(f, conn)) is not None:
            if not hint:
                return DeadLetterPage(entries=[], next_cursor=None)
            query = query.filter(id__in=hint)
        entries = await query.order_by("-id").limit(limit + 1).select_related(
            "message").using_db(conn)
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


NEXT_RUNS_CAP = 50  # next run times listed per cron job (within 24 h)
RECENT_PER_JOB = 3  # recent runs of each job in the panel (frequent jobs do not crowd it)


def cron_run_row(run: CronRun, expression: str = "", retried_by: int | None = None
                 ) -> CronRunRow:
    drift = run.drift_ms / 1000 if run.drift_ms is not None else None
    return CronRunRow(
        id=run.id, job=run.job_id, expression=expression,  # type: ignore[attr-defined]
        status=str(run.status.value), trigger=run.trigger,
        scheduled_at=_iso(run.scheduled_at) or "", started_at=_iso(run.started_at),
        finished_at=_iso(run.finished_at), duration_ms=run.duration_ms, drift_s=drift,
        error=run.error, retry_of=run.retry_of_id,  # type: ignore[attr-defined]
        retried_by=retried_by, actor=run.actor, paused=False, last_status=None, missed_24h=0)


async def _cron_rows(runs: list[CronRun]) -> list[CronRunRow]:
    """Rows of `runs` with their job's expression and the run retrying each (if any)."""
    ids = [run.id for run in runs]
    retries = dict(await CronRun.filter(retry_of_id__in=ids).values_list("retry_of_id", "id")) \
        if ids else {}
    expressions = dict(await CronJob.filter(
        name__in={run.job_id for run in runs}).values_list("name", "expression"))  # type: ignore[attr-defined]
    return [cron_run_row(run, expressions.get(run.job_id, ""),  # type: ignore[attr-defined]
                         retries.get(run.id)) for run in runs]


def cron_next_runs(expression: str, now: datetime | None = None, hours: float = 24,
                   cap: int = NEXT_RUNS_CAP) -> list[str]:
    """The ticks of `expression` in the next `hours`, at most `cap`, as ISO strings."""
    from croniter import croniter

    now = now or datetime.now(UTC)
    until = now + timedelta(hours=hours)
    it = croniter(expression, now)
    ticks: list[str] = []
    while len(ticks) < cap and (tick := it.get_next(datetime)) <= until:
        ticks.append(_iso(tick) or "")
    return ticks


async def _count_since(status: CronRunStatus, since: datetime) -> dict[str, int]:
    from tortoise.functions import Count

    rows = await CronRun.filter(status=status, scheduled_at__gte=since).annotate(
        n=Count("id")).group_by("job_id").values_list("job_id", "n")
    return {name: int(n) for name, n in rows}


async def _last_runs(names: list[str]) -> dict[str, CronRun]:
    """Each job's latest run that got somewhere (pending placeholders left out)."""
    last: dict[str, CronRun] = {}
    for name in names:
        run = await CronRun.filter(job_id=name).exclude(status=CronRunStatus.PENDING).order_by(
            "-scheduled_at", "-id").first()
        if run is not None:
            last[name] = run
    return last


async def list_cron_jobs(name: str | None = None) -> list[CronJobRow]:
    """Every cron job (or the one named) with its schedule, state, last run and next runs."""
    now = datetime.now(UTC)
    jobs = await (CronJob.filter(name=name) if name else CronJob.all()).order_by("name")
    last = await _last_runs([job.name for job in jobs])
    last_rows = {row["job"]: row for row in await _cron_rows(list(last.values()))}
    missed = await _count_since(CronRunStatus.MISSED, now - timedelta(hours=24))
    failed = await _count_since(CronRunStatus.FAILED, now - timedelta(hours=24))
    return [CronJobRow(
        name=job.name, expression=job.expression, description=job.description,
        paused=job.paused, paused_at=_iso(job.paused_at), paused_by=job.paused_by,
        grace_s=job.grace_s, timeout_s=job.timeout_s, last_run=last_rows.get(job.name),
        next_runs=[] if job.paused else cron_next_runs(job.expression, now),
        missed_24h=missed.get(job.name, 0), failed_24h=failed.get(job.name, 0),
    ) for job in jobs]


async def cron_run_page(name: str, *, status: str | None = None, limit: int = 50,
                        cursor: int | None = None) -> CronRunPage:
    """Runs of one job, newest first (by id); `cursor` is the last id of the previous page."""
    query = CronRun.filter(job_id=name)
    if status:
        query = query.filter(status=status)
    if cursor is not None:
        query = query.filter(id__lt=cursor)
    runs = await query.order_by("-id").limit(limit + 1)
    rows = await _cron_rows(runs[:limit])
    return CronRunPage(runs=rows, next_cursor=rows[-1]["id"] if len(runs) > limit else None)


async def get_cron_run(run_id: int) -> CronRunRow | None:
    run = await CronRun.get_or_none(id=run_id)
    return (await _cron_rows([run]))[0] if run else None


async def list_cron_runs(recent: int = 30) -> list[CronRunRow]:
    """The panel's rows: one upcoming row per job (id None: its next tick, its state, its last
    result), then recent runs newest first: the latest few of each job, plus every failed or
    missed run of the last 24 h not yet retried, at most `recent`."""
    now = datetime.now(UTC)
    rows: list[CronRunRow] = []
    for job in await list_cron_jobs():
        last = job["last_run"]
        rows.append(CronRunRow(
            id=None, job=job["name"], expression=job["expression"],
            status="paused" if job["paused"] else "pending", trigger="schedule",
            scheduled_at=(job["next_runs"] or [""])[0], started_at=None, finished_at=None,
            duration_ms=None, drift_s=last["drift_s"] if last else None,
            error=f"paused by {job['paused_by']}" if job["paused"] else None,
            retry_of=None, retried_by=None, actor=job["paused_by"], paused=job["paused"],
            last_status=last["status"] if last else None, missed_24h=job["missed_24h"]))
    picked: dict[int, CronRun] = {}
    for job in await CronJob.all().values_list("name", flat=True):
        for run in await CronRun.filter(job_id=job).order_by("-scheduled_at", "-id").limit(
                RECENT_PER_JOB):
            picked[run.id] = run
    for run in await CronRun.filter(
            status__in=(CronRunStatus.FAILED, CronRunStatus.MISSED),
            scheduled_at__gte=now - timedelta(hours=24)).order_by("-scheduled_at").limit(recent):
        picked[run.id] = run
    runs = sorted(picked.values(), key=lambda r: (r.scheduled_at, r.id), reverse=True)
    recent_rows = await _cron_rows(runs)
    attention = [r for r in recent_rows if r["status"] in ("failed", "missed")
                 and r["retried_by"] is None]
    others = [r for r in recent_rows if r not in attention]
    keep = {id(r) for r in (attention + others)[:recent]}
    rows.extend(r for r in recent_rows if id(r) in keep)
    return rows


_AGENT_ORDER = {"zombie": 0, "alive": 1, "stopped": 2}


def agent_status(agent: Agent, now: datetime, window_s: float) -> str:
    """alive | zombie | stopped: an alive agent silent past the window is a zombie already,
    before the sweep marks it (the dashboard must not wait for the sweep's next tick)."""
    if agent.status == AgentStatus.ALIVE and (now - agent.last_seen).total_seconds() > window_s:
        return AgentStatus.ZOMBIE.value
    return agent.status.value


def agent_row(agent: Agent, now: datetime, window_s: float) -> AgentRow:
    return AgentRow(
        id=agent.id, kind=agent.kind, host=agent.host, pid=agent.pid,
        status=agent_status(agent, now, window_s), last_seen=_iso(agent.last_seen) or "",
        age_s=round(max((now - agent.last_seen).total_seconds(), 0.0), 1), queue=agent.queue,
        version=agent.version, started_at=_iso(agent.started_at), running=agent.running,
        totals={"jobs": agent.jobs_done, "succeeded": agent.succeeded, "failed": agent.failed},
        metadata=agent.metadata or {},
    )


async def list_agents(zombie_after_s: float | None = None, status: str | None = None,
                      limit: int = 200) -> list[AgentRow]:
    """Workers and agents, zombies first, then alive, then stopped (newest beat first in each).

    Args:
        zombie_after_s: the window; default `HEARTBEAT_ZOMBIE_AFTER` (models.agents).
        status: only agents in this status (alive | zombie | stopped).
        limit: at most this many rows.
    """
    window = _zombie_after_s() if zombie_after_s is None else zombie_after_s
    now = datetime.now(UTC)
    rows = [agent_row(agent, now, window) for agent in await Agent.all().order_by("-last_seen")]
    if status is not None:
        rows = [r for r in rows if r["status"] == status]
    rows.sort(key=lambda r: _AGENT_ORDER.get(r["status"], 3))  # stable: newest first within
    return rows[:limit]


def zombie_cutoff(zombie_after_s: float | None = None) -> datetime:
    """Alive agents whose last beat is older than this are zombies."""
    window = _zombie_after_s() if zombie_after_s is None else zombie_after_s
    return datetime.now(UTC) - timedelta(seconds=window)


def scaling_event_row(event: ScalingEvent) -> ScalingEventRow:
    return ScalingEventRow(
        id=event.id, created_at=_iso(event.created_at) or "", direction=event.direction,
        reason=event.reason, queue_depth=event.queue_depth,
        oldest_age_s=round(event.oldest_age_s, 1), workers=event.workers,
        suggested_workers=event.suggested_workers, hooks=event.hooks or {})


async def list_scaling_events(limit: int = 20) -> list[ScalingEventRow]:
    """The most recent scaling events, newest first."""
    events = await ScalingEvent.all().order_by("-id").limit(limit)
    return [scaling_event_row(e) for e in events]
