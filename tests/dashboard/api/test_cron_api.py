"""`/v1/cron…` over the real mounted app: listing, runs, run now, pause/resume, retry, roles,
audit, and the cron metrics on /metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs.cron import CronSpec, register_cron_jobs
from jobs.cron_watch import record_missed
from jobs.metrics import note_cron_drift
from jobs.queue import queue_name
from models.audit import AuditLog
from models.cron import CronJob, CronRun
from tests.dashboard.api.conftest import auth


async def _noop(ctx):
    return None


@pytest.fixture
async def jobs(db):
    await register_cron_jobs([CronSpec("tidy", "*/5 * * * *", "tidy up", _noop),
                              CronSpec("fast", "* * * * * */10", "every 10 s", _noop)])


def _ago(minutes: int) -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes)


async def test_list_shows_schedule_state_last_run_and_next_runs(client, tokens, jobs):
    await CronRun.create(job_id="tidy", scheduled_at=_ago(5), status="failed", error="boom",
                         started_at=_ago(5) + timedelta(seconds=2), drift_ms=2000)
    response = await client.get("/v1/cron", headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    jobs_ = {j["name"]: j for j in response.json()["jobs"]}
    tidy = jobs_["tidy"]
    assert tidy["expression"] == "*/5 * * * *" and tidy["paused"] is False
    assert tidy["last_run"]["status"] == "failed" and tidy["last_run"]["drift_s"] == 2.0
    assert tidy["failed_24h"] == 1 and len(tidy["next_runs"]) == 50
    assert jobs_["fast"]["grace_s"] == 5 and jobs_["fast"]["last_run"] is None


async def test_runs_page_filters_and_follows_the_cursor(client, tokens, jobs):
    for n in range(5):
        await CronRun.create(job_id="tidy", scheduled_at=_ago(n * 5),
                             status="missed" if n % 2 else "succeeded")
    headers = auth(tokens["viewer"])
    page = (await client.get("/v1/cron/tidy/runs?limit=2", headers=headers)).json()
    assert len(page["runs"]) == 2 and page["next_cursor"]
    rest = (await client.get(f"/v1/cron/tidy/runs?limit=10&cursor={page['next_cursor']}",
                             headers=headers)).json()
    assert len(rest["runs"]) == 3 and rest["next_cursor"] is None
    missed = (await client.get("/v1/cron/tidy/runs?status=missed", headers=headers)).json()
    assert [r["status"] for r in missed["runs"]] == ["missed", "missed"]
    bad = await client.get("/v1/cron/tidy/runs?status=lost", headers=headers)
    assert bad.status_code == 422 and "status: must be one of" in bad.json()["error"]["message"]
    assert (await client.get("/v1/cron/nope/runs", headers=headers)).status_code == 404


async def test_run_now_creates_a_pending_run_and_enqueues_it(client, tokens, jobs, redis):
    response = await client.post("/v1/cron/tidy/run", headers=auth(tokens["operator"]))
    assert response.status_code == 202
    run = response.json()
    assert run["status"] == "pending" and run["trigger"] == "manual"
    assert run["actor"] == "operator"
    [job] = await redis.queued_jobs(queue_name=queue_name())
    assert (job.function, job.args) == ("run_cron_job", ("tidy", run["id"]))
    assert await AuditLog.filter(action="cron.run", target_id="tidy").count() == 1


async def test_pause_and_resume_round_trip_with_conflicts(client, tokens, jobs):
    headers = auth(tokens["operator"])
    paused = await client.post("/v1/cron/tidy/pause", headers=headers)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    again = await client.post("/v1/cron/tidy/pause", headers=headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    resumed = await client.post("/v1/cron/tidy/resume", headers=headers)
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert (await CronJob.get(name="tidy")).paused is False
    assert await AuditLog.filter(action__in=["cron.pause", "cron.resume"]).count() == 2


async def test_retry_only_failed_or_missed_runs(client, tokens, jobs):
    headers = auth(tokens["operator"])
    failed = await CronRun.create(job_id="tidy", scheduled_at=_ago(5), status="failed")
    done = await CronRun.create(job_id="tidy", scheduled_at=_ago(10), status="succeeded")
    response = await client.post(f"/v1/cron/runs/{failed.id}/retry", headers=headers)
    assert response.status_code == 202 and response.json()["retry_of"] == failed.id
    twice = await client.post(f"/v1/cron/runs/{failed.id}/retry", headers=headers)
    assert twice.status_code == 409 and "already retried" in twice.json()["error"]["message"]
    refused = await client.post(f"/v1/cron/runs/{done.id}/retry", headers=headers)
    assert refused.status_code == 409
    assert "only a failed or missed run" in refused.json()["error"]["message"]
    assert (await client.post("/v1/cron/runs/99999/retry", headers=headers)).status_code == 404
    assert await CronRun.filter(retry_of_id=failed.id).count() == 1


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/cron/tidy/run"), ("POST", "/v1/cron/tidy/pause"),
    ("POST", "/v1/cron/tidy/resume"), ("POST", "/v1/cron/runs/{run}/retry")])
async def test_a_viewer_may_look_but_not_act(client, tokens, jobs, method, path):
    run = await CronRun.create(job_id="tidy", scheduled_at=_ago(5), status="failed")
    await CronJob.filter(name="tidy").update(paused=True)  # so resume would act
    url = path.format(run=run.id)
    response = await client.request(method, url, headers=auth(tokens["viewer"]))
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert (await client.request(method, url)).status_code == 401
    assert await CronRun.all().count() == 1 and await AuditLog.all().count() == 0
    assert (await CronJob.get(name="tidy")).paused is True


async def test_unknown_job_is_404_everywhere(client, tokens, jobs):
    headers = auth(tokens["operator"])
    for path in ("/v1/cron/nope/run", "/v1/cron/nope/pause", "/v1/cron/nope/resume"):
        response = await client.post(path, headers=headers)
        assert response.status_code == 404, path
        assert "cron job 'nope' does not exist" in response.json()["error"]["message"]


async def test_metrics_expose_missed_ticks_and_drift(client, jobs, redis):
    job = await CronJob.get(name="tidy")
    await record_missed(job, _ago(5), "no worker alive at the tick", redis)
    await record_missed(job, _ago(10), "no worker alive at the tick", redis)
    await note_cron_drift(redis, "tidy", 1.25)
    text = (await client.get("/metrics")).text
    assert 'observatory_cron_missed_total{job="tidy"} 2.0' in text
    assert 'observatory_cron_drift_seconds{job="tidy"} 1.25' in text
