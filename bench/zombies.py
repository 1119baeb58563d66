"""Zombie detection: `kill -9` a worker while it holds deliveries; how long until it shows as a
zombie, until its deliveries are handed back, until they are delivered — none lost, none
delivered twice beyond at-least-once with the same webhook-id.

    .venv/bin/python -m bench.zombies [--deliveries 200] [--interval 1] [--window 3]
                                      [--sweep-every 1] [--database-url URL]

A real arq worker (the "victim", `jobs.worker.WorkerSettings` with HEARTBEAT_INTERVAL and
HEARTBEAT_ZOMBIE_AFTER set) claims every delivery while the receiver (in this process) holds
their requests; it is killed -9 once all are `running`. A second worker is started, the
receiver answers 200 from then on, and this process polls:

- shown as zombie: `models.queries.list_agents` (what the dashboard reads; the live page adds
  at most the relay's tick, 5 s, measured by tests/e2e/test_zombies.py);
- marked: the sweep (jobs.fleet.sweep_zombies, run here every `--sweep-every` s, as the
  built-in cron job would) set `zombie`;
- handed back: no delivery still `running` under the victim's name;
- delivered: every delivery `succeeded`.

Then every webhook-id the receiver saw is checked: at most one request from the victim (cut
off by the kill) plus one that completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections import Counter
from typing import Any

from aiohttp import web

from bench._common import open_db, stack
from jobs.embedded_redis import free_port


class Receiver:
    """Holds every request while `holding`, then answers 200 at once; counts webhook-ids."""

    def __init__(self) -> None:
        self.holding = True
        self.hits: Counter[str] = Counter()  # webhook-id -> requests received
        self.completed: Counter[str] = Counter()  # webhook-id -> 200s answered
        self.cut_off: Counter[str] = Counter()  # webhook-id -> requests whose client died
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        webhook_id = request.headers.get("webhook-id", "?")
        self.hits[webhook_id] += 1
        while self.holding:
            await asyncio.sleep(0.05)
        if request.transport is None or request.transport.is_closing():
            self.cut_off[webhook_id] += 1  # the killed worker's request: nobody got the 200
        else:
            self.completed[webhook_id] += 1
        return web.Response(text="ok")

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


async def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


async def run(st: Any, args: argparse.Namespace) -> dict[str, Any]:
    from arq.connections import create_pool

    from jobs.fleet import sweep_zombies
    from jobs.operations.publish import publish_message
    from jobs.queue import redis_settings
    from jobs.signing import generate_secret
    from models import queries
    from models.agents import Agent
    from models.deliveries import Delivery
    from models.endpoints import Application, Endpoint
    from models.enums import AgentStatus, DeliveryStatus

    await open_db()
    redis = await create_pool(redis_settings())
    receiver = Receiver()
    runner = await receiver.start()
    app = await Application.create(name=f"bench-zombies-{time.time_ns()}")
    endpoint = await Endpoint.create(
        app=app, url=f"http://127.0.0.1:{receiver.port}/hook", secret=generate_secret(),
        max_in_flight=args.deliveries, retry_config={
            "max_retries": 3, "backoff": "fixed", "base_delay": 1, "max_delay": 1,
            "jitter": False})

    [victim] = st.start_workers(delivery=1, bulk=0)
    await _wait(lambda: Agent.exists(pid=victim.pid), 60, "the victim to register")
    agent_id = (await Agent.get(pid=victim.pid)).id
    ids = []
    for i in range(args.deliveries):
        published = await publish_message(app.id, "bench.zombie", {"n": i}, redis=redis)
        ids += [d["id"] for d in published["deliveries"]]

    async def all_held() -> bool:
        return await Delivery.filter(id__in=ids, status=DeliveryStatus.RUNNING,
                                     claimed_by=agent_id).count() == len(ids)

    await _wait(all_held, 60, "the victim to claim every delivery")
    await _wait(lambda: _true(sum(receiver.hits.values()) >= len(ids)), 60,
                "the receiver to hold every request")

    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.sleep(0.3)  # let the receiver see the victim's connections close
    victim.wait(10)
    receiver.holding = False  # the receiver is healthy again; held requests die with the victim
    st.start_workers(delivery=1, bulk=0)
    marks: dict[str, float] = {}
    next_sweep = killed
    while time.monotonic() - killed < args.timeout:
        now = time.monotonic()
        if now >= next_sweep:
            result = await sweep_zombies({"redis": redis})
            if result["zombies"] and "marked" not in marks:
                marks["marked"] = now - killed
            next_sweep = now + args.sweep_every
        if "shown_zombie" not in marks:
            rows = await queries.list_agents()
            if any(r["id"] == agent_id and r["status"] == "zombie" for r in rows):
                marks["shown_zombie"] = time.monotonic() - killed
        if "handed_back" not in marks and not await Delivery.filter(
                id__in=ids, status=DeliveryStatus.RUNNING, claimed_by=agent_id).exists():
            marks["handed_back"] = time.monotonic() - killed
        if await Delivery.filter(id__in=ids, status=DeliveryStatus.SUCCEEDED).count() == len(ids):
            marks["delivered"] = time.monotonic() - killed
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # anything still arriving would be a duplicate: let it show

    statuses = Counter(s.value for s in await Delivery.filter(id__in=ids).values_list(
        "status", flat=True))
    webhook_ids = {f"msg_{m}" for m in await Delivery.filter(id__in=ids).values_list(
        "message_id", flat=True)}
    agent = await Agent.get(id=agent_id)
    await runner.cleanup()
    await redis.aclose()
    return {
        "deliveries": len(ids), "interval_s": args.interval, "window_s": args.window,
        "sweep_every_s": args.sweep_every,
        **{f"{k}_s": round(v, 2) for k, v in marks.items()},
        "target_shown_s": args.window + 5,
        "agent_status": agent.status.value, "statuses": dict(statuses),
        "lost": len(ids) - statuses.get("succeeded", 0),
        "completed_more_than_once": sum(1 for w in webhook_ids if receiver.completed[w] > 1),
        "requests_beyond_held_plus_one": sum(1 for w in webhook_ids if receiver.hits[w] > 2),
        "never_completed": sum(1 for w in webhook_ids if receiver.completed[w] == 0),
        "requests": sum(receiver.hits[w] for w in webhook_ids),
        "cut_off_by_the_kill": sum(receiver.cut_off[w] for w in webhook_ids),
        "zombie_status_in_db": agent.status == AgentStatus.ZOMBIE,
    }


async def _true(value: bool) -> bool:
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0, help="HEARTBEAT_INTERVAL")
    parser.add_argument("--window", type=float, default=3.0, help="HEARTBEAT_ZOMBIE_AFTER")
    parser.add_argument("--sweep-every", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    env = {"HEARTBEAT_INTERVAL": str(args.interval), "HEARTBEAT_ZOMBIE_AFTER": str(args.window)}
    with stack(args.database_url, **env) as st:
        result = asyncio.run(run(st, args))
    print(json.dumps(result, indent=2))
    ok = (result["lost"] == 0 and result["completed_more_than_once"] == 0
          and result["requests_beyond_held_plus_one"] == 0
          and result.get("shown_zombie_s", 1e9) <= result["target_shown_s"])
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
