"""DLQ reads with a large DLQ: list pages, a filtered page, a deep page, statistics.

    .venv/bin/python -m bench.dlq_queries [--n 1000000] [--database-url URL] [--requests 50]
                                          [--explain] [--reuse] [--only TEXT]

The DLQ is filled straight into the tables (bench/_common.py): N entries over 2 applications ×
10 endpoints, 20 event types, created over 30 days (ascending with id), 70 % active, 10 %
retrying, 15 % resolved, 5 % archived. Requests go through the REST API in this process
(httpx's ASGI transport on `dashboard.api.app:api`, one at a time, with an admin's token, so
authentication and JSON are counted but no network): p50/p95 over `--requests` each, after
two warm-up calls. `--explain` prints PostgreSQL's plan of the queries behind each request
(captured from tortoise's SQL log while the request runs once more).

Filling 1,000,000 entries takes minutes: `--reuse` (with `--database-url`) keeps the database
as an earlier run left it when it holds exactly N entries (migrations still run, so a new
index is built on the existing rows), and fills it as usual when it is empty; `--only stats`
measures only the requests whose label contains that text.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from datetime import timedelta

import httpx

from bench._common import (FillSpec, Stack, describe, fill_dlq, make_endpoints, make_token,
                           open_db, p95, stack)

STATUSES = ["active"] * 14 + ["retrying"] * 2 + ["resolved"] * 3 + ["archived"]


def _status(i: int) -> str:
    return STATUSES[i % len(STATUSES)]


class _SqlLog(logging.Handler):
    """Collects the (query, values) tortoise's asyncpg client logs at DEBUG, and the SET
    statements (a transaction's isolation and planner settings) it runs as scripts."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.sql: list[tuple[str, list]] = []
        self.settings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and len(record.args) == 2:
            query, values = record.args
            if isinstance(query, str) and query.lstrip().upper().startswith(("SELECT", "WITH")):
                self.sql.append((query, list(values or [])))
        elif isinstance(record.msg, str) and record.msg.lstrip().upper().startswith("SET "):
            self.settings.append(record.msg)


async def _explain(client: httpx.AsyncClient, path: str) -> None:
    from tortoise.transactions import in_transaction

    log = _SqlLog()
    logger = logging.getLogger("tortoise.db_client")
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    try:
        (await client.get(path)).raise_for_status()
    finally:
        logger.removeHandler(log)
        logger.setLevel(logging.WARNING)
    async with in_transaction() as conn:
        for script in log.settings:  # as the request's transaction had them
            await conn.execute_script(script)
            print(f"  {script}")
        for query, values in log.sql:
            if "dead_letter" not in query:
                continue  # the token and user look-ups
            rows = await conn.execute_query_dict(f"EXPLAIN (ANALYZE, BUFFERS) {query}", values)
            print(f"  {query}  {values}")
            for row in rows:
                print(f"    {row['QUERY PLAN']}")


async def run(args: argparse.Namespace, st: Stack) -> list[tuple[str, str, str]]:
    from dashboard.api.app import api
    from models.db import close_db

    await open_db()
    token = await make_token()
    reused = await _earlier_fill(args.n) if args.reuse else None
    if reused:
        apps, oldest = reused
        rows = [(f"fill ({args.n:,} entries)", "reused from an earlier run", "")]
    else:
        apps, oldest, seconds = await _fill(st, args.n)
        rows = [(f"fill ({args.n:,} entries)", f"{seconds:.1f} s ({args.n / seconds:,.0f}/s)",
                 "")]
    print(rows[0][0], rows[0][1], flush=True)
    endpoint_id = apps[0][1][3][0]
    cases = [
        ("GET /v1/dlq first page", "/v1/dlq", "< 100 ms"),
        ("GET /v1/dlq filtered (endpoint_id + q)",
         f"/v1/dlq?endpoint_id={endpoint_id}&q=timeout", "< 100 ms"),
        ("GET /v1/dlq filtered (q, a term no entry has)", "/v1/dlq?q=handshake", "< 100 ms"),
        ("GET /v1/dlq filtered (event_type)", "/v1/dlq?event_type=bench.7", "< 100 ms"),
        ("GET /v1/dlq filtered (app_id + status=archived)",
         f"/v1/dlq?app_id={apps[1][0]}&status=archived", "< 100 ms"),
        ("GET /v1/dlq deep page (cursor near the oldest)", f"/v1/dlq?cursor={oldest + 1000}",
         "< 100 ms"),
        ("GET /v1/dlq deep page, filtered (endpoint_id + q)",
         f"/v1/dlq?endpoint_id={endpoint_id}&q=timeout&cursor={oldest + 1000}", "< 100 ms"),
        ("GET /v1/dlq/stats", "/v1/dlq/stats", "< 500 ms"),
    ]
    cases = [case for case in cases if args.only in case[0]]
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                 headers={"Authorization": f"Bearer {token}"},
                                 timeout=120) as client:
        for label, path, target in cases:
            for _ in range(2):
                r = await client.get(path)
                r.raise_for_status()
            found = len(r.json().get("entries", [])) if "entries" in r.json() else None
            samples = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                (await client.get(path)).raise_for_status()
                samples.append((time.perf_counter() - t0) * 1000)
            extra = f"; {found} entries on the page" if found is not None else ""
            print(f"{label} [{path}]: {describe(samples)}{extra}", flush=True)
            rows.append((label, f"p95 {p95(samples):.1f} ms (p50 "
                                f"{sorted(samples)[len(samples) // 2]:.1f}){extra}", target))
            if args.explain and st.is_postgres:
                await _explain(client, path)
    await close_db()
    return rows


