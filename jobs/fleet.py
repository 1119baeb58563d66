"""The fleet of workers and agents: the zombie sweep and the scaling signals (issue 9).

Both run as built-in cron jobs (see jobs/cron.py CRON_SPECS).

Zombie sweep: an alive agent silent for longer than `HEARTBEAT_ZOMBIE_AFTER` is marked
`zombie` (a compare-and-set, so one sweep declares it), the deliveries it still held `running`
go back through the reconciler's own path (jobs.deliver.recover_stale_running: the lost try is
counted, then retried with the same webhook-id or dead-lettered, exactly once), and the event
is recorded: an audit row by `system` and an `agent.zombie` event for the dashboard.

Scaling signals: see `evaluate_scaling` and `ScalingConfig` (the thresholds, from the
environment). The decision itself is `decide`, pure, so its hysteresis is tested without a
clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shlex
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from redis.asyncio import Redis
from tortoise.expressions import Q

from jobs import audit
from jobs.deliver import recover_stale_running
from jobs.events import publish_events
from jobs.http import make_client
from jobs.queue import queue_name
from models.agents import Agent, ScalingEvent, zombie_after_s
from models.config import get_settings
from models.deliveries import Delivery
from models.enums import AgentStatus, DeliveryStatus
from models.queries import scaling_event_row

log = logging.getLogger("observatory.fleet")

SYSTEM_ACTOR = "system"
DEFAULT_FORGET_AFTER_S = 3 * 86400.0  # stopped and zombie agents are kept this long
SCALE_UP, SCALE_DOWN = "scale_up", "scale_down"
STREAK_TTL_S = 86400


# --- zombies ---------------------------------------------------------------------------------

async def sweep_zombies(ctx: dict[str, Any], now: datetime | None = None) -> dict[str, int]:
    """Mark agents whose last beat is older than the window as zombies and hand the
    deliveries they held back to the engine.

    Returns:
        `zombies` newly marked, `recovered` deliveries handed back, `forgotten` old agents.
    """
    now = now or datetime.now(UTC)
    window = zombie_after_s()
    cutoff = now - timedelta(seconds=window)
    newly: list[Agent] = []
    for agent in await Agent.filter(status=AgentStatus.ALIVE, last_seen__lt=cutoff):
        if await Agent.filter(id=agent.id, status=AgentStatus.ALIVE, last_seen__lt=cutoff
                              ).update(status=AgentStatus.ZOMBIE, zombie_at=now, running=0):
            newly.append(agent)
    recovered = await _recover_held(ctx)
    total = sum(recovered.values())
    events: list[dict[str, Any]] = []
    for agent in newly:
        n = recovered.pop(agent.id, 0)
        silent_s = round((now - agent.last_seen).total_seconds(), 1)
        await audit.record(SYSTEM_ACTOR, "agent.zombie", "agent", agent.id, host=agent.host,
                           pid=agent.pid, last_seen=agent.last_seen.isoformat(),
                           silent_s=silent_s, window_s=window, recovered_deliveries=n)
        events.append({"type": "agent.zombie", "id": agent.id, "recovered": n})
        log.warning(json.dumps({"event": "agent.zombie", "agent": agent.id,
                                "silent_s": silent_s, "recovered": n}))
    for agent_id, n in recovered.items():  # zombies of an earlier sweep (e.g. it crashed)
        await audit.record(SYSTEM_ACTOR, "agent.deliveries_recovered", "agent", agent_id,
                           recovered_deliveries=n)
        events.append({"type": "agent.zombie", "id": agent_id, "recovered": n})
    if events and (redis := ctx.get("redis")) is not None:
        await publish_events(redis, events)
    forgotten = await _forget_old_agents(now)
    return {"zombies": len(newly), "recovered": total, "forgotten": forgotten}


async def _recover_held(ctx: dict[str, Any]) -> dict[str, int]:
    """Deliveries still `running` under a zombie's name → the reconciler, per agent."""
    zombies = await Agent.filter(status=AgentStatus.ZOMBIE).values_list("id", flat=True)
    if not zombies:
        return {}
    holders = set(await Delivery.filter(status=DeliveryStatus.RUNNING, claimed_by__in=zombies
                                        ).values_list("claimed_by", flat=True))
    counts = {}
    for agent_id in sorted(holders):
        if n := await recover_stale_running(ctx, older_than_s=0, claimed_by=agent_id):
            counts[agent_id] = n
    return counts


