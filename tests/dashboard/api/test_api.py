"""The /v1 REST API through ASGI, on the real database and Redis."""

from __future__ import annotations

import pytest

from models.audit import AuditLog
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.enums import DeadLetterStatus
from tests.dashboard.api.conftest import auth
from tests.factories import make_dead_letter, make_endpoint




async def test_health_needs_no_token(client):
    response = await client.get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


@pytest.mark.parametrize("header", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}])
async def test_missing_or_bad_token_is_401(client, header):
    response = await client.get("/v1/dlq", headers=header)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_publish_and_read_delivery(client, tokens, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    body = {"app_id": endpoint.app_id, "event_type": "order.created", "payload": {"id": 1},
            "idempotency_key": "k1"}
    first = await client.post("/v1/messages", json=body, headers=auth(tokens["operator"]))
    assert first.status_code == 202
    [delivery] = first.json()["deliveries"]
    assert delivery == {"id": delivery["id"], "endpoint_id": endpoint.id, "status": "queued"}
    again = await client.post("/v1/messages", json=body, headers=auth(tokens["operator"]))
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    shown = await client.get(f"/v1/deliveries/{delivery['id']}", headers=auth(tokens["viewer"]))
    assert shown.json()["status"] == "queued" and shown.json()["attempts"] == []


async def test_publish_rejects_bad_input_naming_the_field(client, tokens):
    response = await client.post("/v1/messages", json={"app_id": "x", "event_type": ""},
                                 headers=auth(tokens["admin"]))
    assert response.status_code == 422
    error = response.json()["error"]
    fields = {f["field"] for f in error["details"]["fields"]}
    assert {"app_id", "event_type", "payload"} <= fields
    assert not await Delivery.exists()


async def test_publish_invalid_json_is_400(client, tokens):
    response = await client.post("/v1/messages", content=b"{nope", headers=auth(tokens["admin"]))
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


async def test_dlq_list_pages_with_cursor(client, tokens, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    entries = [await make_dead_letter(endpoint, payload={"n": i}) for i in range(3)]
    page = await client.get("/v1/dlq?limit=2", headers=auth(tokens["viewer"]))
    assert [e["id"] for e in page.json()["entries"]] == [entries[2].id, entries[1].id]
    rest = await client.get(f"/v1/dlq?limit=2&cursor={page.json()['next_cursor']}",
                            headers=auth(tokens["viewer"]))
    assert [e["id"] for e in rest.json()["entries"]] == [entries[0].id]
    assert rest.json()["next_cursor"] is None
    assert rest.json()["entries"][0]["payload_preview"] == '{"n":0}'


async def test_dlq_list_rejects_unknown_status(client, tokens):
    response = await client.get("/v1/dlq?status=gone", headers=auth(tokens["viewer"]))
    assert response.status_code == 422 and "status" in response.json()["error"]["message"]


async def test_retry_via_rest(client, tokens, receiver):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    response = await client.post(f"/v1/dlq/{entry.id}/retry", headers=auth(tokens["operator"]))
    assert response.status_code == 202
    new_id = response.json()["delivery_id"]
    assert (await Delivery.get(id=new_id)).retry_of_id == entry.delivery_id
    [row] = await AuditLog.all()
    assert row.actor == "operator" and row.details["new_delivery_id"] == new_id


async def test_retry_conflicts_are_409_with_message(client, tokens, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    resolved = await make_dead_letter(endpoint, status=DeadLetterStatus.RESOLVED)
    active = await make_dead_letter(endpoint)
    headers = auth(tokens["admin"])

    not_active = await client.post(f"/v1/dlq/{resolved.id}/retry", headers=headers)
    assert not_active.status_code == 409
    assert not_active.json()["error"]["code"] == "not_retryable"

    assert (await client.post(f"/v1/dlq/{active.id}/retry", headers=headers)).status_code == 202
    in_flight = await client.post(f"/v1/dlq/{active.id}/retry", headers=headers)
    assert in_flight.status_code == 409
    assert in_flight.json()["error"]["code"] == "already_in_flight"

    orphan = await make_dead_letter(await make_endpoint(receiver.url("/other")))
    await _delete_endpoint(orphan)
    gone = await client.post(f"/v1/dlq/{orphan.id}/retry", headers=headers)
    assert gone.status_code == 409
    assert "original configuration could not be found" in gone.json()["error"]["message"]


async def _delete_endpoint(entry: DeadLetter) -> None:
    from models.endpoints import Endpoint

    await Endpoint.filter(id=entry.endpoint_id).delete()


async def test_retry_unknown_entry_is_404(client, tokens):
    response = await client.post("/v1/dlq/424242/retry", headers=auth(tokens["admin"]))
    assert response.status_code == 404


async def test_viewer_may_not_retry(client, tokens, receiver):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    response = await client.post(f"/v1/dlq/{entry.id}/retry", headers=auth(tokens["viewer"]))
    assert response.status_code == 403
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.ACTIVE
    assert not await AuditLog.exists()


@pytest.mark.parametrize("role", ["operator", "viewer"])
async def test_non_admin_may_not_change_configuration(client, tokens, role):
    response = await client.post("/v1/apps", json={"name": "shop"}, headers=auth(tokens[role]))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    ok = await client.post("/v1/apps", json={"name": "shop"}, headers=auth(tokens["admin"]))
    assert ok.status_code == 201


async def test_create_endpoint_returns_secret_and_validates(client, tokens):
    app = (await client.post("/v1/apps", json={"name": "a"}, headers=auth(tokens["admin"]))).json()
    bad = await client.post("/v1/endpoints", json={"app_id": app["id"], "url": "ftp://x",
                                                   "retry_config": {"max_retries": 99}},
                            headers=auth(tokens["admin"]))
    assert bad.status_code == 422
    assert {f["field"] for f in bad.json()["error"]["details"]["fields"]} == {
        "url", "retry_config.max_retries"}
    good = await client.post("/v1/endpoints", json={"app_id": app["id"], "url": "http://127.0.0.1:9/x"},
                             headers=auth(tokens["admin"]))
    assert good.status_code == 201 and good.json()["secret"].startswith("whsec_")


async def test_openapi_document_lists_routes_and_bodies(client):
    response = await client.get("/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/health", "/v1/messages", "/v1/dlq", "/v1/dlq/{id}/retry"} <= set(doc["paths"])
    publish = doc["paths"]["/v1/messages"]["post"]
    assert publish["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/MessageIn")
    assert "security" not in doc["paths"]["/v1/health"]["get"]
    assert doc["paths"]["/v1/dlq/{id}/retry"]["post"]["security"] == [{"bearer": []}]


async def test_batch_publish_gives_per_item_results(client, tokens, receiver, run_worker):
    endpoint = await make_endpoint(receiver.url("/ok"))
    messages = [{"app_id": endpoint.app_id, "event_type": "x", "payload": {"n": i},
                 "idempotency_key": f"b{i}"} for i in range(120)]
    messages.append({"app_id": 999_999, "event_type": "x", "payload": {}})
    response = await client.post("/v1/messages/batch", json={"messages": messages},
                                 headers=auth(tokens["operator"]))
    assert response.status_code == 207
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(121))
    assert all(r["ok"] for r in results[:120]) and not results[120]["ok"]
    assert results[120]["error"]["code"] == "not_found"
    assert len({r["message"]["deliveries"][0]["id"] for r in results[:120]}) == 120
    await run_worker()
    assert len(receiver.hits("/ok")) == 120
    again = await client.post("/v1/messages/batch", json={"messages": messages[:3]},
                              headers=auth(tokens["operator"]))
    assert [r["message"]["id"] for r in again.json()["results"]] == [
        r["message"]["id"] for r in results[:3]]  # idempotency keys replay
    assert await Delivery.all().count() == 120


async def test_batch_publish_validates_size_and_items(client, tokens):
    too_many = [{"app_id": 1, "event_type": "x", "payload": {}}] * 1001
    response = await client.post("/v1/messages/batch", json={"messages": too_many},
                                 headers=auth(tokens["operator"]))
    assert response.status_code == 422
    bad = await client.post("/v1/messages/batch", json={"messages": [{"app_id": 1}]},
                            headers=auth(tokens["operator"]))
    assert {f["field"] for f in bad.json()["error"]["details"]["fields"]} >= {
        "messages.0.event_type", "messages.0.payload"}
