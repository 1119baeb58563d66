"""`POST /v1/endpoints/{id}/resync`, `/v1/dlq/archive-all` and `/v1/dlq/delete-all` over the
real mounted app: dry runs, 202 starts, refusals and the role matrix."""

from __future__ import annotations

import pytest

from models.audit import AuditLog
from models.bulk import BulkOperation
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.endpoints import Endpoint
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.dashboard.api.conftest import auth
from tests.factories import make_dead_letter, make_endpoint


pytestmark = pytest.mark.usefixtures("unpaced")  # see tests/conftest.py


async def _received(endpoint: Endpoint, n: int) -> list[Message]:
    """`n` messages the endpoint received."""
    messages = []
    for _ in range(n):
        message = await Message.create(app_id=endpoint.app_id, event_type="order.paid",  # type: ignore[attr-defined]
                                       payload={})
        await Delivery.create(message=message, endpoint=endpoint,
                              status=DeliveryStatus.SUCCEEDED, attempts=1)
        messages.append(message)
    return messages


async def _snapshot() -> tuple[int, int, list[tuple[int, str]]]:
    """What a refused call must leave unchanged: operations, audit rows, DLQ statuses."""
    return (await BulkOperation.all().count(), await AuditLog.all().count(),
            list(await DeadLetter.all().order_by("id").values_list("id", "status")))


