"""One HTTP attempt of a delivery: the signed POST with its deadline, body cap and outcome."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx

from jobs.classify import Outcome, classify_error, classify_status
from jobs.guard import DestinationBlockedError, blocked_reason

EXCERPT_BYTES = 64 * 1024  # response body kept per attempt; the rest is discarded
ATTEMPT_DEADLINE_S = 30.0  # total per attempt, shorter than the worker's job_timeout


@dataclass
class AttemptResult:
    started_at: datetime
    duration_ms: float
    outcome: Outcome
    status_code: int | None = None
    error_message: str | None = None
    excerpt: str | None = None
    retry_after_s: float | None = None


def webhook_body(message: Any) -> bytes:
    """The JSON body receivers get: type, timestamp and the producer's payload as `data`."""
    return json.dumps({
        "type": message.event_type,
        "timestamp": message.created_at.astimezone(UTC).isoformat(),
        "data": message.payload,
    }, separators=(",", ":")).encode()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def _read_capped(response: httpx.Response, cap: int = EXCERPT_BYTES) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body.extend(chunk[: cap - len(body)])
        if len(body) >= cap:
            break
    return bytes(body)


async def post_once(client: httpx.AsyncClient, url: str, body: bytes,
                    headers: dict[str, str], deadline_s: float = ATTEMPT_DEADLINE_S) -> AttemptResult:
    """POST once with a total deadline; never raises for receiver or network failures."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(deadline_s):
            request = client.build_request("POST", url, content=body, headers={
                "content-type": "application/json", **headers})
            response = await client.send(request, stream=True)
            try:
                raw = await _read_capped(response)
            finally:
                await response.aclose()
    except DestinationBlockedError as exc:  # the SSRF guard refused the address
        return _failed(started, t0, "destination_blocked", str(exc))
    except httpx.InvalidURL as exc:  # e.g. "http://0177.0.0.1/": not an HTTPError
        return _failed(started, t0, "invalid_url", str(exc))
    except (TimeoutError, httpx.TimeoutException) as exc:
        if reason := blocked_reason(exc):
            return _failed(started, t0, "destination_blocked", reason)
        if isinstance(exc.__cause__, aiohttp.ClientConnectorError):
            # httpx-aiohttp 0.2 maps a refused connection to ConnectTimeout; it is not one.
            return _failed(started, t0, "connection_error", str(exc.__cause__))
        return _failed(started, t0, "timeout", f"no complete response within the deadline: {exc!r}")
    except httpx.UnsupportedProtocol as exc:
        return _failed(started, t0, "invalid_url", str(exc))
    except httpx.ConnectError as exc:
        return _failed(started, t0, "connection_error", str(exc) or repr(exc))
    except httpx.HTTPError as exc:
        return _failed(started, t0, "network_error", str(exc) or repr(exc))
    outcome = classify_status(response.status_code)
    if not outcome.ok and response.headers.get("webhook-delivery", "").lower() == "abort-message":
        outcome = Outcome("final", "aborted_by_receiver")  # the receiver asks us to stop
    retry_after = None
    if response.status_code in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    return AttemptResult(
        started_at=started, duration_ms=(time.perf_counter() - t0) * 1000, outcome=outcome,
        status_code=response.status_code, excerpt=raw.decode("utf-8", "replace"),
        error_message=None if outcome.ok else f"HTTP {response.status_code}",
        retry_after_s=retry_after,
    )


def _failed(started: datetime, t0: float, error_class: str, message: str) -> AttemptResult:
    return AttemptResult(started_at=started, duration_ms=(time.perf_counter() - t0) * 1000,
                         outcome=classify_error(error_class), error_message=message)


def no_attempt(reason: str) -> AttemptResult:
    """The outcome of a delivery refused before any request (deleted or disabled endpoint)."""
    return AttemptResult(started_at=datetime.now(UTC), duration_ms=0.0,
                         outcome=Outcome("final", reason), error_message=reason)