async def _forget_old_agents(now: datetime) -> int:
    """Stopped and zombie agents silent for `HEARTBEAT_FORGET_AFTER` (default 3 days) are
    deleted: every worker restart is a new agent, the list must not grow for ever."""
    try:
        keep_s = float(os.environ.get("HEARTBEAT_FORGET_AFTER", "") or DEFAULT_FORGET_AFTER_S)
    except ValueError:
        keep_s = DEFAULT_FORGET_AFTER_S
    return await Agent.filter(status__in=[AgentStatus.STOPPED, AgentStatus.ZOMBIE],
                              last_seen__lt=now - timedelta(seconds=keep_s)).delete()


# --- scaling ---------------------------------------------------------------------------------

def _number(name: str, default: float, *, integer: bool = False, minimum: float = 0) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return int(default) if integer else default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: must be {kind} >= {minimum:g}, got {raw!r}")
    return value


@dataclass(frozen=True)
class ScalingConfig:
    """The thresholds, each from one environment variable (defaults in brackets)."""

    up_queue_depth: int = 500  # SCALE_UP_QUEUE_DEPTH: deliveries waiting [500]
    up_oldest_age_s: float = 60.0  # SCALE_UP_OLDEST_AGE_S: longest wait [60]
    down_queue_depth: int = 0  # SCALE_DOWN_QUEUE_DEPTH: at most this many waiting is idle [0]
    down_idle_s: float = 600.0  # SCALE_DOWN_IDLE_S: idle this long before scale_down [600]
    min_workers: int = 1  # SCALE_MIN_WORKERS [1]
    max_workers: int = 16  # SCALE_MAX_WORKERS [16]
    persist: int = 3  # SCALE_PERSIST_EVALUATIONS: a signal must hold this many in a row [3]
    cooldown_s: float = 300.0  # SCALE_COOLDOWN_S: no same-direction event within [300]
    command: str = ""  # OBSERVATORY_SCALING_COMMAND: run on each event (JSON on stdin)
    webhook: str = ""  # OBSERVATORY_SCALING_WEBHOOK: POSTed the event (SSRF-guarded)
    hook_timeout_s: float = 10.0  # OBSERVATORY_SCALING_HOOK_TIMEOUT_S [10]

    @classmethod
    def from_env(cls) -> ScalingConfig:
        """The thresholds now; a bad value raises ValueError naming its variable."""
        d = cls()
        config = cls(
            up_queue_depth=_number("SCALE_UP_QUEUE_DEPTH", d.up_queue_depth, integer=True,
                                   minimum=1),
            up_oldest_age_s=_number("SCALE_UP_OLDEST_AGE_S", d.up_oldest_age_s, minimum=0.001),
            down_queue_depth=_number("SCALE_DOWN_QUEUE_DEPTH", d.down_queue_depth, integer=True),
            down_idle_s=_number("SCALE_DOWN_IDLE_S", d.down_idle_s),
            min_workers=_number("SCALE_MIN_WORKERS", d.min_workers, integer=True),
            max_workers=_number("SCALE_MAX_WORKERS", d.max_workers, integer=True, minimum=1),
            persist=_number("SCALE_PERSIST_EVALUATIONS", d.persist, integer=True, minimum=1),
            cooldown_s=_number("SCALE_COOLDOWN_S", d.cooldown_s),
            command=os.environ.get("OBSERVATORY_SCALING_COMMAND", "").strip(),
            webhook=os.environ.get("OBSERVATORY_SCALING_WEBHOOK", "").strip(),
            hook_timeout_s=_number("OBSERVATORY_SCALING_HOOK_TIMEOUT_S", d.hook_timeout_s,
                                   minimum=0.1),
        )
        if config.max_workers < config.min_workers:
            raise ValueError(f"SCALE_MAX_WORKERS: must be >= SCALE_MIN_WORKERS "
                             f"({config.min_workers}), got {config.max_workers}")
        if config.down_queue_depth >= config.up_queue_depth:
            raise ValueError(f"SCALE_DOWN_QUEUE_DEPTH: must be below SCALE_UP_QUEUE_DEPTH "
                             f"({config.up_queue_depth}), got {config.down_queue_depth}")
        return config


@dataclass(frozen=True)
class Signals:
    queue_depth: int  # deliveries waiting: queued, or retrying and due
    oldest_age_s: float  # how long the longest-waiting one has waited
    workers: int  # live workers on the delivery queue


@dataclass
class Streak:
    """The signal of the last evaluations (kept in Redis between evaluations)."""

    direction: str | None = None
    count: int = 0  # evaluations in a row with this direction
    since: float | None = None  # epoch seconds of the first of them