async def test_resync_dry_run_then_start_redelivers(client, tokens, receiver, run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    messages = await _received(endpoint, 3)
    admin = auth(tokens["admin"])
    path = f"/v1/endpoints/{endpoint.id}/resync"

    dry = await client.post(path, headers=admin, json={"dry_run": True})
    assert dry.status_code == 200 and dry.json() == {"total": 3, "snapshot": messages[-1].id}
    assert not await BulkOperation.exists()
    await _received(endpoint, 1)  # after the confirmation: not re-sent
    started = await client.post(path, headers=admin, json={
        "snapshot": dry.json()["snapshot"], "reason": "receiver restored from backup"})
    assert started.status_code == 202
    body = started.json()
    assert body["total"] == 3 and set(body) == {"operation_id", "total", "snapshot"}
    await run_bulk()

    op = (await client.get(f"/v1/operations/{body['operation_id']}",
                           headers=auth(tokens["viewer"]))).json()
    assert (op["kind"], op["state"], op["succeeded"], op["actor"]) == (
        "resync", "completed", 3, "admin")
    assert op["reason"] == "receiver restored from backup"
    assert sorted(r.headers["webhook-id"] for r in receiver.hits("/ok")) == sorted(
        f"msg_{m.id}" for m in messages)


async def test_resync_since_narrows_and_bad_input_is_named(client, tokens, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    await _received(endpoint, 2)
    admin = auth(tokens["admin"])
    path = f"/v1/endpoints/{endpoint.id}/resync"

    future = await client.post(path, headers=admin,
                               json={"since": "2999-01-01T00:00:00Z", "dry_run": True})
    assert future.json() == {"total": 0, "snapshot": None}
    nothing = await client.post(path, headers=admin, json={"since": "2999-01-01"})
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "nothing_to_resync"
    for body, field in (({"since": "yesterday"}, "since"), ({"colour": 1}, "colour"),
                        ({"snapshot": 0}, "snapshot")):
        answer = await client.post(path, headers=admin, json=body)
        assert answer.status_code == 422 and field in answer.json()["error"]["message"], body
    assert (await client.post("/v1/endpoints/999/resync", headers=admin,
                              json={})).status_code == 404
    assert not await BulkOperation.exists()


async def test_resync_of_a_disabled_endpoint_is_a_clear_409(client, tokens, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"), enabled=False,
                                   disabled_reason="receiver answered 410 Gone")
    await _received(endpoint, 2)

    for body in ({}, {"dry_run": True}):
        answer = await client.post(f"/v1/endpoints/{endpoint.id}/resync",
                                   headers=auth(tokens["admin"]), json=body)
        assert answer.status_code == 409
        error = answer.json()["error"]
        assert error["code"] == "endpoint_disabled"
        assert f"endpoint {endpoint.id} is disabled" in error["message"]
        assert "enable it" in error["message"]
    assert not await BulkOperation.exists() and not await AuditLog.exists()


async def test_archive_all_and_delete_all_act_on_the_confirmed_scope(client, tokens, receiver,
                                                                     run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    active = [await make_dead_letter(endpoint) for _ in range(3)]
    retrying = await make_dead_letter(endpoint, status=DeadLetterStatus.RETRYING)
    operator, admin = auth(tokens["operator"]), auth(tokens["admin"])
    scope = {"endpoint_id": endpoint.id}

    dry = await client.post("/v1/dlq/archive-all", headers=operator,
                            json={"scope": scope, "dry_run": True})
    assert dry.status_code == 200 and dry.json() == {"total": 3, "snapshot": active[-1].id}
    late = await make_dead_letter(endpoint)  # after the confirmation
    started = await client.post("/v1/dlq/archive-all", headers=operator, json={
        "scope": scope, "snapshot": dry.json()["snapshot"], "reason": "known outage"})
    assert started.status_code == 202 and started.json()["total"] == 3
    await run_bulk()
    statuses = dict(await DeadLetter.all().values_list("id", "status"))
    assert [statuses[e.id] for e in active] == [DeadLetterStatus.ARCHIVED] * 3
    assert (statuses[retrying.id], statuses[late.id]) == (DeadLetterStatus.RETRYING,
                                                          DeadLetterStatus.ACTIVE)

    deleted = await client.post("/v1/dlq/delete-all", headers=admin,
                                json={"scope": {"status": ["archived"]}})
    assert deleted.status_code == 202 and deleted.json()["total"] == 3
    await run_bulk()
    assert sorted(await DeadLetter.all().values_list("id", flat=True)) == sorted(
        [retrying.id, late.id])
    audits = [(a.action, a.actor, a.details["total"]) for a in await AuditLog.all().order_by("id")]
    assert audits == [("dlq.archive_all", "operator", 3), ("dlq.delete_all", "admin", 3)]
    ops = (await client.get("/v1/operations", headers=auth(tokens["viewer"]))).json()
    assert [(o["kind"], o["state"]) for o in ops["operations"]] == [
        ("delete", "completed"), ("archive", "completed")]


async def test_bad_scopes_reasons_and_empty_scopes_are_refused(client, tokens, receiver,
                                                               monkeypatch):
    endpoint = await make_endpoint(receiver.url("/ok"))
    await make_dead_letter(endpoint)
    admin = auth(tokens["admin"])
    before = await _snapshot()
    cases = [("/v1/dlq/archive-all", {"scope": {"status": ["archived"]}}, 422, "scope.status"),
             ("/v1/dlq/delete-all", {"scope": {"status": ["retrying"]}}, 422, "scope.status"),
             ("/v1/dlq/delete-all", {"scope": {"colour": "red"}}, 422, "scope.colour"),
             ("/v1/dlq/archive-all", {"scope": {"endpoint_id": 999}}, 409, "nothing to archive"),
             ("/v1/dlq/delete-all", {"scope": {"event_type": "x"}}, 409, "nothing to delete")]
    for path, body, status, text in cases:
        answer = await client.post(path, headers=admin, json=body)
        assert answer.status_code == status, (path, body, answer.json())
        assert text in answer.json()["error"]["message"], answer.json()

    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "true")
    for path in ("/v1/dlq/archive-all", "/v1/dlq/delete-all",
                 f"/v1/endpoints/{endpoint.id}/resync"):
        answer = await client.post(path, headers=admin, json={"reason": " "})
        assert answer.status_code == 422, path
        assert answer.json()["error"]["details"]["fields"][0]["field"] == "reason"
    assert await _snapshot() == before


async def test_role_matrix_refuses_and_changes_nothing(client, tokens, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    await _received(endpoint, 1)
    await make_dead_letter(endpoint)
    resync = f"/v1/endpoints/{endpoint.id}/resync"
    forbidden = {"viewer": ["/v1/dlq/archive-all", "/v1/dlq/delete-all", resync],
                 "operator": ["/v1/dlq/delete-all", resync]}
    before = await _snapshot()

    for role, paths in forbidden.items():
        for path in paths:
            for body in ({}, {"dry_run": True}):
                answer = await client.post(path, headers=auth(tokens[role]), json=body)
                assert answer.status_code == 403, (role, path)
                assert answer.json()["error"]["code"] == "forbidden"
    for path in forbidden["viewer"]:
        assert (await client.post(path, json={})).status_code == 401
    assert await _snapshot() == before
    assert len(await Delivery.all()) == 2  # no re-sync delivery was made

    # the entry's failed message was received too: two messages to re-sync
    allowed = {"operator": ("/v1/dlq/archive-all", 1), "admin": (resync, 2)}
    for role, (path, total) in allowed.items():
        answer = await client.post(path, headers=auth(tokens[role]), json={"dry_run": True})
        assert answer.status_code == 200 and answer.json()["total"] == total, (role, path)


async def test_openapi_documents_the_new_routes(client):
    doc = (await client.get("/v1/openapi.json")).json()
    for path in ("/v1/dlq/archive-all", "/v1/dlq/delete-all", "/v1/endpoints/{id}/resync"):
        assert "requestBody" in doc["paths"][path]["post"], path
