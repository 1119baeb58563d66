"""`/v1/dlq…` and `/v1/audit` over ASGI on the real database and Redis: codes, roles, bodies."""

from __future__ import annotations

import csv
import io
import json
import itertools
import re

import pytest

from models.audit import AuditLog
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.endpoints import Application
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.dashboard.api.conftest import auth
from tests.factories import make_dead_letter, make_endpoint

S = DeadLetterStatus
_n = itertools.count()


async def entry(status: DeadLetterStatus = S.ACTIVE, **kwargs) -> DeadLetter:
    """An entry on an endpoint (and application) of its own."""
    endpoint = await make_endpoint(f"http://127.0.0.1:9/hook{next(_n)}")
    return await make_dead_letter(endpoint, status=status, **kwargs)


async def typed_entry(app: Application, event_type: str, error: str) -> DeadLetter:
    endpoint = await make_endpoint(f"http://127.0.0.1:9/{app.name}", app)
    message = await Message.create(app_id=app.id, event_type=event_type, payload={"e": error})
    delivery = await Delivery.create(message=message, endpoint=endpoint, last_error=error,
                                     status=DeliveryStatus.FAILED)
    return await DeadLetter.create(delivery=delivery, message=message, endpoint=endpoint,
                                   endpoint_url=endpoint.url, failure_reason="final_status")


def field_names(response) -> set[str]:
    assert response.status_code == 422, response.text
    return {f["field"] for f in response.json()["error"]["details"]["fields"]}


# -- reads --------------------------------------------------------------------------------------

async def test_list_filters_and_cursor(client, tokens):
    shop, crm = await Application.create(name="shop"), await Application.create(name="crm")
    a = await typed_entry(shop, "order.created", "HTTP 410 gone")
    b = await typed_entry(shop, "order.paid", "connection refused")
    c = await typed_entry(crm, "order.paid", "HTTP 500")
    viewer = auth(tokens["viewer"])

    async def ids(query: str) -> list[int]:
        response = await client.get(f"/v1/dlq?{query}", headers=viewer)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["entries"]]

    assert await ids("") == [c.id, b.id, a.id]
    assert await ids("event_type=order.paid") == [c.id, b.id]
    assert await ids(f"app_id={shop.id}") == [b.id, a.id]
    assert await ids(f"endpoint_id={c.endpoint_id}") == [c.id]
    assert await ids("q=REFUSED") == [b.id]
    assert await ids("status=resolved") == []
    first = (await client.get("/v1/dlq?limit=1&event_type=order.paid", headers=viewer)).json()
    assert [e["id"] for e in first["entries"]] == [c.id] and first["next_cursor"] == c.id
    assert await ids(f"limit=1&event_type=order.paid&cursor={first['next_cursor']}") == [b.id]


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=201", "limit"), ("cursor=x", "cursor"),
    ("since=yesterday", "since"), ("endpoint_id=-1", "endpoint_id"), ("status=gone", "status.0"),
    ("colour=red", "colour"),
])
async def test_list_bad_query_is_422_naming_the_field(client, tokens, query, field):
    response = await client.get(f"/v1/dlq?{query}", headers=auth(tokens["viewer"]))
    assert field in field_names(response)


async def test_list_since_after_until_is_422(client, tokens):
    response = await client.get("/v1/dlq?since=2025-02-01&until=2025-01-01",
                                headers=auth(tokens["viewer"]))
    assert response.status_code == 422 and "until" in response.json()["error"]["message"]


