"""The cron panel's state (CronState) on the real database and Redis: its load, each operator
action (retry a failed run, run now, pause, resume) with the rows, audit rows and arq jobs it
leaves, the refusals (viewer, illegal action), and a panel that cannot reload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
import reflex as rx
from tortoise import connections

from dashboard import runtime
from dashboard.state.cron import CronState
from dashboard.state.dead_letters import DeadLetterState
from dashboard.state.scheduler import SchedulerState
from jobs.queue import queue_name
from models.audit import AuditLog
from models.cron import TRIGGER_MANUAL, TRIGGER_RETRY, CronJob, CronRun
from models.enums import CronRunStatus
from tests.dashboard.sessions import actor_of, signed_in
from tests.factories import make_dead_letter, make_endpoint

R = CronRunStatus
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest_asyncio.fixture
async def backend(db: str, redis: Any) -> AsyncIterator[Any]:
    """Real DB and Redis; closes the dashboard's own Redis pool (runtime.get_redis) after."""
    yield redis
    await runtime.close()


async def jobs() -> dict[str, CronJob]:
    return {"reconcile": await CronJob.create(name="reconcile", expression="*/5 * * * *"),
            "retention": await CronJob.create(name="retention", expression="0 3 * * *")}


async def run_of(job: str, status: R, minutes_ago: int, **fields: Any) -> CronRun:
    at = NOW - timedelta(minutes=minutes_ago)
    if status in (R.SUCCEEDED, R.FAILED):
        fields = {"started_at": at, "finished_at": at + timedelta(seconds=1),
                  "duration_ms": 1000.0, **fields}
    return await CronRun.create(job_id=job, status=status, scheduled_at=at, **fields)


async def cron_state(role: str = "operator") -> CronState:
    """A signed-in session after the Scheduler page load (which loads the cron panel)."""
    root = await signed_in(role)
    await (await root.get_state(SchedulerState)).load()
    return await root.get_state(CronState)


async def run(handler: Any) -> list[str]:
    """Drive a handler to its end; what it yielded (toasts), as text."""
    return [str(item) async for item in handler if item is not None]


def recent(state: CronState) -> dict[int, dict[str, Any]]:
    return {row["id"]: dict(row) for row in state.recent}


def upcoming(state: CronState) -> dict[str, dict[str, Any]]:
    return {row["job"]: dict(row) for row in state.upcoming}


async def queued(redis: Any, run_id: int) -> bool:
    """Whether the arq job that runs `run_id` waits in the main queue."""
    return await redis.zscore(queue_name(), f"cron-run:{run_id}") is not None


# -- load -------------------------------------------------------------------------------------

async def test_page_load_fills_the_panel_with_jobs_runs_and_what_needs_attention(backend):
    await jobs()
    await CronJob.filter(name="retention").update(paused=True, paused_by="someone")
    done = await run_of("reconcile", R.SUCCEEDED, 10, drift_ms=1234.0)
    failed = await run_of("reconcile", R.FAILED, 20, error="RuntimeError: boom")
    missed = await run_of("retention", R.MISSED, 30, error="no worker alive at the tick")
    retried = await run_of("retention", R.FAILED, 40, error="old failure")
    await run_of("retention", R.SUCCEEDED, 35, retry_of=retried)

    state = await cron_state("viewer")  # reading needs no more than a viewer

    assert state.loaded
    jobs_shown = upcoming(state)
    assert (jobs_shown["reconcile"]["status"], jobs_shown["reconcile"]["last_label"]) == (
        "pending", "succeeded")
    assert jobs_shown["reconcile"]["drift_label"] == "+1.2 s"  # its last run started late
    assert jobs_shown["retention"]["status"] == "paused"
    runs = recent(state)
    assert runs[done.id]["drift_label"] == "+1.2 s" and not runs[done.id]["can_retry"]
    assert runs[failed.id]["can_retry"] and runs[failed.id]["error_label"] == "RuntimeError: boom"
    assert runs[missed.id]["can_retry"]
    assert not runs[retried.id]["can_retry"]  # retried once already
    assert (state.failed_count, state.missed_count) == (1, 1)
    assert state.busy == []


async def test_a_signed_out_session_loads_no_cron_rows(backend):
    await jobs()
    root = rx.State()
    await (await root.get_state(SchedulerState)).load()
    state = await root.get_state(CronState)
    assert not state.loaded and state.upcoming == [] and state.recent == []


