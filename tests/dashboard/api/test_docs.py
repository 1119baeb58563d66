"""`GET /v1/docs`: the HTML reference generated from the OpenAPI document."""

from __future__ import annotations

import re
from html import escape

from dashboard.api.app import OPENAPI
from dashboard.api.docs import PUBLIC, constraints, render_docs, required_role, type_label


def _sections(html: str) -> dict[str, str]:
    """Each operation's HTML by operationId."""
    parts = re.split(r'<div class="op" id="op-([^"]+)">', html)
    return {parts[i]: parts[i + 1].split('<div class="op"')[0] for i in range(1, len(parts), 2)}


async def test_docs_page_lists_every_operation_of_the_openapi_document(client) -> None:
    response = await client.get("/v1/docs")  # no token

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    sections = _sections(html)
    for path, operations in OPENAPI["paths"].items():
        assert f"<code>{escape(path)}</code>" in html, path
        for method, op in operations.items():
            section = sections[op["operationId"]]
            assert f">{method.upper()}</span><code>{escape(path)}</code>" in section
            assert escape(op["summary"]) in section


async def test_each_operation_states_the_role_it_needs(client) -> None:
    sections = _sections((await client.get("/v1/docs")).text)

    assert "role: none (public)" in sections["health"]
    assert "role: viewer" in sections["list_dlq"]
    assert "role: operator" in sections["retry_dlq_entry"]
    assert "role: admin" in sections["delete_dlq_entry"]
    assert "role: admin" in sections["create_endpoint"]


async def test_request_bodies_list_their_fields_with_types_and_rules(client) -> None:
    html = (await client.get("/v1/docs")).text
    sections = _sections(html)
    schemas = OPENAPI["components"]["schemas"]
    for operations in OPENAPI["paths"].values():
        for op in operations.values():
            if "requestBody" not in op:
                continue
            name = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            for field in schemas[name.rsplit("/", 1)[-1]].get("properties", {}):
                assert f"<td><code>{field}</code></td>" in sections[op["operationId"]], field
    endpoint = sections["create_endpoint"]
    assert "min length 1; max length 2048" in endpoint  # url
    assert '<a href="#schema-RetryPolicy">' in endpoint and 'id="schema-RetryPolicy"' in html
    assert "the new status (only legal transitions)" in sections["set_dlq_status"]


async def test_docs_explain_auth_and_the_error_format_without_external_resources(client) -> None:
    html = (await client.get("/v1/docs")).text

    assert "Authorization: Bearer &lt;token&gt;" in html
    assert "observatory users create NAME --role" in html
    assert 'id="errors"' in html and "validation_error" in html and "403" in html
    for needle in ("<script", "<link", " src=", "@import", "url("):
        assert needle not in html, needle


def test_required_role_reads_the_docstrings_last_word() -> None:
    secured = {"security": [{"bearer": []}]}
    assert required_role(secured, "Delete it for good.\nAdmin.") == "admin"
    assert required_role(secured, "Retry one entry. Operator.") == "operator"
    assert required_role(secured, "List entries.") == "viewer"
    assert required_role({}, "Liveness.") == PUBLIC


def test_types_and_constraints_of_nullable_and_nested_fields() -> None:
    nullable = {"anyOf": [{"maxLength": 500, "type": "string"}, {"type": "null"}],
                "default": None}
    assert type_label(nullable) == "string or null"
    assert constraints(nullable) == ["max length 500"]
    assert type_label({"type": "array", "items": {"$ref": "#/components/schemas/MessageIn"}}) \
        == 'array of <a href="#schema-MessageIn"><code>MessageIn</code></a>'
    assert constraints({"enum": ["a", "b"], "default": "a"}) == [
        "one of <code>&quot;a&quot;</code>, <code>&quot;b&quot;</code>",
        "default <code>&quot;a&quot;</code>"]


def test_render_escapes_what_it_shows() -> None:
    doc = {"info": {"title": "<T>"}, "paths": {"/v1/x": {"get": {
        "operationId": "x", "summary": "<b>bold</b>", "security": [{"bearer": []}]}}}}
    html = render_docs(doc, {"x": "<b>bold</b>\nAdmin."})
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "role: admin" in html
