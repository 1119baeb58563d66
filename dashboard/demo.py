"""The demo: a receiver whose routes succeed, flake, vanish or stall, and a producer feeding it.

Run it as `python -m dashboard.demo --port P` (what `observatory up --demo` starts).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiohttp import web

from jobs.signing import generate_secret
from models.endpoints import Application, Endpoint

logger = logging.getLogger("observatory.demo")

DEMO_APP = "demo"
ROUTES = {  # route → what an operator sees it do
    "ok": "always 200",
    "flaky": "500 about 30% of the time",
    "gone": "always 410 (the endpoint gets disabled)",
    "slow": "200 after ~3 s",
}
FLAKY_FAILURE_RATE = 0.3
SLOW_DELAY_S = 3.0
EVENT_TYPES = ("order.created", "order.shipped", "invoice.paid", "customer.updated")
SUMMARY_EVERY = 60  # producer progress line every N messages
#: per-route endpoint settings: the flaky one gives up after one quick retry, so ~9 % of its
#: deliveries reach the DLQ (and a Retry there succeeds ~70 % of the time); the gone one hears
#: one event type only, so it does not flood the DLQ
ENDPOINT_SETTINGS: dict[str, dict[str, Any]] = {
    "flaky": {"retry_config": {"max_retries": 1, "backoff": "fixed", "base_delay": 2,
                               "max_delay": 2, "jitter": False}},
    "gone": {"event_types": ["customer.updated"]},
}

#: publish(app_id, event_type, payload, idempotency_key) → the API's answer
PublishFn = Callable[[int, str, dict[str, Any], str | None], Awaitable[Any]]


# --- the receiver ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DemoResponse:
    status: int
    delay_s: float = 0.0


def demo_response(route: str, rng: random.Random, *, failure_rate: float = FLAKY_FAILURE_RATE,
                  slow_delay_s: float = SLOW_DELAY_S) -> DemoResponse:
    """How the receiver answers a request to `/{route}` (404 for unknown routes)."""
    if route == "ok":
        return DemoResponse(200)
    if route == "flaky":
        return DemoResponse(500 if rng.random() < failure_rate else 200)
    if route == "gone":
        return DemoResponse(410)
    if route == "slow":
        return DemoResponse(200, slow_delay_s)
    return DemoResponse(404)


def make_receiver(rng: random.Random | None = None, *, slow_delay_s: float = SLOW_DELAY_S
                  ) -> web.Application:
    """The receiver's aiohttp app; `GET /stats` counts answers per route and status."""
    rng = rng or random.Random()
    stats: Counter[str] = Counter()

    async def receive(request: web.Request) -> web.Response:
        route = request.match_info["route"]
        await request.read()
        answer = demo_response(route, rng, slow_delay_s=slow_delay_s)
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        stats[f"{route} {answer.status}"] += 1
        return web.json_response({"route": route, "status": answer.status},
                                 status=answer.status)

    async def show_stats(request: web.Request) -> web.Response:
        return web.json_response(dict(sorted(stats.items())))

    app = web.Application()
    app.router.add_get("/stats", show_stats)
    app.router.add_route("*", "/{route}", receive)
    return app