async def test_show_entry_with_detail(client, tokens):
    e = await entry(payload={"order": 9})
    response = await client.get(f"/v1/dlq/{e.id}", headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    body = response.json()
    assert body["payload"] == {"order": 9} and body["error_history"] == e.error_history
    assert body["original_delivery"]["id"] == e.delivery_id
    assert body["last_retry_delivery"] is None
    missing = await client.get("/v1/dlq/4242", headers=auth(tokens["viewer"]))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_stats(client, tokens):
    shop = await Application.create(name="shop")
    await typed_entry(shop, "order.created", "x")
    await typed_entry(shop, "order.created", "y")
    await entry(S.ARCHIVED)
    response = await client.get("/v1/dlq/stats", headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    stats = response.json()
    assert stats["total"] == 3
    assert stats["by_status"] == {"active": 2, "retrying": 0, "resolved": 0, "archived": 1}
    assert stats["by_event_type"] == {"order.created": 3}
    assert [e["count"] for e in stats["by_endpoint"]] == [1, 1, 1]
    assert stats["oldest"] <= stats["newest"]
    narrowed = await client.get(f"/v1/dlq/stats?app_id={shop.id}&status=active",
                                headers=auth(tokens["viewer"]))
    assert narrowed.json()["total"] == 2
    bad = await client.get("/v1/dlq/stats?until=never", headers=auth(tokens["viewer"]))
    assert "until" in field_names(bad)


async def test_export_csv_parses_back(client, tokens):
    first = await entry(payload={"text": 'a "quoted", multi\nline'})
    second = await entry()
    await entry(S.RESOLVED)
    response = await client.get("/v1/dlq/export?format=csv", headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="dlq-export-\d{8}T\d{6}Z\.csv"',
                        response.headers["content-disposition"])
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["id"]) for r in rows] == [first.id, second.id]  # oldest first; default statuses
    assert json.loads(rows[0]["payload"]) == {"text": 'a "quoted", multi\nline'}
    assert rows[0]["status"] == "active" and rows[0]["event_type"] == "order.created"
    assert rows[0]["resolved_at"] == ""  # null → empty cell
    assert list(rows[0])[:3] == ["id", "status", "event_type"]