@dataclass(frozen=True)
class Decision:
    direction: str
    reason: str
    suggested_workers: int


@dataclass
class Outcome:
    decision: Decision | None
    streak: Streak
    note: str  # why there is, or is not, an event


def signal_of(s: Signals, c: ScalingConfig) -> tuple[str, str] | None:
    """The direction the figures point to right now, with the reason; None when steady."""
    reasons = []
    if s.queue_depth >= c.up_queue_depth:
        reasons.append(f"queue depth {s.queue_depth} >= {c.up_queue_depth}")
    if s.oldest_age_s >= c.up_oldest_age_s:
        reasons.append(f"oldest waiting {s.oldest_age_s:.0f} s >= {c.up_oldest_age_s:g} s")
    if s.workers == 0 and s.queue_depth > 0:
        reasons.append(f"{s.queue_depth} waiting and no live worker")
    if reasons and s.workers < c.max_workers:
        return SCALE_UP, "; ".join(reasons)
    if not reasons and s.queue_depth <= c.down_queue_depth and s.workers > c.min_workers:
        return SCALE_DOWN, f"queue idle (<= {c.down_queue_depth} waiting)"
    return None


def suggested_workers(direction: str, s: Signals, c: ScalingConfig) -> int:
    if direction == SCALE_DOWN:
        return max(c.min_workers, s.workers - 1)
    factor = max(s.queue_depth / c.up_queue_depth, s.oldest_age_s / c.up_oldest_age_s, 1.0)
    return min(c.max_workers, max(s.workers + 1, math.ceil(max(s.workers, 1) * factor)))


def decide(s: Signals, streak: Streak, c: ScalingConfig, now: float,
           last_event: dict[str, float]) -> Outcome:
    """Hysteresis: a direction must hold `persist` evaluations in a row (scale_down also
    `down_idle_s` of idle time), and no event repeats its direction within `cooldown_s` of
    the last one (`last_event`: direction → epoch seconds)."""
    signal = signal_of(s, c)
    if signal is None:
        return Outcome(None, Streak(), "steady")
    direction, reason = signal
    if streak.direction == direction:
        streak = Streak(direction, streak.count + 1, streak.since)
    else:
        streak = Streak(direction, 1, now)
    if streak.count < c.persist:
        return Outcome(None, streak, f"{direction} signal {streak.count}/{c.persist}")
    held_s = now - (streak.since if streak.since is not None else now)
    if direction == SCALE_DOWN:
        if held_s < c.down_idle_s:
            return Outcome(None, streak, f"idle {held_s:.0f}/{c.down_idle_s:g} s")
        reason = f"queue idle for {held_s:.0f} s (<= {c.down_queue_depth} waiting)"
    last = last_event.get(direction)
    if last is not None and now - last < c.cooldown_s:
        return Outcome(None, streak, f"cool-down: last {direction} {now - last:.0f} s ago")
    decision = Decision(direction, reason, suggested_workers(direction, s, c))
    return Outcome(decision, Streak(), "event")


async def read_signals(now: datetime | None = None) -> Signals:
    """Queue depth and oldest wait from the database, live workers from their heartbeats."""
    now = now or datetime.now(UTC)
    waiting = Q(status=DeliveryStatus.QUEUED) | Q(status=DeliveryStatus.RETRYING,
                                                  next_attempt_at__lte=now)
    depth = await Delivery.filter(waiting).count()
    queued = await Delivery.filter(status=DeliveryStatus.QUEUED).order_by(
        "created_at").limit(1).values_list("created_at", flat=True)
    overdue = await Delivery.filter(status=DeliveryStatus.RETRYING, next_attempt_at__lte=now
                                    ).order_by("next_attempt_at").limit(1).values_list(
        "next_attempt_at", flat=True)
    since = [t for t in (*queued, *overdue) if t is not None]
    oldest = max(0.0, (now - min(since)).total_seconds()) if since else 0.0
    cutoff = now - timedelta(seconds=zombie_after_s())
    workers = await Agent.filter(kind="worker", queue=queue_name(), status=AgentStatus.ALIVE,
                                 last_seen__gte=cutoff).count()
    return Signals(queue_depth=depth, oldest_age_s=round(oldest, 1), workers=workers)


def _keys() -> tuple[str, str]:
    ns = get_settings().namespace
    return f"{ns}:scaling:streak", f"{ns}:scaling:lock"


