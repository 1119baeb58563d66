"""The REST API trusts a token check for models.auth.TOKEN_CACHE_S: revocations made elsewhere
take effect within that bound, those made through models.auth in this process at once."""

from __future__ import annotations

import asyncio

import pytest

from dashboard.api import auth as api_auth
from models import auth as auth_module
from models.auth import (SESSION_TOKEN_NAME, create_user, issue_token, revoke_session_tokens,
                         revoke_token, user_for_token)
from models.enums import Role
from models.users import ApiToken, User
from tests.dashboard.api.conftest import auth
from tests.factories import make_dead_letter, make_endpoint


@pytest.fixture
def cache_for(monkeypatch: pytest.MonkeyPatch):
    def set_bound(seconds: float) -> None:
        monkeypatch.setattr(api_auth, "TOKEN_CACHE_S", seconds)
    return set_bound


async def test_a_checked_token_is_trusted_for_the_bound(client, tokens, cache_for):
    cache_for(60)
    assert (await client.get("/v1/dlq", headers=auth(tokens["viewer"]))).status_code == 200
    await ApiToken.all().delete()  # as another process would (the CLI)

    assert (await client.get("/v1/dlq", headers=auth(tokens["viewer"]))).status_code == 200
    assert await user_for_token(tokens["viewer"]) is None  # everyone else checks each time


async def test_a_token_deleted_elsewhere_stops_working_within_the_bound(client, tokens,
                                                                        cache_for):
    cache_for(0.2)
    assert (await client.get("/v1/dlq", headers=auth(tokens["viewer"]))).status_code == 200
    await ApiToken.all().delete()

    await asyncio.sleep(0.3)
    response = await client.get("/v1/dlq", headers=auth(tokens["viewer"]))
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


async def test_a_role_changed_elsewhere_takes_effect_within_the_bound(client, tokens, receiver,
                                                                      cache_for):
    cache_for(0.2)
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    assert (await client.get("/v1/dlq", headers=auth(tokens["operator"]))).status_code == 200
    await User.filter(name="operator").update(role=Role.VIEWER)

    await asyncio.sleep(0.3)
    refused = await client.post(f"/v1/dlq/{entry.id}/retry", headers=auth(tokens["operator"]))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"


async def test_a_token_revoked_in_this_process_stops_at_once(client, tokens, cache_for):
    cache_for(60)
    assert (await client.get("/v1/dlq", headers=auth(tokens["viewer"]))).status_code == 200

    assert await revoke_token(tokens["viewer"])

    assert (await client.get("/v1/dlq", headers=auth(tokens["viewer"]))).status_code == 401


async def test_signing_a_user_out_everywhere_stops_its_session_tokens_at_once(client, db,
                                                                              cache_for):
    cache_for(60)
    user, _, api_token = await create_user("dora", Role.OPERATOR)
    session = await issue_token(user, name=SESSION_TOKEN_NAME)
    for token in (session, api_token):
        assert (await client.get("/v1/dlq", headers=auth(token))).status_code == 200

    assert await revoke_session_tokens(user) == 1

    assert (await client.get("/v1/dlq", headers=auth(session))).status_code == 401
    assert (await client.get("/v1/dlq", headers=auth(api_token))).status_code == 200


async def test_a_check_racing_a_revocation_is_not_kept(db, cache_for):
    _, _, token = await create_user("erin", Role.VIEWER)
    checking = asyncio.create_task(user_for_token(token, max_age_s=60))
    await asyncio.sleep(0)  # the check has begun (its query is in flight)
    revoked = asyncio.create_task(revoke_token(token))

    await asyncio.gather(checking, revoked)

    assert await user_for_token(token, max_age_s=60) is None


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """The token checks' clock, moved by hand (seconds)."""
    now = [1000.0]
    monkeypatch.setattr(auth_module, "_clock", lambda: now[0])
    return now


async def _background_checks_done() -> None:
    for _ in range(200):
        if not auth_module._pending:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a token check is still under way after 2 s")


async def test_a_busy_token_is_rechecked_in_the_background_before_its_check_expires(
        client, tokens, cache_for, clock):
    cache_for(1.0)
    viewer = auth(tokens["viewer"])
    assert (await client.get("/v1/dlq", headers=viewer)).status_code == 200  # checked at 1000
    clock[0] += 0.6  # half the bound passed: this request is answered and starts a re-check
    assert (await client.get("/v1/dlq", headers=viewer)).status_code == 200
    await _background_checks_done()
    await ApiToken.all().delete()  # as another process would, after that re-check

    clock[0] += 0.7  # 1.3 s after the first check, 0.7 s after the re-check: still trusted
    assert (await client.get("/v1/dlq", headers=viewer)).status_code == 200
    await _background_checks_done()  # (the re-check it started finds no token)
    clock[0] += 0.4  # whether that re-check ran or not, the bound has passed
    response = await client.get("/v1/dlq", headers=viewer)
    assert response.status_code == 401


async def test_concurrent_requests_share_one_check_of_a_token(db, cache_for, clock):
    _, _, token = await create_user("fred", Role.VIEWER)

    users = await asyncio.gather(*(user_for_token(token, max_age_s=1.0) for _ in range(20)))

    assert {u.name for u in users} == {"fred"}
    assert len({id(u) for u in users}) == 1  # one query answered them all

