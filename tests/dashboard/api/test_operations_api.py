"""`POST /v1/dlq/retry-all` and `/v1/operations…` over the real mounted app."""

from __future__ import annotations

import pytest

from jobs.worker import BulkWorkerSettings
from models.audit import AuditLog
from models.bulk import BulkOperation
from models.dead_letters import DeadLetter
from models.enums import DeadLetterStatus
from tests.dashboard.api.conftest import auth
from tests.factories import make_dead_letter, make_endpoint

OPERATION_FIELDS = {"id", "kind", "state", "total", "completed", "succeeded", "failed",
                    "cancelled", "skipped", "scope", "reason", "actor", "started_at",
                    "finished_at", "eta_s", "halted_reason", "canary"}


pytestmark = pytest.mark.usefixtures("unpaced")  # see tests/conftest.py


async def _dlq(receiver, n: int) -> tuple[int, list[DeadLetter]]:
    endpoint = await make_endpoint(receiver.url("/ok"))
    return endpoint.id, [await make_dead_letter(endpoint) for _ in range(n)]


async def test_dry_run_counts_and_the_snapshot_binds_the_retry(client, tokens, receiver,
                                                                run_worker):
    endpoint_id, entries = await _dlq(receiver, 4)
    op_token = auth(tokens["operator"])

    dry = await client.post("/v1/dlq/retry-all", headers=op_token, json={
        "scope": {"endpoint_id": endpoint_id}, "dry_run": True})
    assert dry.status_code == 200
    assert dry.json() == {"total": 4, "snapshot": entries[-1].id}
    assert await BulkOperation.all().count() == 0 and await AuditLog.all().count() == 0

    endpoint = await make_endpoint(receiver.url("/other"))
    await make_dead_letter(endpoint)  # fails after the preview: not swept in
    started = await client.post("/v1/dlq/retry-all", headers=op_token, json={
        "scope": {}, "snapshot": dry.json()["snapshot"], "reason": "fixed"})
    assert started.status_code == 202
    body = started.json()
    assert body["total"] == 4 and body["snapshot"] == entries[-1].id

    await run_worker(functions=BulkWorkerSettings.functions,
                     queue_name=BulkWorkerSettings.queue_name)
    got = await client.get(f"/v1/operations/{body['operation_id']}",
                           headers=auth(tokens["viewer"]))
    assert got.status_code == 200
    op = got.json()
    assert set(op) == OPERATION_FIELDS
    assert (op["state"], op["kind"], op["actor"], op["reason"]) == (
        "completed", "retry", "operator", "fixed")
    assert (op["total"], op["completed"], op["succeeded"], op["failed"], op["cancelled"],
            op["skipped"]) == (4, 4, 4, 0, 0, 0)
    assert op["eta_s"] == 0.0 and op["finished_at"] and op["scope"]["max_id"] == entries[-1].id
    assert await DeadLetter.filter(status=DeadLetterStatus.ACTIVE).count() == 1

    listed = await client.get("/v1/operations", headers=auth(tokens["viewer"]))
    assert [o["id"] for o in listed.json()["operations"]] == [body["operation_id"]]


async def test_nothing_to_retry_is_a_409(client, tokens):
    answer = await client.post("/v1/dlq/retry-all", headers=auth(tokens["operator"]),
                               json={"scope": {"endpoint_id": 99}})
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "nothing_to_retry"
    assert "nothing to retry" in answer.json()["error"]["message"]


async def test_bad_bodies_are_422_naming_the_field(client, tokens, receiver, monkeypatch):
    await _dlq(receiver, 2)
    headers = auth(tokens["operator"])
    cases = [
        ({"scope": {"status": ["archived"]}}, "scope.status"),
        ({"scope": {"colour": "red"}}, "scope.colour"),
        ({"canary": {"count": 0, "max_failure_pct": 10}}, "canary.count"),
        ({"snapshot": 0}, "snapshot"),
    ]
    for body, field in cases:
        answer = await client.post("/v1/dlq/retry-all", headers=headers, json=body)
        assert answer.status_code == 422, body
        assert field in answer.json()["error"]["message"], answer.json()

    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "true")
    answer = await client.post("/v1/dlq/retry-all", headers=headers, json={"scope": {}})
    assert answer.status_code == 422
    assert answer.json()["error"]["details"]["fields"][0]["field"] == "reason"
    assert await BulkOperation.all().count() == 0


async def test_cancel_pause_resume_and_illegal_transitions(client, tokens, receiver, redis):
    await _dlq(receiver, 3)
    headers = auth(tokens["operator"])
    op_id = (await client.post("/v1/dlq/retry-all", headers=headers,
                               json={})).json()["operation_id"]

    paused = await client.post(f"/v1/operations/{op_id}/pause", headers=headers,
                               json={"reason": "receiver maintenance"})
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    again = await client.post(f"/v1/operations/{op_id}/pause", headers=headers)
    assert again.status_code == 409 and "is paused" in again.json()["error"]["message"]
    resumed = await client.post(f"/v1/operations/{op_id}/resume", headers=headers)
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    cancelled = await client.post(f"/v1/operations/{op_id}/cancel", headers=headers,
                                  json={"reason": "wrong scope"})
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"  # nothing was handed out yet
    assert cancelled.json()["cancelled"] == 3
    late = await client.post(f"/v1/operations/{op_id}/resume", headers=headers)
    assert late.status_code == 409
    assert (await client.post("/v1/operations/999/cancel", headers=headers)).status_code == 404

    audits = await AuditLog.all().order_by("id")
    assert [(a.action, a.details.get("reason")) for a in audits] == [
        ("dlq.retry_all", None), ("bulk.pause", "receiver maintenance"), ("bulk.resume", None),
        ("bulk.cancel", "wrong scope")]
    assert await DeadLetter.filter(status=DeadLetterStatus.ACTIVE).count() == 3


async def test_role_matrix(client, tokens, receiver):
    await _dlq(receiver, 2)
    op_id = (await client.post("/v1/dlq/retry-all", headers=auth(tokens["admin"]),
                               json={})).json()["operation_id"]
    writes = [("/v1/dlq/retry-all", {}), *((f"/v1/operations/{op_id}/{a}", {})
                                            for a in ("pause", "resume", "cancel"))]

    for path, body in writes:
        answer = await client.post(path, headers=auth(tokens["viewer"]), json=body)
        assert answer.status_code == 403, path
        assert (await client.post(path, json=body)).status_code == 401
    assert (await BulkOperation.get(id=op_id)).state == "running"
    assert await BulkOperation.all().count() == 1 and await AuditLog.all().count() == 1

    for path in ("/v1/operations", f"/v1/operations/{op_id}"):
        assert (await client.get(path, headers=auth(tokens["viewer"]))).status_code == 200
    pause = await client.post(f"/v1/operations/{op_id}/pause", headers=auth(tokens["operator"]))
    assert pause.status_code == 200


async def test_openapi_documents_the_bulk_routes(client):
    doc = (await client.get("/v1/openapi.json")).json()
    assert "requestBody" in doc["paths"]["/v1/dlq/retry-all"]["post"]
    for action in ("cancel", "pause", "resume"):
        assert f"/v1/operations/{{id}}/{action}" in doc["paths"]
    assert "get" in doc["paths"]["/v1/operations/{id}"]
