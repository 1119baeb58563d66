"""Fixtures of the REST API tests: the real mounted app over ASGI, and a token per role."""

from __future__ import annotations

import httpx
import pytest_asyncio

from dashboard.api.app import api
from models.auth import create_user


@pytest_asyncio.fixture
async def client(db, redis):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api),
                                 base_url="http://test") as c:
        yield c


@pytest_asyncio.fixture
async def tokens(db) -> dict[str, str]:
    return {role: (await create_user(role, role))[2] for role in ("admin", "operator", "viewer")}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
