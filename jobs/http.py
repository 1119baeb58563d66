"""The worker process's one outbound HTTP client: httpx over aiohttp's transport, SSRF-guarded.

See `jobs.guard` for the destination rules. A refused destination makes `client.send()` raise
`jobs.guard.DestinationBlockedError` (not an httpx error).
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from jobs.attempt import DirectPoster
from jobs.guard import DestinationPolicy, GuardedResolver, GuardedTransport, guarded_socket_factory

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 15.0
USER_AGENT = "Observatory-Webhooks/0.1"
# No per-host cap in the connector: aiohttp counts it per (host, port), so one slow endpoint
# would starve every other endpoint on the same receiver host. The per-endpoint in-flight cap
# (jobs.deliver, `max_in_flight`) is what bounds each endpoint.
LIMIT_PER_HOST = 0


def make_client(max_connections: int = 512, *, allowlist: str | Iterable[str] | None = None,
                follow_redirects: bool = False) -> httpx.AsyncClient:
    """One client per worker process.

    `allowlist`: CIDRs exempt from the SSRF guard; None reads OBSERVATORY_DESTINATION_ALLOWLIST
    now, "" or [] exempts nothing (invalid CIDRs raise ValueError). Redirects are not followed
    unless `follow_redirects` (or the per-request flag) says so; every hop is then guarded too.
    """
    policy = DestinationPolicy.from_allowlist(allowlist)

    def session() -> aiohttp.ClientSession:  # built lazily, inside the running loop
        return guarded_session(policy, max_connections)

    return httpx.AsyncClient(
        transport=GuardedTransport(AiohttpTransport(client=session), policy),
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        follow_redirects=follow_redirects,
        headers={"user-agent": USER_AGENT},
    )


def guarded_session(policy: DestinationPolicy, max_connections: int = 512,
                    **kwargs: object) -> aiohttp.ClientSession:
    """An aiohttp session whose connector resolves and connects only where `policy` allows."""
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=LIMIT_PER_HOST,
        resolver=GuardedResolver(policy), socket_factory=guarded_socket_factory(policy))
    return aiohttp.ClientSession(connector=connector, trust_env=False, **kwargs)  # type: ignore[arg-type]


def make_poster(max_connections: int = 512, *,
                allowlist: str | Iterable[str] | None = None) -> DirectPoster:
    """The hot-path poster (see jobs.attempt.DirectPoster); create it inside the running loop."""
    policy = DestinationPolicy.from_allowlist(allowlist)
    session = guarded_session(
        policy, max_connections, headers={"user-agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S))
    return DirectPoster(session, policy)