async def test_export_jsonl_with_filters(client, tokens):
    shop = await Application.create(name="shop")
    wanted = await typed_entry(shop, "order.paid", "boom")
    await entry()
    response = await client.get(f"/v1/dlq/export?format=jsonl&app_id={shop.id}",
                                headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["content-disposition"].endswith('.jsonl"')
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [(r["id"], r["last_error"], r["payload"]) for r in lines] == [
        (wanted.id, "boom", {"e": "boom"})]


async def test_export_empty_csv_has_only_the_header(client, tokens):
    response = await client.get("/v1/dlq/export", headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    assert response.text.strip().split(",")[:2] == ["id", "status"]
    assert len(response.text.strip().splitlines()) == 1


@pytest.mark.parametrize("query", ["format=xml", "format=csv&status=nope"])
async def test_export_bad_query_is_422(client, tokens, query):
    response = await client.get(f"/v1/dlq/export?{query}", headers=auth(tokens["viewer"]))
    assert field_names(response) & {"format", "status.0"}


async def test_static_routes_do_not_clash_with_ids(client, tokens):
    for path in ("/v1/dlq/stats", "/v1/dlq/export"):
        assert (await client.get(path, headers=auth(tokens["viewer"]))).status_code == 200


# -- changes ------------------------------------------------------------------------------------

async def test_put_status(client, tokens):
    e = await entry()
    response = await client.put(f"/v1/dlq/{e.id}/status", json={"status": "resolved",
                                                              "reason": "fixed upstream"},
                                headers=auth(tokens["operator"]))
    assert response.status_code == 200
    assert response.json()["status"] == "resolved" and response.json()["id"] == e.id
    [audit] = await AuditLog.all()
    assert (audit.actor, audit.action, audit.details["reason"]) == (
        "operator", "dlq.status", "fixed upstream")


async def test_put_status_illegal_is_409_naming_the_statuses(client, tokens):
    e = await entry(S.RESOLVED)
    response = await client.put(f"/v1/dlq/{e.id}/status", json={"status": "active"},
                                headers=auth(tokens["operator"]))
    assert response.status_code == 409
    error = response.json()["error"]
    assert "is resolved" in error["message"] and "cannot become active" in error["message"]
    assert error["details"]["allowed"] == ["archived"]
    assert not await AuditLog.exists()


@pytest.mark.parametrize(("body", "field"), [
    ({}, "status"), ({"status": "done"}, "status"), ({"status": "active", "why": 1}, "why"),
    ({"status": "archived", "reason": "x" * 501}, "reason"),
])
async def test_put_status_bad_body_is_422(client, tokens, body, field):
    e = await entry()
    response = await client.put(f"/v1/dlq/{e.id}/status", json=body,
                                headers=auth(tokens["operator"]))
    assert field in field_names(response)
    assert (await DeadLetter.get(id=e.id)).status == S.ACTIVE


async def test_archive_with_and_without_body(client, tokens):
    e1, e2 = await entry(), await entry(S.RESOLVED)
    plain = await client.post(f"/v1/dlq/{e1.id}/archive", headers=auth(tokens["operator"]))
    assert plain.status_code == 200 and plain.json()["status"] == "archived"
    reasoned = await client.post(f"/v1/dlq/{e2.id}/archive", json={"reason": "noise"},
                                 headers=auth(tokens["operator"]))
    assert reasoned.status_code == 200
    reasons = [a.details["reason"] for a in await AuditLog.filter(action="dlq.archive")
               .order_by("id")]
    assert reasons == [None, "noise"]


async def test_delete_with_reason_in_body_or_query(client, tokens):
    e1, e2 = await entry(), await entry()
    by_body = await client.request("DELETE", f"/v1/dlq/{e1.id}", json={"reason": "spam"},
                                   headers=auth(tokens["admin"]))
    assert by_body.status_code == 200 and by_body.json() == {"deleted": e1.id}
    by_query = await client.delete(f"/v1/dlq/{e2.id}?reason=test", headers=auth(tokens["admin"]))
    assert by_query.json() == {"deleted": e2.id}
    assert not await DeadLetter.exists()
    reasons = {a.target_id: a.details["reason"] for a in await AuditLog.filter(action="dlq.delete")}
    assert reasons == {str(e1.id): "spam", str(e2.id): "test"}
    again = await client.delete(f"/v1/dlq/{e1.id}", headers=auth(tokens["admin"]))
    assert again.status_code == 404


async def test_delete_while_retrying_is_409(client, tokens):
    e = await entry()
    assert (await client.post(f"/v1/dlq/{e.id}/retry",
                              headers=auth(tokens["admin"]))).status_code == 202
    response = await client.delete(f"/v1/dlq/{e.id}", headers=auth(tokens["admin"]))
    assert response.status_code == 409 and "retrying" in response.json()["error"]["message"]
    assert await DeadLetter.exists(id=e.id)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/dlq/{id}/archive", None), ("DELETE", "/v1/dlq/{id}", None),
    ("PUT", "/v1/dlq/{id}/status", {"status": "archived"}),
])
async def test_required_reason_is_422_naming_reason(client, tokens, monkeypatch, method, path,
                                                    body):
    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "1")
    e = await entry()
    response = await client.request(method, path.format(id=e.id), json=body,
                                    headers=auth(tokens["admin"]))
    assert "reason" in field_names(response)
    assert (await DeadLetter.get(id=e.id)).status == S.ACTIVE
    assert not await AuditLog.exists()
    ok = await client.request(method, path.format(id=e.id),
                              json={**(body or {}), "reason": "cleanup"},
                              headers=auth(tokens["admin"]))
    assert ok.status_code == 200


# -- roles --------------------------------------------------------------------------------------

MUTATIONS = [  # method, path, body, the least role allowed
    ("POST", "/v1/dlq/{id}/retry", None, "operator"),
    ("PUT", "/v1/dlq/{id}/status", {"status": "resolved"}, "operator"),
    ("POST", "/v1/dlq/{id}/archive", {"reason": "r"}, "operator"),
    ("DELETE", "/v1/dlq/{id}", None, "admin"),
]
RANK = ["viewer", "operator", "admin"]


