"""`GET /v1/docs`: the API reference as one self-contained HTML page.

Generated from the OpenAPI document (`dashboard.api.app.OPENAPI`) and the routes' docstrings,
so it cannot drift from what is served: every operation grouped by path, with its method,
summary, the least role it needs (a docstring ending in "Operator." or "Admin."; viewer
otherwise; none for the public routes), path parameters and request body fields (type,
constraints, description), then the error format and every body schema. No JavaScript and
no external stylesheet or font: the page works on an offline machine.
"""

from __future__ import annotations

import functools
import inspect
import json
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

#: the last word of a route docstring → the least role the route needs
ROLE_WORDS = {"Operator.": "operator", "Admin.": "admin"}
PUBLIC = "none (public)"
#: JSON-schema keywords shown as constraints, and how
_CONSTRAINTS = {
    "minLength": "min length {}", "maxLength": "max length {}", "minimum": "≥ {}",
    "maximum": "≤ {}", "exclusiveMinimum": "> {}", "exclusiveMaximum": "< {}",
    "minItems": "at least {} items", "maxItems": "at most {} items",
    "maxProperties": "at most {} keys", "pattern": "matches <code>{}</code>",
    "format": "format {}",
}
_ERROR_CODES = (
    ("400", "invalid_json", "the body is not JSON"),
    ("401", "unauthorized", "no bearer token, or an unknown or revoked one"),
    ("403", "forbidden", "the token's role may not do this (nothing changed)"),
    ("404", "not_found", "the target does not exist"),
    ("409", "conflict, not_retryable, already_in_flight, …",
     "the target's state forbids the action"),
    ("422", "validation_error", "bad input: `details.fields` names each field and rule"),
)
_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1c2024;
background:#f9f9fb}main{max-width:1100px;margin:0 auto;padding:24px}h1{margin:0 0 4px}
h2{margin-top:40px;border-bottom:1px solid #dcdce2;padding-bottom:4px}
code,pre{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
background:#eff0f3;border-radius:4px}code{padding:1px 4px}pre{padding:10px;overflow:auto}
section.path{background:#fff;border:1px solid #e0e1e6;border-radius:8px;padding:4px 16px 12px;
margin:14px 0}.op{border-top:1px solid #eceef0;padding-top:8px;margin-top:8px}
.op:first-of-type{border-top:0}.method{display:inline-block;min-width:64px;text-align:center;
font-weight:700;font-size:12px;border-radius:4px;padding:2px 6px;color:#fff;margin-right:8px}
.get{background:#3e63dd}.post{background:#30a46c}.put{background:#f76b15}
.patch{background:#8e4ec6}.delete{background:#e5484d}.role{font-size:12px;border-radius:10px;
padding:1px 8px;background:#eff0f3;margin-left:8px}.role-admin{background:#ffdcdc}
.role-operator{background:#ffe8c2}table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;vertical-align:top;padding:4px 8px;border-bottom:1px solid #eceef0;
font-size:14px}th{font-size:12px;color:#60646c}.toc{columns:2;font-size:14px}
.muted{color:#60646c}
"""


def required_role(operation: dict[str, Any], docstring: str) -> str:
    """The least role `operation` needs: none without security, else the docstring's last
    word ("Operator." / "Admin."), else viewer."""
    if not operation.get("security"):
        return PUBLIC
    words = docstring.split()
    return ROLE_WORDS.get(words[-1], "viewer") if words else "viewer"


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _schema_link(name: str) -> str:
    return f'<a href="#schema-{escape(name)}"><code>{escape(name)}</code></a>'


def type_label(schema: dict[str, Any]) -> str:
    """A field's type as HTML: `string`, `integer or null`, `array of MessageIn` (linked)."""
    if "$ref" in schema:
        return _schema_link(_ref_name(schema["$ref"]))
    if "anyOf" in schema:
        kinds = [s for s in schema["anyOf"] if s.get("type") != "null"]
        label = " | ".join(type_label(s) for s in kinds) or "null"
        return label + (" or null" if len(kinds) < len(schema["anyOf"]) else "")
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_label(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_label(schema['additionalProperties'])}"
    return escape(str(kind))


def constraints(schema: dict[str, Any]) -> list[str]:
    """A field's rules as HTML snippets (bounds, pattern, choices, default)."""
    rules: list[str] = []
    for branch in [schema, *schema.get("anyOf", [])]:
        for key, template in _CONSTRAINTS.items():
            if key in branch:
                rules.append(template.format(escape(str(branch[key]))))
        if "enum" in branch:
            rules.append("one of " + ", ".join(f"<code>{escape(json.dumps(v))}</code>"
                                               for v in branch["enum"]))
    if "default" in schema and schema["default"] is not None:
        rules.append(f"default <code>{escape(json.dumps(schema['default']))}</code>")
    return rules


def fields_table(schema: dict[str, Any]) -> str:
    """The fields of an object schema: name, type, required, constraints, description."""
    properties = schema.get("properties") or {}
    if not properties:
        if "enum" in schema:
            kind = escape(str(schema.get("type", "value")))
            return f"<p>A {kind}: {'; '.join(constraints(schema))}.</p>"
        return '<p class="muted">Any JSON object.</p>'
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td>{type_label(field)}</td>"
        f"<td>{'yes' if name in required else 'no'}</td>"
        f"<td>{'; '.join(constraints(field)) or '—'}</td>"
        f"<td>{escape(field.get('description', ''))}</td></tr>"
        for name, field in properties.items())
    return ("<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Constraints</th>"
            f"<th>Description</th></tr>{rows}</table>")


def _operation(path: str, method: str, op: dict[str, Any], docstring: str,
               schemas: dict[str, Any]) -> str:
    role = required_role(op, docstring)
    parts = [f'<div class="op" id="op-{escape(op.get("operationId", ""))}">',
             f'<p><span class="method {method}">{method.upper()}</span>'
             f"<code>{escape(path)}</code>"
             f'<span class="role role-{role.split()[0]}">role: {escape(role)}</span></p>',
             f"<p><strong>{escape(op.get('summary', ''))}</strong></p>"]
    rest = docstring.split("\n", 1)[1].strip() if "\n" in docstring else ""
    if rest:
        parts.append(f'<p class="muted">{escape(" ".join(rest.split()))}</p>')
    if params := op.get("parameters"):
        parts.append("<p>Path parameters: " + ", ".join(
            f"<code>{escape(p['name'])}</code> ({escape(p['schema'].get('type', 'any'))})"
            for p in params) + "</p>")
    if body := op.get("requestBody"):
        ref = body["content"]["application/json"]["schema"]["$ref"]
        name = _ref_name(ref)
        needed = "required" if body.get("required") else "optional: an empty body is accepted"
        parts.append(f"<p>Request body ({needed}): {_schema_link(name)}</p>")
        parts.append(fields_table(schemas.get(name, {})))
    errors = "none expected" if role == PUBLIC else '<a href="#errors">the error format</a>'
    parts.append(f'<p class="muted">Success: 2xx. Errors: {errors}.</p></div>')
    return "".join(parts)


def _intro(info: dict[str, Any]) -> str:
    return f"""<h1>{escape(info.get('title', 'API'))}</h1>
<p class="muted">Version {escape(str(info.get('version', '')))} · every route is under
<code>/v1</code> and speaks JSON · machine-readable:
<a href="/v1/openapi.json">/v1/openapi.json</a></p>
<h2 id="auth">Authentication</h2>
<p>Send an API token with every request: <code>Authorization: Bearer &lt;token&gt;</code>.
Tokens belong to users, and a user's role decides what its tokens may do:
<strong>viewer</strong> reads, <strong>operator</strong> also retries, cancels, pauses and
archives, <strong>admin</strong> may do everything (delete, re-sync, endpoint changes).
A route that needs more than the token's role answers 403 and changes nothing.</p>
<p>Create a user and its first token on the server with
<code>observatory users create NAME --role admin|operator|viewer</code> (the token is printed
once); more tokens with <code>observatory users token-issue NAME --name WHAT</code>, revoke one
with <code>observatory users token-revoke PREFIX</code>. <code>observatory up</code> creates a
first <code>admin</code> and writes its token to <code>$OBSERVATORY_DATA_DIR/credentials</code>.</p>
<pre>curl -H "Authorization: Bearer $OBSERVATORY_TOKEN" \\
     "http://127.0.0.1:3000/v1/dlq?status=active"</pre>"""


def _errors_section() -> str:
    example = json.dumps({"error": {"code": "validation_error",
                                    "message": "Invalid request: status: Input should be …",
                                    "details": {"fields": [{"field": "status", "rule": "enum",
                                                            "message": "Input should be …"}]}}},
                         indent=2, ensure_ascii=False)
    rows = "".join(f"<tr><td>{status}</td><td><code>{escape(code)}</code></td>"
                   f"<td>{escape(meaning)}</td></tr>" for status, code, meaning in _ERROR_CODES)
    return (f'<h2 id="errors">Errors</h2><p>Every failure answers JSON of one shape, '
            f"<code>{{\"error\": {{\"code\", \"message\", \"details\"}}}}</code>: "
            f"<code>code</code> is stable (for programs), <code>message</code> says what to fix "
            f"(for people), <code>details</code> may name the fields.</p>"
            f"<pre>{escape(example)}</pre><table><tr><th>Status</th><th>code</th>"
            f"<th>When</th></tr>{rows}</table>")


def render_docs(openapi: dict[str, Any], docstrings: dict[str, str]) -> str:
    """The whole page for `openapi`; `docstrings` maps operationIds to the routes' docstrings
    (their first line is the summary, the rest and the role word come from here)."""
    schemas = openapi.get("components", {}).get("schemas", {})
    paths = openapi.get("paths", {})
    toc = "".join(f'<li><a href="#path-{i}"><code>{escape(path)}</code></a> '
                  f'<span class="muted">{" ".join(m.upper() for m in ops)}</span></li>'
                  for i, (path, ops) in enumerate(paths.items()))
    sections = []
    for i, (path, ops) in enumerate(paths.items()):
        body = "".join(_operation(path, method, op, docstrings.get(op.get("operationId", ""), ""),
                                  schemas) for method, op in ops.items())
        sections.append(f'<section class="path" id="path-{i}"><h3><code>{escape(path)}</code>'
                        f"</h3>{body}</section>")
    schema_sections = "".join(
        f'<div id="schema-{escape(name)}"><h3><code>{escape(name)}</code></h3>'
        f'<p class="muted">{escape(schema.get("description", ""))}</p>{fields_table(schema)}</div>'
        for name, schema in schemas.items() if name != "Error")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(openapi.get('info', {}).get('title', 'API'))} reference</title>"
            f"<style>{_STYLE}</style></head><body><main>{_intro(openapi.get('info', {}))}"
            f'<h2 id="operations">Operations</h2><ul class="toc">{toc}</ul>{"".join(sections)}'
            f'{_errors_section()}<h2 id="schemas">Request body schemas</h2>{schema_sections}'
            f"</main></body></html>")


@functools.cache
def docs_html() -> str:
    """The page of this process's API (built once: the routes do not change at run time)."""
    from dashboard.api.app import OPENAPI, routes  # the app imports this module

    docstrings = {route.endpoint.__name__: inspect.getdoc(route.endpoint) or ""
                  for route in routes}
    return render_docs(OPENAPI, docstrings)


async def docs(request: Request) -> HTMLResponse:
    """This API's reference, as an HTML page (no token needed)."""
    return HTMLResponse(docs_html())


docs_route = Route("/v1/docs", docs, methods=["GET"])