async def start_receiver(port: int = 0, **kwargs: Any) -> tuple[web.AppRunner, int]:
    """Serve the receiver on 127.0.0.1:`port` (0: a free one); returns the runner and port."""
    runner = web.AppRunner(make_receiver(**kwargs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, runner.addresses[0][1]


# --- the producer ------------------------------------------------------------------------------

async def ensure_demo_setup(receiver_url: str) -> int:
    """Create (idempotently) the `demo` application and one endpoint per receiver route.

    An endpoint is recognised by its URL path, so a restart on another port moves it there.
    Returns the application id.
    """
    app, _ = await Application.get_or_create(name=DEMO_APP)
    existing = {urlsplit(e.url).path: e for e in await Endpoint.filter(app=app)}
    for route, behaviour in ROUTES.items():
        url = f"{receiver_url.rstrip('/')}/{route}"
        endpoint = existing.get(f"/{route}")
        settings = {"retry_config": None, "event_types": None, **ENDPOINT_SETTINGS.get(route, {})}
        if endpoint is None:
            await Endpoint.create(app=app, url=url, secret=generate_secret(),
                                  description=f"Demo receiver: {behaviour}", **settings)
        else:
            await Endpoint.filter(id=endpoint.id).update(url=url, **settings)
    return app.id


def sample_event(seq: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """An event type and a small JSON payload, varied but plausible."""
    event_type = EVENT_TYPES[seq % len(EVENT_TYPES)]
    customer = rng.randint(1, 500)
    payload: dict[str, Any] = {
        "seq": seq,
        "customer": {"id": f"cus_{customer:04d}", "email": f"customer{customer}@example.com"},
    }
    if event_type.startswith("order."):
        payload.update(order_id=f"ord_{rng.randint(1, 99999):05d}",
                       items=rng.randint(1, 5), total=round(rng.uniform(5, 500), 2))
    elif event_type == "invoice.paid":
        payload.update(invoice_id=f"inv_{rng.randint(1, 99999):05d}",
                       amount=round(rng.uniform(10, 2000), 2), currency="EUR")
    else:
        payload.update(changed=rng.sample(["email", "address", "plan", "name"], 2))
    return event_type, payload


class RouteMissingError(Exception):
    """The API answered that `POST /v1/messages` does not exist (an older server)."""


def rest_publisher(client: httpx.AsyncClient, token: str) -> PublishFn:
    """Publish through `POST /v1/messages` with a bearer token."""
    async def publish(app_id: int, event_type: str, payload: dict[str, Any],
                      idempotency_key: str | None) -> Any:
        body = {"app_id": app_id, "event_type": event_type, "payload": payload,
                "idempotency_key": idempotency_key}
        response = await client.post("/v1/messages", json=body,
                                     headers={"Authorization": f"Bearer {token}"})
        if response.status_code in (404, 405) and _is_missing_route(response):
            raise RouteMissingError(f"{response.request.url} answered {response.status_code}")
        response.raise_for_status()
        return response.json()
    return publish


def _is_missing_route(response: httpx.Response) -> bool:
    """A routing 404/405, as opposed to the API's own "application not found"."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return True  # not the API's JSON error: the route is not there
    return error.get("code") == "method_not_allowed" or error.get("message") == "Not Found"


async def direct_publisher() -> PublishFn:
    """Publish through the jobs operation (the database and Redis, no HTTP)."""
    from jobs.operations.publish import publish_message
    from jobs.queue import connect

    redis = await connect()

    async def publish(app_id: int, event_type: str, payload: dict[str, Any],
                      idempotency_key: str | None) -> Any:
        return await publish_message(app_id, event_type, payload, idempotency_key, redis=redis)
    return publish


class FallbackPublisher:
    """Use `primary` until it reports its route missing, then the direct operation for good."""

    def __init__(self, primary: PublishFn | None,
                 fallback: Callable[[], Awaitable[PublishFn]] = direct_publisher) -> None:
        self._current, self._fallback = primary, fallback

    async def __call__(self, app_id: int, event_type: str, payload: dict[str, Any],
                       idempotency_key: str | None) -> Any:
        if self._current is not None:
            try:
                return await self._current(app_id, event_type, payload, idempotency_key)
            except RouteMissingError as exc:
                logger.warning("%s: publishing through jobs.operations.publish instead", exc)
        self._current = await self._fallback()
        return await self._current(app_id, event_type, payload, idempotency_key)


async def run_producer(app_id: int, publish: PublishFn, *, interval_s: float = 1.0,
                       stop: asyncio.Event, rng: random.Random | None = None,
                       limit: int | None = None) -> int:
    """Publish one sample event every `interval_s` until `stop` (or `limit` events).

    Failures are logged and the loop goes on (the API may be restarting). Returns how many
    publishes succeeded.
    """
    rng, seq, published = rng or random.Random(), 0, 0
    while not stop.is_set() and (limit is None or seq < limit):
        seq += 1
        event_type, payload = sample_event(seq, rng)
        try:
            await publish(app_id, event_type, payload, f"demo-{uuid.uuid4().hex}")
            published += 1
        except Exception as exc:  # noqa: BLE001 - a demo keeps going; the log says why
            first_line = (str(exc).splitlines() or [""])[0]
            logger.warning("publish %s #%d failed: %s: %s", event_type, seq,
                           type(exc).__name__, first_line)
        if seq % SUMMARY_EVERY == 0:
            logger.info("published %d of %d demo messages", published, seq)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
    return published


def demo_token() -> str | None:
    """OBSERVATORY_DEMO_TOKEN, else the token in `$OBSERVATORY_DATA_DIR/credentials`."""
    if token := os.environ.get("OBSERVATORY_DEMO_TOKEN", "").strip():
        return token
    from dashboard.cli.users import read_credentials

    creds = read_credentials()
    return creds.token if creds else None


async def run_demo(port: int, api_url: str, interval_s: float, produce: bool = True) -> None:
    """Receiver and producer in one process, until SIGINT/SIGTERM."""
    from models.db import close_db, init_db

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, bound = await start_receiver(port)
    logger.info("demo receiver on http://127.0.0.1:%d (%s)", bound,
                ", ".join(f"/{r}: {b}" for r, b in ROUTES.items()))
    await init_db()
    try:
        if not produce:
            await stop.wait()
            return
        app_id = await ensure_demo_setup(f"http://127.0.0.1:{bound}")
        token = demo_token()
        if token is None:
            logger.warning("no API token (OBSERVATORY_DEMO_TOKEN or the credentials file): "
                           "publishing through jobs.operations.publish")
        async with httpx.AsyncClient(base_url=api_url, trust_env=False, timeout=10) as client:
            publish = FallbackPublisher(rest_publisher(client, token) if token else None)
            logger.info("demo producer: app %d, one message every %.1fs to %s",
                        app_id, interval_s, api_url)
            await run_producer(app_id, publish, interval_s=interval_s, stop=stop)
    finally:
        await runner.cleanup()
        await close_db()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dashboard.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="receiver port (0: a free one)")
    parser.add_argument("--api-url", default=os.environ.get("OBSERVATORY_API_URL",
                                                            "http://127.0.0.1:3000"))
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between messages")
    parser.add_argument("--no-producer", action="store_true", help="only run the receiver")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per message is noise
    asyncio.run(run_demo(args.port, args.api_url, args.interval, produce=not args.no_producer))


if __name__ == "__main__":
    main()