@pytest.mark.parametrize(("method", "path", "body", "least"), MUTATIONS)
@pytest.mark.parametrize("role", RANK)
async def test_role_matrix_for_changes(client, tokens, receiver, role, method, path, body, least):
    e = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    response = await client.request(method, path.format(id=e.id), json=body,
                                    headers=auth(tokens[role]))
    if RANK.index(role) < RANK.index(least):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        after = await DeadLetter.get_or_none(id=e.id)
        assert after is not None and after.status == S.ACTIVE
        assert not await AuditLog.exists()
        assert await Delivery.all().count() == 1  # no retry delivery either
    else:
        assert response.status_code in (200, 202), response.text
        assert await AuditLog.filter(actor=role).count() == 1


@pytest.mark.parametrize("path", ["/v1/dlq", "/v1/dlq/{id}", "/v1/dlq/stats", "/v1/dlq/export",
                                  "/v1/audit"])
async def test_viewer_reads_everything_and_anonymous_nothing(client, tokens, path):
    e = await entry()
    url = path.format(id=e.id)
    assert (await client.get(url, headers=auth(tokens["viewer"]))).status_code == 200
    assert (await client.get(url)).status_code == 401


# -- audit --------------------------------------------------------------------------------------

async def test_audit_listing_filters_and_pages(client, tokens):
    e1, e2 = await entry(), await entry()
    await client.post(f"/v1/dlq/{e1.id}/archive", headers=auth(tokens["operator"]))
    await client.put(f"/v1/dlq/{e2.id}/status", json={"status": "resolved"},
                     headers=auth(tokens["operator"]))
    await client.delete(f"/v1/dlq/{e2.id}", headers=auth(tokens["admin"]))
    viewer = auth(tokens["viewer"])

    everything = (await client.get("/v1/audit", headers=viewer)).json()
    assert [r["action"] for r in everything["entries"]] == [
        "dlq.delete", "dlq.status", "dlq.archive"]
    newest = everything["entries"][0]
    assert set(newest) == {"id", "actor", "action", "target_type", "target_id", "details",
                           "created_at"}
    assert (newest["actor"], newest["target_type"], newest["target_id"]) == (
        "admin", "dead_letter", str(e2.id))
    assert everything["next_cursor"] is None

    by_actor = (await client.get("/v1/audit?actor=operator", headers=viewer)).json()
    assert [r["action"] for r in by_actor["entries"]] == ["dlq.status", "dlq.archive"]
    by_action = (await client.get("/v1/audit?action=dlq.archive&target_type=dead_letter",
                                  headers=viewer)).json()
    assert [r["target_id"] for r in by_action["entries"]] == [str(e1.id)]
    page = (await client.get("/v1/audit?limit=2", headers=viewer)).json()
    assert len(page["entries"]) == 2 and page["next_cursor"] == page["entries"][1]["id"]
    rest = (await client.get(f"/v1/audit?limit=2&cursor={page['next_cursor']}",
                             headers=viewer)).json()
    assert [r["action"] for r in rest["entries"]] == ["dlq.archive"]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(("query", "field"), [("limit=500", "limit"), ("who=me", "who"),
                                              ("action=" + "a" * 101, "action")])
async def test_audit_bad_query_is_422(client, tokens, query, field):
    assert field in field_names(await client.get(f"/v1/audit?{query}",
                                                 headers=auth(tokens["viewer"])))


async def test_openapi_documents_the_dlq_routes_and_bodies(client):
    doc = (await client.get("/v1/openapi.json")).json()
    paths = doc["paths"]
    assert {"get", "delete"} <= set(paths["/v1/dlq/{id}"])
    assert "put" in paths["/v1/dlq/{id}/status"] and "post" in paths["/v1/dlq/{id}/archive"]
    assert {"/v1/dlq/stats", "/v1/dlq/export", "/v1/audit"} <= set(paths)
    schema = doc["components"]["schemas"]["StatusIn"]
    assert set(schema["properties"]) == {"status", "reason"}
