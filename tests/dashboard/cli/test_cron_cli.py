"""`observatory cron list|runs|run|pause|resume|retry` against the real API in a subprocess
(fixtures of tests/dashboard/cli/conftest.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from jobs.cron import CronSpec, register_cron_jobs
from jobs.queue import queue_name
from models.audit import AuditLog
from models.cron import CronJob, CronRun


async def _noop(ctx):
    return None


@pytest.fixture
async def tidy(db):
    await register_cron_jobs([CronSpec("tidy", "*/5 * * * *", "tidy up", _noop)])


def _ago(minutes: int) -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes)


async def test_list_shows_jobs_and_json_is_the_servers(tidy, cli):
    await CronRun.create(job_id="tidy", scheduled_at=_ago(5), status="missed",
                         error="no worker alive at the tick")
    result = cli("cron", "list", token="viewer")
    assert result.exit_code == 0, result.output
    assert "tidy" in result.output and "*/5 * * * *" in result.output
    assert "missed" in result.output and "active" in result.output
    data = json.loads(cli("cron", "list", "--format", "json", token="viewer").output)
    assert [j["name"] for j in data["jobs"]] == ["tidy"]


async def test_runs_lists_a_jobs_runs_with_reasons(tidy, cli):
    await CronRun.create(job_id="tidy", scheduled_at=_ago(5), status="missed",
                         error="no worker alive at the tick")
    result = cli("cron", "runs", "tidy", token="viewer")
    assert result.exit_code == 0, result.output
    assert "no worker alive at the tick" in result.output


async def test_run_pause_resume_and_retry(tidy, cli, redis):
    run = cli("cron", "run", "tidy", token="operator")
    assert run.exit_code == 0 and "queued" in run.output, run.output
    assert [j.function for j in await redis.queued_jobs(queue_name=queue_name())] == [
        "run_cron_job"]

    assert cli("cron", "pause", "tidy", token="operator").exit_code == 0
    assert (await CronJob.get(name="tidy")).paused
    again = cli("cron", "pause", "tidy", token="operator")
    assert again.exit_code == 1 and "Error: cron job 'tidy' is already paused" in again.output
    assert cli("cron", "resume", "tidy", token="operator").exit_code == 0
    assert not (await CronJob.get(name="tidy")).paused

    failed = await CronRun.create(job_id="tidy", scheduled_at=_ago(10), status="failed")
    retried = cli("cron", "retry", str(failed.id), token="operator")
    assert retried.exit_code == 0 and f"Run {failed.id} retried as run" in retried.output
    assert await CronRun.filter(retry_of_id=failed.id).count() == 1
    actions = set(await AuditLog.all().values_list("action", flat=True))
    assert actions == {"cron.run", "cron.pause", "cron.resume", "cron.retry"}


async def test_refusals_exit_1_with_the_message(tidy, cli):
    viewer = cli("cron", "pause", "tidy", token="viewer")
    assert viewer.exit_code == 1 and "Error:" in viewer.output
    assert "Role 'viewer' may not do this; it needs 'operator'" in viewer.output
    unknown = cli("cron", "run", "nope", token="operator")
    assert unknown.exit_code == 1 and "cron job 'nope' does not exist" in unknown.output
    assert not (await CronJob.get(name="tidy")).paused
