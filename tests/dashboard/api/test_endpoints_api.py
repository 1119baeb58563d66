"""`/v1/endpoints/{id}…` through ASGI on the real database: contract, roles, errors."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.api.endpoints import endpoint_bodies, endpoint_routes
from dashboard.api.openapi import build_openapi
from jobs.policy import DEFAULT_POLICY
from models.audit import AuditLog
from models.endpoints import Endpoint
from tests.dashboard.api.conftest import auth
from tests.factories import FAST_POLICY, make_endpoint

URL = "http://127.0.0.1:9/hook"


async def snapshot(endpoint_id: int) -> dict[str, Any]:
    row = (await Endpoint.filter(id=endpoint_id).values())[0]
    row.pop("updated_at")
    return row


# every route: (method, path template, JSON body of a valid admin call)
CHANGES = [
    ("PATCH", "/v1/endpoints/{id}", {"description": "x"}),
    ("DELETE", "/v1/endpoints/{id}", None),
    ("PUT", "/v1/endpoints/{id}/retry-config", {"max_retries": 2}),
    ("POST", "/v1/endpoints/{id}/rotate-secret", None),
    ("POST", "/v1/endpoints/{id}/disable", {"reason": "maintenance"}),
]
READS = [("GET", "/v1/endpoints/{id}", None), ("GET", "/v1/endpoints/{id}/retry-config", None)]


def test_contract_paths_and_methods_are_the_documented_ones():
    doc = build_openapi(endpoint_routes, endpoint_bodies, public=set())
    assert {path: sorted(ops) for path, ops in doc["paths"].items()} == {
        "/v1/endpoints/{id}": ["delete", "get", "patch"],
        "/v1/endpoints/{id}/retry-config": ["get", "put"],
        "/v1/endpoints/{id}/rotate-secret": ["post"],
        "/v1/endpoints/{id}/enable": ["post"],
        "/v1/endpoints/{id}/disable": ["post"],
    }
    put = doc["paths"]["/v1/endpoints/{id}/retry-config"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/RetryPolicy")
    assert "reason" in doc["components"]["schemas"]["DisableIn"]["properties"]
    assert all(op["security"] == [{"bearer": []}] for ops in doc["paths"].values()
               for op in ops.values())


@pytest.mark.parametrize(("method", "path", "body"), READS + CHANGES)
async def test_no_token_is_401(client, method, path, body):
    endpoint = await make_endpoint(URL)
    response = await client.request(method, path.format(id=endpoint.id), json=body)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("role", ["viewer", "operator"])
@pytest.mark.parametrize(("method", "path", "body"),
                         CHANGES + [("POST", "/v1/endpoints/{id}/enable", None)])
async def test_changes_need_admin_and_change_nothing_otherwise(client, tokens, role, method,
                                                               path, body):
    endpoint = await make_endpoint(URL, enabled=False, disabled_reason="off")
    before = await snapshot(endpoint.id)
    response = await client.request(method, path.format(id=endpoint.id), json=body,
                                    headers=auth(tokens[role]))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert await snapshot(endpoint.id) == before
    assert not await AuditLog.exists()


@pytest.mark.parametrize(("method", "path", "body"),
                         READS + CHANGES + [("POST", "/v1/endpoints/{id}/enable", None)])
async def test_unknown_endpoint_is_404(client, tokens, method, path, body):
    response = await client.request(method, path.format(id=4242), json=body,
                                    headers=auth(tokens["admin"]))
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "not_found",
                                        "message": "endpoint 4242 does not exist",
                                        "details": {}}


async def test_viewer_reads_endpoint_without_its_secret(client, tokens):
    endpoint = await make_endpoint(URL, event_types=["order.paid"])
    response = await client.get(f"/v1/endpoints/{endpoint.id}", headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["url"], body["event_types"], body["enabled"]) == (
        endpoint.id, URL, ["order.paid"], True)
    assert body["app_name"] == f"app-{URL}"
    assert "secret" not in body and "previous_secret" not in body


async def test_patch_updates_and_null_resets_filters(client, tokens):
    endpoint = await make_endpoint(URL, event_types=["a"], max_in_flight=3)
    response = await client.patch(
        f"/v1/endpoints/{endpoint.id}", headers=auth(tokens["admin"]),
        json={"url": "https://example.com/in", "event_types": None, "max_in_flight": None,
              "follow_redirects": True})
    assert response.status_code == 200
    body = response.json()
    assert (body["url"], body["event_types"], body["max_in_flight"], body["follow_redirects"]) == (
        "https://example.com/in", None, None, True)
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor) == ("endpoint.update", "admin")


@pytest.mark.parametrize(("body", "field", "rule"), [
    ({"url": "ftp://x/"}, "url", "value_error"),
    ({"url": None}, "url", "value_error"),
    ({"max_in_flight": 0}, "max_in_flight", "greater_than_equal"),
    ({"max_in_flight": "many"}, "max_in_flight", "int_parsing"),
    ({"colour": "red"}, "colour", "extra_forbidden"),
    ({}, "body", "missing"),
    ([], "body", "model_type"),
])
async def test_bad_patch_is_422_naming_the_field(client, tokens, body, field, rule):
    endpoint = await make_endpoint(URL, max_in_flight=3)
    before = await snapshot(endpoint.id)
    response = await client.patch(f"/v1/endpoints/{endpoint.id}", json=body,
                                  headers=auth(tokens["admin"]))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert {f["field"]: f["rule"] for f in error["details"]["fields"]}[field] == rule
    assert all(set(f) == {"field", "rule", "message"} for f in error["details"]["fields"])
    assert await snapshot(endpoint.id) == before
    assert not await AuditLog.exists()


async def test_invalid_json_is_400(client, tokens):
    endpoint = await make_endpoint(URL)
    response = await client.put(f"/v1/endpoints/{endpoint.id}/retry-config", content=b"{nope",
                                headers=auth(tokens["admin"]))
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


async def test_delete(client, tokens):
    endpoint = await make_endpoint(URL)
    response = await client.delete(f"/v1/endpoints/{endpoint.id}", headers=auth(tokens["admin"]))
    assert response.status_code == 200 and response.json() == {"id": endpoint.id, "deleted": True}
    assert not await Endpoint.exists(id=endpoint.id)
    again = await client.delete(f"/v1/endpoints/{endpoint.id}", headers=auth(tokens["admin"]))
    assert again.status_code == 404


async def test_retry_config_get_put_and_reset_with_null(client, tokens):
    endpoint = await make_endpoint(URL)  # FAST_POLICY
    path = f"/v1/endpoints/{endpoint.id}/retry-config"
    shown = await client.get(path, headers=auth(tokens["viewer"]))
    assert shown.status_code == 200
    assert shown.json() == {"endpoint_id": endpoint.id, "policy": FAST_POLICY | {
        "base_delay": 1.0, "max_delay": 1.0}, "is_default": False, "max_attempts": 3}

    put = await client.put(path, json={"max_retries": 8, "backoff": "exponential"},
                           headers=auth(tokens["admin"]))
    assert put.status_code == 200
    assert put.json()["policy"]["max_retries"] == 8 and put.json()["is_default"] is False

    reset = await client.put(path, content=b"null", headers=auth(tokens["admin"]))
    assert reset.status_code == 200
    assert reset.json() == {"endpoint_id": endpoint.id, "policy": DEFAULT_POLICY.model_dump(),
                            "is_default": True, "max_attempts": 6}
    assert (await Endpoint.get(id=endpoint.id)).retry_config is None
    assert [a.action for a in await AuditLog.all()] == ["endpoint.retry_config"] * 2


async def test_bad_retry_config_is_422_with_field_errors_and_nothing_changes(client, tokens):
    endpoint = await make_endpoint(URL)
    before = await snapshot(endpoint.id)
    response = await client.put(f"/v1/endpoints/{endpoint.id}/retry-config",
                                json={"max_retries": 50, "backoff": "random"},
                                headers=auth(tokens["admin"]))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert {f["field"]: f["rule"] for f in error["details"]["fields"]} == {
        "max_retries": "less_than_equal", "backoff": "literal_error"}
    assert "max_retries" in error["message"]
    assert await snapshot(endpoint.id) == before
    cap = await client.put(f"/v1/endpoints/{endpoint.id}/retry-config",
                           json={"base_delay": 30, "max_delay": 10},
                           headers=auth(tokens["admin"]))
    assert cap.status_code == 422
    assert cap.json()["error"]["details"]["fields"] == [{
        "field": "max_delay", "rule": "value_error",
        "message": "max_delay must be >= base_delay"}]
    assert await snapshot(endpoint.id) == before
    assert not await AuditLog.exists()


async def test_rotate_secret_returns_the_new_secret_once(client, tokens):
    endpoint = await make_endpoint(URL)
    response = await client.post(f"/v1/endpoints/{endpoint.id}/rotate-secret",
                                 headers=auth(tokens["admin"]))
    assert response.status_code == 200
    body = response.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != endpoint.secret
    assert body["previous_secret_expires_at"] is not None
    stored = await Endpoint.get(id=endpoint.id)
    assert (stored.secret, stored.previous_secret) == (body["secret"], endpoint.secret)

    now = await client.post(f"/v1/endpoints/{endpoint.id}/rotate-secret", json={"grace_s": 0},
                            headers=auth(tokens["admin"]))
    assert now.json()["previous_secret_expires_at"] is None
    bad = await client.post(f"/v1/endpoints/{endpoint.id}/rotate-secret",
                            json={"grace_s": -5}, headers=auth(tokens["admin"]))
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["fields"][0]["field"] == "grace_s"


async def test_disable_and_enable(client, tokens):
    endpoint = await make_endpoint(URL)
    path = f"/v1/endpoints/{endpoint.id}"
    no_reason = await client.post(f"{path}/disable", json={}, headers=auth(tokens["admin"]))
    assert no_reason.status_code == 422
    assert no_reason.json()["error"]["details"]["fields"][0]["field"] == "reason"
    blank = await client.post(f"{path}/disable", json={"reason": "  "},
                              headers=auth(tokens["admin"]))
    assert blank.status_code == 422
    assert (await Endpoint.get(id=endpoint.id)).enabled is True

    off = await client.post(f"{path}/disable", json={"reason": "receiver down"},
                            headers=auth(tokens["admin"]))
    assert off.status_code == 200
    assert (off.json()["enabled"], off.json()["disabled_reason"]) == (False, "receiver down")
    twice = await client.post(f"{path}/disable", json={"reason": "again"},
                              headers=auth(tokens["admin"]))
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "conflict"

    on = await client.post(f"{path}/enable", headers=auth(tokens["admin"]))
    assert on.status_code == 200
    assert (on.json()["enabled"], on.json()["disabled_reason"]) == (True, None)
    assert [(a.action, a.actor) for a in await AuditLog.all().order_by("id")] == [
        ("endpoint.disable", "admin"), ("endpoint.enable", "admin")]


async def test_non_integer_id_is_404(client, tokens):
    response = await client.get("/v1/endpoints/abc", headers=auth(tokens["admin"]))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
