"""The worker process's one outbound HTTP client: httpx over aiohttp's transport."""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 15.0
USER_AGENT = "Observatory-Webhooks/0.1"


def make_client(max_connections: int = 256) -> httpx.AsyncClient:
    """One client per worker process; redirects are never followed."""

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=64)
        return aiohttp.ClientSession(connector=connector)

    return httpx.AsyncClient(
        transport=AiohttpTransport(client=session),
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
    )
