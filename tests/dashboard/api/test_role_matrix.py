"""Role matrix: every mutating REST route × every role, on the real mounted app.

`MINIMUM` is THE table of who may change what: one row per mutating route of
`dashboard.api.app.routes`, with the least role it needs, the seeded target that fills `{id}`
and a body the action accepts. A role below the minimum gets 403 in the error format and
changes nothing (every table but the tokens', and the Redis keys, compared before and after);
a role at or above it succeeds and changes something, which proves the comparison can see the
action. A mutating route missing from the table fails `test_every_mutating_route_is_classified`:
new routes must be classified here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tortoise.models import Model

from dashboard.api.app import OPENAPI, routes
from models.agents import Agent
from models.audit import AuditLog
from models.bulk import BulkOperation
from models.cron import CronJob, CronRun
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery, Message
from models.endpoints import Application, Endpoint
from models.enums import BulkKind, BulkState, CronRunStatus
from models.users import User
from tests.dashboard.api.conftest import auth
from tests.factories import make_dead_letter, make_endpoint

ROLES = ("viewer", "operator", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
URL = "http://127.0.0.1:9/hook"
#: the tables an action may change (api_token is left out: every call stamps `last_used_at`)
TABLES: tuple[type[Model], ...] = (Application, Endpoint, Message, Delivery, Attempt,
                                   DeadLetter, BulkOperation, AuditLog, User, CronJob, CronRun,
                                   Agent)


@dataclass(frozen=True)
class Rule:
    """Who may call a route, and how to call it so that it acts."""

    role: str  # the least role
    target: str | None = None  # the seeded id that fills `{id}` (see `Seed`)
    body: dict[str, Any] | None = field(default=None)


def _message(app_id: str = "{app}") -> dict[str, Any]:
    return {"app_id": app_id, "event_type": "order.created", "payload": {"n": 1}}


#: (method, route path) → Rule. Classify every new mutating route here.
MINIMUM: dict[tuple[str, str], Rule] = {
    ("POST", "/v1/apps"): Rule("admin", body={"name": "new-app"}),
    ("POST", "/v1/endpoints"): Rule("admin", body={"app_id": "{app}", "url": URL + "/new"}),
    ("POST", "/v1/messages"): Rule("operator", body=_message()),
    ("POST", "/v1/messages/batch"): Rule("operator", body={"messages": [_message()]}),
    ("DELETE", "/v1/dlq/{id:int}"): Rule("admin", "entry"),
    ("POST", "/v1/dlq/{id:int}/retry"): Rule("operator", "entry"),
    ("PUT", "/v1/dlq/{id:int}/status"): Rule("operator", "entry", {"status": "resolved"}),
    ("POST", "/v1/dlq/{id:int}/archive"): Rule("operator", "entry"),
    ("POST", "/v1/dlq/retry-all"): Rule("operator", body={}),
    ("POST", "/v1/dlq/archive-all"): Rule("operator", body={}),
    ("POST", "/v1/dlq/delete-all"): Rule("admin", body={}),
    ("POST", "/v1/endpoints/{id:int}/resync"): Rule("admin", "endpoint", {}),
    ("POST", "/v1/operations/{id:int}/cancel"): Rule("operator", "operation"),
    ("POST", "/v1/operations/{id:int}/pause"): Rule("operator", "operation"),
    ("POST", "/v1/operations/{id:int}/resume"): Rule("operator", "paused_operation"),
    ("PATCH", "/v1/endpoints/{id:int}"): Rule("admin", "endpoint", {"description": "changed"}),
    ("DELETE", "/v1/endpoints/{id:int}"): Rule("admin", "endpoint"),
    ("PUT", "/v1/endpoints/{id:int}/retry-config"): Rule("admin", "endpoint", {
        "max_retries": 5, "backoff": "fixed", "base_delay": 2, "max_delay": 2,
        "jitter": False}),
    ("POST", "/v1/endpoints/{id:int}/rotate-secret"): Rule("admin", "endpoint"),
    ("POST", "/v1/endpoints/{id:int}/enable"): Rule("admin", "disabled_endpoint"),
    ("POST", "/v1/endpoints/{id:int}/disable"): Rule("admin", "endpoint", {"reason": "test"}),
    ("POST", "/v1/cron/{name}/run"): Rule("operator", "cron_job"),
    ("POST", "/v1/cron/{name}/pause"): Rule("operator", "cron_job"),
    ("POST", "/v1/cron/{name}/resume"): Rule("operator", "paused_cron_job"),
    ("POST", "/v1/cron/runs/{id:int}/retry"): Rule("operator", "failed_cron_run"),
    ("POST", "/v1/agents/{id}/heartbeat"): Rule("operator", "agent", {"host": "matrix"}),
}


def _public_paths() -> set[str]:
    """Paths whose operations need no token in the OpenAPI document (health, the docs)."""
    return {path for path, ops in OPENAPI["paths"].items()
            if not any(op.get("security") for op in ops.values())}


def mounted_mutations() -> set[tuple[str, str]]:
    """(method, path) of every mutating route the app serves, public ones aside."""
    public = _public_paths() | {"/v1/health"}
    found = set()
    for route in routes:
        if route.path in public:
            continue
        for method in (route.methods or set()) & MUTATING:
            found.add((method, route.path))
    return found


def test_every_mutating_route_is_classified() -> None:
    unclassified = mounted_mutations() - set(MINIMUM)
    assert not unclassified, f"add these routes to MINIMUM with their least role: {unclassified}"
    stale = set(MINIMUM) - mounted_mutations()
    assert not stale, f"MINIMUM lists routes the app does not serve: {stale}"


@dataclass(frozen=True)
class Seed:
    """What the routes act on: an application, an enabled endpoint with one active DLQ entry
    (its message and failed delivery), a disabled endpoint, a running and a paused bulk
    operation."""

    app: int
    endpoint: int
    disabled_endpoint: int
    entry: int
    operation: int
    paused_operation: int
    cron_job: str
    paused_cron_job: str
    failed_cron_run: int
    agent: str = "external-agent-1"


async def seed() -> Seed:
    endpoint = await make_endpoint(URL)
    disabled = await make_endpoint(URL + "/off", enabled=False, disabled_reason="manual")
    entry = await make_dead_letter(endpoint)
    running, paused = [await BulkOperation.create(kind=BulkKind.RETRY, actor="seed",
                                                  state=state, scope={}, total=1)
                       for state in (BulkState.RUNNING, BulkState.PAUSED)]
    job = await CronJob.create(name="matrix_job", expression="0 3 * * *")
    paused_job = await CronJob.create(name="matrix_paused", expression="0 3 * * *", paused=True)
    failed = await CronRun.create(job=job, status=CronRunStatus.FAILED, error="boom",
                                  scheduled_at=datetime.now(UTC) - timedelta(hours=1))
    return Seed(app=endpoint.app_id, endpoint=endpoint.id,  # type: ignore[attr-defined]
                disabled_endpoint=disabled.id, entry=entry.id, operation=running.id,
                paused_operation=paused.id, cron_job=job.name, paused_cron_job=paused_job.name,
                failed_cron_run=failed.id)


def _fill(value: Any, s: Seed) -> Any:
    """`"{app}"` placeholders in a body → the seeded application id."""
    if value == "{app}":
        return s.app
    if isinstance(value, dict):
        return {k: _fill(v, s) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, s) for v in value]
    return value


async def snapshot(redis: Any) -> dict[str, Any]:
    """Every row of the tables an action may change, and the Redis keys."""
    state: dict[str, Any] = {
        model.__name__: await model.all().order_by(model._meta.pk_attr).values()
        for model in TABLES}
    state["redis"] = sorted(await redis.keys("*"))
    return state


CASES = [pytest.param(method, path, role, id=f"{method} {path} as {role}")
         for (method, path) in MINIMUM for role in ROLES]


@pytest.mark.parametrize(("method", "path", "role"), CASES)
async def test_role_matrix(client, tokens, redis, method: str, path: str, role: str,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    rule = MINIMUM[(method, path)]
    monkeypatch.delenv("OBSERVATORY_REQUIRE_REASON", raising=False)
    s = await seed()
    url = re.sub(r"\{\w+(:\w+)?\}", str(getattr(s, rule.target)), path) if rule.target else path
    body = _fill(rule.body, s)
    before = await snapshot(redis)

    response = await client.request(method, url, headers=auth(tokens[role]),
                                    **({"json": body} if body is not None else {}))

    after = await snapshot(redis)
    if RANK[role] < RANK[rule.role]:
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "forbidden" and set(error) == {"code", "message", "details"}
        assert f"Role '{role}'" in error["message"] and rule.role in error["message"]
        assert after == before, "a refused request changed something"
    else:
        assert 200 <= response.status_code < 300, response.text
        assert after != before, "the allowed action changed nothing the test can see"
