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
from jobs.guard import DestinationBlockedError, DestinationPolicy, blocked_reason

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


_encode_string = json.encoder.encode_basestring_ascii  # json.dumps of a str, without its set-up


def webhook_body(message: Any, payload_changes: dict[str, Any] | None = None) -> bytes:
    """The JSON body receivers get: type, timestamp and the producer's payload as `data`
    (with `payload_changes` replacing fields of it: a sandbox retry's payload overrides).

    A message claimed by the fast lane (models.delivery_batches.ClaimedMessage) keeps its
    payload as the stored JSON text: it goes into the body as it is, not parsed and re-encoded.
    """
    if not payload_changes and (raw := getattr(message, "payload_json", None)) is not None:
        return (f'{{"type":{_encode_string(message.event_type)},"timestamp":'
                f'"{message.created_at.astimezone(UTC).isoformat()}","data":{raw}}}').encode()
    data = message.payload
    if payload_changes:
        data = {**data, **payload_changes} if isinstance(data, dict) else payload_changes
    return json.dumps({
        "type": message.event_type,
        "timestamp": message.created_at.astimezone(UTC).isoformat(),
        "data": data,
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
                    headers: dict[str, str], deadline_s: float = ATTEMPT_DEADLINE_S,
                    follow_redirects: bool = False) -> AttemptResult:
    """POST once with a total deadline; never raises for receiver or network failures."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(deadline_s):
            request = client.build_request("POST", url, content=body, headers={
                "content-type": "application/json", **headers})
            response = await client.send(request, stream=True, follow_redirects=follow_redirects)
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
    return _answered(started, t0, response.status_code, response.headers, raw)


def _answered(started: datetime, t0: float, status: int, headers: Any, raw: bytes) -> AttemptResult:
    """Classify a response the receiver gave (headers: any case-insensitive mapping)."""
    outcome = classify_status(status)
    if not outcome.ok and headers.get("webhook-delivery", "").lower() == "abort-message":
        outcome = Outcome("final", "aborted_by_receiver")  # the receiver asks us to stop
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(headers.get("retry-after"))
    return AttemptResult(
        started_at=started, duration_ms=(time.perf_counter() - t0) * 1000, outcome=outcome,
        status_code=status, excerpt=_text(raw),
        error_message=None if outcome.ok else f"HTTP {status}", retry_after_s=retry_after,
    )


def _text(raw: bytes) -> str:
    """A response excerpt as text: invalid UTF-8 and NUL characters (which PostgreSQL's text
    and jsonb cannot hold: the whole batch's record failed) become U+FFFD."""
    return raw.decode("utf-8", "replace").replace("\x00", "\ufffd")


class DirectPoster:
    """The hot path: POST straight through the guarded aiohttp session (no httpx layer).

    Measured here, httpx's request/response model (URL parsing, cookies, header objects)
    costs more CPU per delivery than the network work; this poster keeps the same SSRF guard
    (the connector's resolver and socket factory, plus the static host check per URL) and the
    same classification. Endpoints that follow redirects still use the httpx client.
    """

    def __init__(self, session: aiohttp.ClientSession, policy: DestinationPolicy) -> None:
        self.session = session
        self.policy = policy
        self._checked: set[str] = set()  # endpoint URLs that passed the static check

    async def post(self, url: str, body: bytes, headers: dict[str, str],
                   deadline_s: float = ATTEMPT_DEADLINE_S) -> AttemptResult:
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        try:
            if url not in self._checked:
                self.policy.check_url(url)
                self._checked.add(url)
            async with asyncio.timeout(deadline_s):
                async with self.session.post(
                        url, data=body, allow_redirects=False,
                        headers={"content-type": "application/json", **headers}) as response:
                    raw = await _read_capped_aiohttp(response)
        except DestinationBlockedError as exc:
            return _failed(started, t0, "destination_blocked", str(exc))
        except (ValueError, aiohttp.InvalidURL) as exc:
            return _failed(started, t0, "invalid_url", str(exc))
        except TimeoutError as exc:
            return _failed(started, t0, "timeout", f"no complete response within the deadline: {exc!r}")
        except aiohttp.ClientConnectorError as exc:
            if reason := blocked_reason(exc):
                return _failed(started, t0, "destination_blocked", reason)
            return _failed(started, t0, "connection_error", str(exc))
        except aiohttp.ClientError as exc:
            if reason := blocked_reason(exc):
                return _failed(started, t0, "destination_blocked", reason)
            return _failed(started, t0, "network_error", str(exc) or repr(exc))
        return _answered(started, t0, response.status, response.headers, raw)

    async def aclose(self) -> None:
        await self.session.close()


async def _read_capped_aiohttp(response: aiohttp.ClientResponse, cap: int = EXCERPT_BYTES) -> bytes:
    body = bytearray()
    while len(body) < cap and (chunk := await response.content.read(cap - len(body))):
        body.extend(chunk)
    return bytes(body)


def _failed(started: datetime, t0: float, error_class: str, message: str) -> AttemptResult:
    return AttemptResult(started_at=started, duration_ms=(time.perf_counter() - t0) * 1000,
                         outcome=classify_error(error_class), error_message=message)


def no_attempt(reason: str) -> AttemptResult:
    """The outcome of a delivery refused before any request (deleted or disabled endpoint)."""
    return AttemptResult(started_at=datetime.now(UTC), duration_ms=0.0,
                         outcome=Outcome("final", reason), error_message=reason)