async def _fill(st: Stack, n: int) -> tuple[list[tuple[int, list[tuple[int, str]]]], int,
                                            float]:
    """Two applications of 10 endpoints and `n` entries over them: (apps, oldest id, seconds)."""
    apps = [await make_endpoints(st, [f"ok/{a}{e}" for e in range(10)]) for a in range(2)]
    fills = []
    for a, (app_id, endpoints) in enumerate(apps):
        count = n // 2 if a == 0 else n - n // 2
        fills.append(await fill_dlq(st, FillSpec(app_id, endpoints, count, event_types=20,
                                                 payload_bytes=200, spread=timedelta(days=30),
                                                 status=_status)))
    return apps, fills[0].first_id, sum(f.seconds for f in fills)


async def _earlier_fill(n: int) -> tuple[list[tuple[int, list[tuple[int, str]]]], int] | None:
    """What `_fill` made in an earlier run on this database: (apps, oldest id); None when the
    database holds no entries (fill it then)."""
    from models.dead_letters import DeadLetter
    from models.endpoints import Application, Endpoint

    held = await DeadLetter.all().count()
    if held == 0:
        return None
    app_ids = await Application.filter(name__startswith="bench-").order_by(
        "-id").limit(2).values_list("id", flat=True)
    if held != n or len(app_ids) != 2:
        raise SystemExit(f"--reuse: the database holds {held:,} DLQ entries, not {n:,} from an "
                         "earlier run of this bench; run once without --reuse to refill it")
    apps = [(app_id, [(e.id, e.url) for e in await Endpoint.filter(app_id=app_id).order_by("id")])
            for app_id in reversed(app_ids)]
    oldest = await DeadLetter.all().order_by("id").limit(1).values_list("id", flat=True)
    return apps, oldest[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="DLQ entries")
    parser.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    parser.add_argument("--requests", type=int, default=50, help="samples per request kind")
    parser.add_argument("--explain", action="store_true", help="PostgreSQL plans of each query")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the entries an earlier run left in --database-url (no reset, "
                             "no fill) if it holds exactly --n of them")
    parser.add_argument("--only", default="", metavar="TEXT",
                        help="measure only the requests whose label contains TEXT (e.g. stats)")
    args = parser.parse_args()
    if args.reuse and not args.database_url:
        parser.error("--reuse: needs --database-url (the default SQLite file is temporary)")
    with stack(args.database_url, reset=not args.reuse) as st:
        kind = "PostgreSQL" if st.is_postgres else "SQLite"
        print(f"bench.dlq_queries: {kind}, n={args.n:,} (in-process ASGI transport)", flush=True)
        rows = asyncio.run(run(args, st))
    print(f"\n| request ({kind}, {args.n:,} entries) | value | target |\n|---|---|---|")
    for label, value, target in rows:
        print(f"| {label} | {value} | {target} |")


if __name__ == "__main__":
    main()
