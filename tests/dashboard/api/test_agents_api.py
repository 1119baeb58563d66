"""`/v1/agents`, `/v1/agents/{id}/heartbeat` and `/v1/scaling-events` on the real mounted app:
roles, the contract's fields, validation that names the field and changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models.agents import Agent, ScalingEvent
from models.enums import AgentStatus
from tests.dashboard.api.conftest import auth


@pytest.fixture(autouse=True)
def window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("HEARTBEAT_ZOMBIE_AFTER", "15")


async def test_agents_list_has_the_contract_fields_zombies_first(client, tokens):
    now = datetime.now(UTC)
    await Agent.create(id="worker@a:1", host="a", pid=1, queue="q", version="0.1",
                       last_seen=now, running=3, jobs_done=7, succeeded=300, failed=2)
    await Agent.create(id="worker@b:2", host="b", pid=2, last_seen=now - timedelta(seconds=20))
    await Agent.create(id="worker@c:3", host="c", pid=3, last_seen=now - timedelta(hours=1),
                       status=AgentStatus.STOPPED)

    response = await client.get("/v1/agents", headers=auth(tokens["viewer"]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["zombie_after_s"], body["heartbeat_interval_s"]) == (15, 5)
    assert [(a["id"], a["status"]) for a in body["agents"]] == [
        ("worker@b:2", "zombie"), ("worker@a:1", "alive"), ("worker@c:3", "stopped")]
    alive = body["agents"][1]
    assert {"id", "pid", "host", "status", "last_seen"} <= set(alive)
    assert (alive["pid"], alive["host"], alive["queue"], alive["version"], alive["running"],
            alive["totals"]) == (1, "a", "q", "0.1", 3, {"jobs": 7, "succeeded": 300,
                                                         "failed": 2})
    only = await client.get("/v1/agents?status=zombie", headers=auth(tokens["viewer"]))
    assert [a["id"] for a in only.json()["agents"]] == ["worker@b:2"]


async def test_agents_list_needs_a_token_and_a_known_status(client, tokens):
    assert (await client.get("/v1/agents")).status_code == 401
    bad = await client.get("/v1/agents?status=dead", headers=auth(tokens["viewer"]))
    assert bad.status_code == 422 and "status: must be one of" in bad.json()["error"]["message"]


async def test_operator_heartbeat_creates_then_refreshes_an_external_agent(client, tokens):
    body = {"kind": "cron-box", "host": "db1", "pid": 4242, "queue": "backups",
            "version": "2.1", "running": 1, "totals": {"jobs": 5, "succeeded": 4, "failed": 1},
            "metadata": {"region": "eu"}}
    first = await client.post("/v1/agents/backup@db1/heartbeat", json=body,
                              headers=auth(tokens["operator"]))
    assert first.status_code == 200, first.text
    assert (first.json()["status"], first.json()["totals"]) == (
        "alive", {"jobs": 5, "succeeded": 4, "failed": 1})
    agent = await Agent.get(id="backup@db1")
    assert (agent.kind, agent.host, agent.pid, agent.metadata) == ("cron-box", "db1", 4242,
                                                                   {"region": "eu"})
    again = await client.post("/v1/agents/backup@db1/heartbeat",
                              headers=auth(tokens["admin"]))  # an empty body is a beat too
    assert again.status_code == 200 and (await Agent.get(id="backup@db1")).last_seen > \
        agent.last_seen
    bye = await client.post("/v1/agents/backup@db1/heartbeat", json={"status": "stopped"},
                            headers=auth(tokens["operator"]))
    assert bye.json()["status"] == "stopped"


async def test_viewer_cannot_beat(client, tokens):
    response = await client.post("/v1/agents/backup@db1/heartbeat", json={},
                                 headers=auth(tokens["viewer"]))
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert not await Agent.exists()


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/agents/bad%20id/heartbeat", {}, "id"),
    ("/v1/agents/ok/heartbeat", {"running": -1}, "running"),
    ("/v1/agents/ok/heartbeat", {"pid": 0}, "pid"),
    ("/v1/agents/ok/heartbeat", {"status": "zombie"}, "status"),
    ("/v1/agents/ok/heartbeat", {"colour": "red"}, "colour"),
    ("/v1/agents/ok/heartbeat", {"metadata": {"x": "y" * 5000}}, "metadata"),
])
async def test_bad_heartbeats_name_the_field_and_change_nothing(client, tokens, path, body,
                                                                field):
    response = await client.post(path, json=body, headers=auth(tokens["operator"]))
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["error"]["details"]["fields"]] == [field]
    assert not await Agent.exists()


async def test_scaling_events_newest_first(client, tokens):
    for direction in ("scale_up", "scale_down"):
        await ScalingEvent.create(direction=direction, reason=f"{direction} because",
                                  queue_depth=10, oldest_age_s=1.5, workers=2,
                                  suggested_workers=3, hooks={"webhook": {"ok": True}})
    response = await client.get("/v1/scaling-events?limit=1", headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    [event] = response.json()["events"]
    assert (event["direction"], event["suggested_workers"], event["hooks"]) == (
        "scale_down", 3, {"webhook": {"ok": True}})
    assert (await client.get("/v1/scaling-events")).status_code == 401