# -- actions ----------------------------------------------------------------------------------

async def test_retry_of_a_failed_run_adds_a_queued_run_and_an_audit_row(backend):
    await jobs()
    failed = await run_of("reconcile", R.FAILED, 20, error="RuntimeError: boom")
    state = await cron_state("operator")
    assert state.failed_count == 1

    handler = state.retry_run(failed.id)
    await anext(handler)  # first yield: the button spins before the round trip
    assert state.busy == [f"retry:{failed.id}"]
    said = [str(item) async for item in handler if item is not None]

    [retry] = await CronRun.filter(retry_of_id=failed.id)
    assert (retry.status, retry.trigger, retry.actor) == (
        R.PENDING, TRIGGER_RETRY, actor_of("operator"))
    assert (await CronRun.get(id=failed.id)).status == R.FAILED  # the failed run is kept
    [audit] = await AuditLog.filter(action="cron.retry")
    assert (audit.actor, audit.target_id, audit.details["new_run_id"]) == (
        actor_of("operator"), str(failed.id), retry.id)
    assert await queued(backend, retry.id)
    assert any(f"Run {failed.id} retried" in item and '"success"' in item for item in said)
    runs = recent(state)  # reloaded: the new run shows, the failed one lost its Retry
    assert runs[retry.id]["status"] == "pending"
    assert runs[failed.id]["retried_by"] == retry.id and not runs[failed.id]["can_retry"]
    assert state.failed_count == 0 and state.busy == []


async def test_retry_of_a_missed_run_is_accepted_and_a_second_retry_refused(backend):
    await jobs()
    missed = await run_of("retention", R.MISSED, 30, error="no worker alive at the tick")
    state = await cron_state("operator")
    assert state.missed_count == 1
    await run(state.retry_run(missed.id))
    assert await CronRun.filter(retry_of_id=missed.id).count() == 1
    assert state.missed_count == 0

    again = await run(state.retry_run(missed.id))  # e.g. from a tab that had not reloaded

    assert len(again) == 1 and "Retry refused" in again[0] and "already retried" in again[0]
    assert await CronRun.filter(retry_of_id=missed.id).count() == 1
    assert await AuditLog.filter(action="cron.retry").count() == 1


async def test_retry_of_a_run_that_did_not_fail_is_refused_with_the_reason(backend):
    await jobs()
    done = await run_of("reconcile", R.SUCCEEDED, 10)
    state = await cron_state("operator")
    said = await run(state.retry_run(done.id))
    assert "Retry refused" in said[0] and "only a failed or missed run" in said[0]
    assert '"error"' in said[0]
    assert await CronRun.all().count() == 1 and state.busy == []


async def test_a_click_while_the_same_request_is_in_flight_does_nothing(backend):
    await jobs()
    failed = await run_of("reconcile", R.FAILED, 20)
    state = await cron_state("operator")
    first = state.retry_run(failed.id)
    await anext(first)  # in flight
    assert await run(state.retry_run(failed.id)) == []  # the double click
    await run(first)
    assert await CronRun.filter(retry_of_id=failed.id).count() == 1


async def test_run_now_adds_a_manual_run_queued_for_the_workers(backend):
    await jobs()
    state = await cron_state("admin")

    handler = state.run_job("reconcile")
    await anext(handler)
    assert state.busy == ["run:reconcile"]
    said = await run(handler)

    [manual] = await CronRun.filter(job_id="reconcile")
    assert (manual.status, manual.trigger, manual.actor) == (
        R.PENDING, TRIGGER_MANUAL, actor_of("admin"))
    [audit] = await AuditLog.filter(action="cron.run")
    assert (audit.actor, audit.target_id, audit.details["run_id"]) == (
        actor_of("admin"), "reconcile", manual.id)
    assert await queued(backend, manual.id)
    assert any("reconcile queued to run now" in item for item in said)
    assert recent(state)[manual.id]["trigger"] == "manual" and state.busy == []


async def test_run_now_of_an_unknown_job_is_refused(backend):
    state = await cron_state("operator")
    said = await run(state.run_job("gone"))
    assert "Run refused" in said[0] and "does not exist" in said[0]
    assert await AuditLog.all().count() == 0