async def _load_streak(redis: Redis) -> Streak:
    raw = await redis.get(_keys()[0])
    try:
        return Streak(**json.loads(raw)) if raw else Streak()
    except (TypeError, ValueError):
        return Streak()


async def _last_events(since: datetime) -> dict[str, float]:
    last: dict[str, float] = {}
    for event in await ScalingEvent.filter(created_at__gte=since).order_by("created_at"):
        last[event.direction] = event.created_at.timestamp()
    return last


async def evaluate_scaling(ctx: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """Compare queue depth, oldest job age and live workers with thresholds; record
    ScalingEvents with hysteresis, and run the configured command / webhook on each."""
    config = ScalingConfig.from_env()
    redis: Redis = ctx["redis"]
    streak_key, lock_key = _keys()
    if not await redis.set(lock_key, "1", nx=True, ex=60):  # one evaluation at a time
        return {"skipped": "another evaluation is running"}
    try:
        now = now or datetime.now(UTC)
        signals = await read_signals(now)
        last = await _last_events(now - timedelta(seconds=config.cooldown_s))
        outcome = decide(signals, await _load_streak(redis), config, now.timestamp(), last)
        await redis.set(streak_key, json.dumps(asdict(outcome.streak)), ex=STREAK_TTL_S)
        result: dict[str, Any] = {**asdict(signals), "note": outcome.note}
        if outcome.decision is not None:
            result["event"] = await _record_event(ctx, outcome.decision, signals, config, now)
        return result
    finally:
        await redis.delete(lock_key)


async def _record_event(ctx: dict[str, Any], decision: Decision, signals: Signals,
                        config: ScalingConfig, now: datetime) -> dict[str, Any]:
    event = await ScalingEvent.create(
        created_at=now, direction=decision.direction, reason=decision.reason[:500],
        queue_depth=signals.queue_depth, oldest_age_s=signals.oldest_age_s,
        workers=signals.workers, suggested_workers=decision.suggested_workers)
    row = dict(scaling_event_row(event))
    log.warning(json.dumps({"event": "scaling", **row}))
    hooks = await run_hooks({k: v for k, v in row.items() if k != "hooks"}, config.command,
                            config.webhook, config.hook_timeout_s, ctx.get("http"))
    if hooks:
        event.hooks = row["hooks"] = hooks
        await event.save(update_fields=["hooks"])
    if (redis := ctx.get("redis")) is not None:
        await publish_events(redis, [{"type": "scaling.event", "id": event.id,
                                      "direction": event.direction}])
    return row


# --- hooks: an autoscaler acts on the events -------------------------------------------------

OUTPUT_TAIL = 500  # characters of a command's output kept in the event


async def run_hooks(event: dict[str, Any], command: str, webhook: str, timeout_s: float,
                    client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    """Run the configured command and POST the webhook (concurrently, each bounded by
    `timeout_s`); what each answered, for the event's `hooks`. A failing hook is reported,
    never raised: the event is recorded either way."""
    jobs: dict[str, Any] = {}
    if command:
        jobs["command"] = run_command(command, event, timeout_s)
    if webhook:
        jobs["webhook"] = post_webhook(webhook, event, timeout_s, client)
    results = await asyncio.gather(*jobs.values())
    return dict(zip(jobs, results, strict=True))


async def run_command(command: str, event: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """`command` (split like a shell would, not run by one) with the event as JSON on stdin
    and as `OBSERVATORY_SCALING_*` environment variables."""
    env = {**os.environ, **{f"OBSERVATORY_SCALING_{k.upper()}": str(v)
                            for k, v in event.items() if not isinstance(v, dict | list)}}
    try:
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(command), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    try:
        output, _ = await asyncio.wait_for(proc.communicate(json.dumps(event).encode()),
                                           timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"ok": False, "error": f"timed out after {timeout_s:g} s (killed)"}
    return {"ok": proc.returncode == 0, "exit_code": proc.returncode,
            "output": output.decode(errors="replace")[-OUTPUT_TAIL:]}


async def post_webhook(url: str, event: dict[str, Any], timeout_s: float,
                       client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    """POST `{"type": "scaling.event", "data": event}` through the SSRF-guarded client."""
    own = client is None
    http = client or make_client()
    try:
        response = await asyncio.wait_for(
            http.post(url, json={"type": "scaling.event", "data": event}), timeout_s)
        return {"ok": response.is_success, "status_code": response.status_code}
    except Exception as exc:  # noqa: BLE001 - refused destination, network, timeout: reported
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:OUTPUT_TAIL]}
    finally:
        if own:
            await http.aclose()