async def test_pause_then_resume_a_job(backend):
    await jobs()
    placeholder = await CronRun.create(job_id="reconcile", status=R.PENDING,
                                       scheduled_at=NOW + timedelta(minutes=5))
    state = await cron_state("operator")

    handler = state.pause_job("reconcile")
    await anext(handler)
    assert state.busy == ["pause:reconcile"]
    said = await run(handler)

    job = await CronJob.get(name="reconcile")
    assert job.paused and job.paused_by == actor_of("operator")
    assert not await CronRun.exists(id=placeholder.id)  # its pending tick is skipped
    assert any("reconcile paused" in item for item in said)
    assert upcoming(state)["reconcile"]["status"] == "paused" and state.busy == []

    again = await run(state.pause_job("reconcile"))
    assert "Pause refused" in again[0] and "already paused" in again[0]

    handler = state.resume_job("reconcile")
    await anext(handler)
    assert state.busy == ["pause:reconcile"]  # Pause and Resume are one toggle
    said = await run(handler)

    job = await CronJob.get(name="reconcile")
    assert not job.paused and job.paused_by is None and job.checked_until is not None
    assert any("reconcile resumed" in item for item in said)
    assert upcoming(state)["reconcile"]["status"] == "pending" and state.busy == []
    assert [a.action for a in await AuditLog.all().order_by("id")] == [
        "cron.pause", "cron.resume"]
    assert {a.actor for a in await AuditLog.all()} == {actor_of("operator")}
    again = await run(state.resume_job("reconcile"))
    assert "Resume refused" in again[0] and "already not paused" in again[0]


async def test_a_viewer_is_refused_every_action_and_nothing_changes(backend):
    await jobs()
    failed = await run_of("reconcile", R.FAILED, 20)
    await CronJob.filter(name="retention").update(paused=True)
    state = await cron_state("viewer")

    said = [*await run(state.retry_run(failed.id)), *await run(state.run_job("reconcile")),
            *await run(state.pause_job("reconcile")), *await run(state.resume_job("retention"))]

    assert len(said) == 4
    for item, title in zip(said, ("Retry refused", "Run refused", "Pause refused",
                                  "Resume refused"), strict=True):
        assert title in item and "may not do this" in item and '"error"' in item
    assert await CronRun.all().count() == 1 and await AuditLog.all().count() == 0
    assert not (await CronJob.get(name="reconcile")).paused
    assert (await CronJob.get(name="retention")).paused
    assert await backend.zcard(queue_name()) == 0
    assert state.busy == [] and recent(state)[failed.id]["can_retry"]


async def test_a_signed_out_session_is_refused(backend):
    await jobs()
    state = await rx.State().get_state(CronState)
    said = await run(state.run_job("reconcile"))
    assert "Run refused" in said[0] and "sign in again" in said[0]
    assert await CronRun.all().count() == 0


# -- a panel that cannot reload ---------------------------------------------------------------

async def test_a_reload_that_fails_shows_its_error_in_the_cron_panel_only(backend):
    await jobs()
    failed = await run_of("reconcile", R.FAILED, 20)
    dead = await make_dead_letter(await make_endpoint("http://127.0.0.1:9/hook"))
    state = await cron_state("operator")
    scheduler = await state.get_state(SchedulerState)
    dlq = await state.get_state(DeadLetterState)
    shown = list(state.recent)

    handler = state.pause_job("retention")
    await anext(handler)  # busy
    toast = await anext(handler)  # the action is done: its toast comes before the reload
    assert "retention paused" in str(toast)
    conn = connections.get("default")
    await conn.execute_script("ALTER TABLE cron_run RENAME TO cron_run_gone")
    try:
        assert await run(handler) == []  # the reload fails: no crash, no further toast
    finally:
        await conn.execute_script("ALTER TABLE cron_run_gone RENAME TO cron_run")

    assert set(scheduler.panel_errors) == {"cron"}
    assert "Could not load this panel" in scheduler.panel_errors["cron"]
    assert state.recent == shown and state.busy == []  # the last rows stay, button released
    assert [e["id"] for e in dlq.entries] == [dead.id]  # the other panels are untouched
    assert (await CronJob.get(name="retention")).paused  # the action itself stood

    await run(state.retry_run(failed.id))  # the table is back: the next reload clears it
    assert scheduler.panel_errors == {}
    assert upcoming(state)["retention"]["status"] == "paused"
