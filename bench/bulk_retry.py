"""Bulk Retry All end to end: a full DLQ, the REST API, the workers, the receiver.

    .venv/bin/python -m bench.bulk_retry [--n 100000] [--database-url URL] [--workers 1]
                                         [--cancel-rates 0,1000] [--retries 3000] [--no-engine]
                                         [--single-retries-only] [--load-client httpx]

What runs: the REST API under uvicorn (`dashboard.api.app:api`), and the workers as
`observatory up` starts them — `--workers` × `python -m jobs.run_worker` (main queue) and
one `python -m jobs.run_worker --bulk` (bulk lane) — with OBSERVATORY_BULK_RATE_PER_ENDPOINT=0
(unpaced) for the throughput figures. The DLQ is filled straight into the tables (bench/_common.py)
with N entries of one endpoint on the bench receiver, which answers 200.

Figures:
- `POST /v1/dlq/retry-all` response time (client side; the API and its pools warmed up first);
- entries handed to the fast lane per second: handed / (walked_at − started_at) of the row;
- completion: finished_at − started_at; deliveries/s over that, and the engine's way
  (bench/deliveries.py: deliveries / (last finished − first attempt started));
- CPU per bulk delivery of each process (bulk worker, receiver, API, Redis, PostgreSQL) and
  the Redis commands per delivery;
- the engine's own rate in the same run (`--no-engine` skips it): N messages published to a
  new endpoint while no worker runs, then the workers, measured as bench/deliveries.py does,
  and the ratio bulk / engine (target 0.8);
- Cancel mid-way (at `--cancel-at` of completed, on N fresh entries, once per `--cancel-rates`
  value: 0 = unpaced, where the walker has usually handed everything out before the cancel;
  a paced rate keeps the walker running): attempts started after the cancel, split into those
  of batches already in flight (a batch claims its deliveries before starting them) and those of
  batches that started afterwards (target 0); time from the cancel to the walker job's return
  (arq's job result) and to the final `cancelled` state; entry statuses reconcile;
- `POST /v1/dlq/{id}/retry` latency with 20 concurrent clients over `--retries` distinct entries,
  and the API process's CPU time per request meanwhile (Linux: /proc; latencies on a shared
  machine follow its load, CPU per request much less). The 20 clients are aiohttp sessions by
  default: they share the 2 cores with the API, and httpx clients cost 1.5–2.7 ms of CPU per
  request there, more than the API itself (`--load-client httpx` to see it). `--single-retries-only` runs this part
  alone (the DLQ filled with `--retries` entries, no Retry All before it), to iterate quickly.
Timestamps come from one machine's clock. The machine may be shared: figures are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.deliveries import _Usage, _per, _redis_calls
from bench._common import (Fill, FillSpec, Stack, as_datetime, describe, fill_dlq,
                           http_poster, make_endpoints, make_token, open_db, p95, server_settings,
                           stack)

CLIENTS = 20
FINISHED = ("completed", "cancelled", "failed")


class Bench:
    def __init__(self, args: argparse.Namespace, st: Stack) -> None:
        self.args, self.st = args, st
        self.rows: list[tuple[str, str, str]] = []  # (figure, value, target)

    def report(self, figure: str, value: str, target: str = "") -> None:
        print(f"{figure}: {value}" + (f"   (target {target})" if target else ""), flush=True)
        self.rows.append((figure, value, target))

    async def fill(self, label: str, n: int) -> tuple[int, Fill]:
        """N active entries on a new endpoint of their own (each phase scopes to its
        endpoint, so entries left by another phase are never swept in)."""
        app_id, endpoints = await make_endpoints(self.st, [f"ok/{len(self.rows)}"])
        filled = await fill_dlq(self.st, FillSpec(app_id, endpoints, n))
        if sql := self.args.experiment_sql:  # e.g. an index dropped, to measure its cost
            from tortoise import connections

            await connections.get("default").execute_script(sql)
        self.report(f"fill {label} ({n:,} entries)",
                    f"{filled.seconds:.1f} s ({n / filled.seconds:,.0f} entries/s)")
        return endpoints[0][0], filled


# --- one Retry All -------------------------------------------------------------------------

async def _retry_all(client: httpx.AsyncClient, endpoint_id: int) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    r = await client.post("/v1/dlq/retry-all", json={"scope": {"endpoint_id": endpoint_id}})
    ms = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    return ms, r.json()


async def _wait_finished(op_id: int, timeout_s: float) -> Any:
    from models.bulk import BulkOperation

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        op = await BulkOperation.get(id=op_id)
        if op.state.value in FINISHED:
            return op
        await asyncio.sleep(0.1)
    raise TimeoutError(f"operation {op_id} still {op.state.value} after {timeout_s:.0f} s "
                       f"(worker logs in the bench's temporary directory)")


async def _engine_rate(op_id: int) -> tuple[int, float]:
    """(attempts, deliveries/s the engine's way) over the operation's deliveries."""
    from tortoise import connections

    rows = await connections.get("default").execute_query_dict(
        "SELECT COUNT(*) AS n, MIN(a.started_at) AS t0, MAX(d.finished_at) AS t1 "
        "FROM delivery d JOIN attempt a ON a.delivery_id = d.id "
        f"WHERE d.bulk_operation_id = {int(op_id)}")
    row = rows[0]
    if not row["n"]:
        return 0, 0.0
    span = (as_datetime(row["t1"]) - as_datetime(row["t0"])).total_seconds()
    return int(row["n"]), row["n"] / span


async def throughput_run(b: Bench, client: httpx.AsyncClient) -> None:
    n = b.args.n
    endpoint_id, _ = await b.fill("throughput", n)
    usage, cpu0, commands0 = _Usage(), b.st.cpu_s(), await _redis_calls()
    ms, started = await _retry_all(client, endpoint_id)
    b.report(f"POST /v1/dlq/retry-all response, {n:,} entries", f"{ms:.0f} ms", "< 200 ms")
    op = await _wait_finished(started["operation_id"], b.args.timeout)
    walked = (op.walked_at - op.started_at).total_seconds()
    b.report("entries handed to the fast lane", f"{op.handed / walked:,.0f}/s "
             f"({op.handed:,} in {walked:.2f} s)", ">= 20,000/s")
    took = (op.finished_at - op.started_at).total_seconds()
    b.report("end-to-end completion", f"{took:.1f} s, {op.succeeded / took:,.0f} deliveries/s "
             f"(succeeded {op.succeeded:,}, failed {op.failed:,}, skipped {op.skipped:,})")
    b.report("CPU per bulk delivery (Retry All → finished)", usage.report(max(op.succeeded, 1)))
    b.report("CPU per bulk delivery by process", _by_process(
        cpu0, b.st.cpu_s(), max(op.succeeded, 1)))
    b.report("Redis commands per bulk delivery", _per(commands0, await _redis_calls(),
                                                     max(op.succeeded, 1)))
    attempts, rate = await _engine_rate(op.id)
    b.bulk_rate = rate
    b.report("bulk deliveries/s the engine's way (first attempt → last finished)",
             f"{rate:,.0f}/s over {attempts:,} attempts",
             ">= 0.8x bench/deliveries.py in the same run")
    await _entry_statuses(b, endpoint_id, "after Retry All")


async def engine_run(b: Bench, workers: list[Any]) -> list[Any]:
    """The engine's own rate in this run, as bench/deliveries.py measures it: N messages
    published (batch API op) to a new endpoint on the same receiver while no worker runs,
    then the workers started; deliveries / (first attempt started → last finished). Returns
    the workers running afterwards."""
    from bench.deliveries import _publish, _rate

    st, n = b.st, b.args.n
    app_id, endpoints = await make_endpoints(st, [f"ok/engine-{len(b.rows)}"])
    st.stop(workers)
    await _publish(app_id, n)
    workers = await _start_workers(st, b.args.workers, 0)
    from models.deliveries import Delivery
    from models.enums import DeliveryStatus

    deadline = time.monotonic() + b.args.timeout
    while await Delivery.filter(endpoint_id=endpoints[0][0], status__in=[
            DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED]).count() < n:
        if time.monotonic() > deadline:
            raise TimeoutError("the engine run did not finish (worker logs in the bench's "
                               "temporary directory)")
        await asyncio.sleep(0.5)
    rate = await _rate([endpoints[0][0]])
    b.report("engine deliveries/s in the same run (bench/deliveries.py's way)",
             f"{rate:,.0f}/s over {n:,} messages")
    if bulk_rate := getattr(b, "bulk_rate", None):
        b.report("bulk / engine, deliveries/s", f"{bulk_rate / rate:.2f}", ">= 0.8")
    return workers


def _by_process(before: dict[str, float], after: dict[str, float], n: int) -> str:
    """µs of CPU per delivery of each role between two `Stack.cpu_s` readings."""
    return ", ".join(f"{role} {(after[role] - before.get(role, 0.0)) / n * 1e6:,.0f} µs"
                     for role in sorted(after))


async def _entry_statuses(b: Bench, endpoint_id: int, when: str) -> Counter[str]:
    from models.dead_letters import DeadLetter

    counts: Counter[str] = Counter()
    for status in await DeadLetter.filter(endpoint_id=endpoint_id).values_list("status",
                                                                                flat=True):
        counts[str(getattr(status, "value", status))] += 1
    b.report(f"entry statuses {when}", ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    return counts


async def walker_alone(b: Bench, client: httpx.AsyncClient) -> None:
    """The walker's own rate, without deliveries competing for its event loop: Retry All
    while no bulk worker runs, then `walk_bulk_operation` in this process (the workers
    started afterwards deliver what it handed out; the queued walker job finds nothing to do)."""
    from jobs.queue import connect
    from models.bulk import BulkOperation

    from jobs.operations import bulk
    try:  # the walker's module (split out of bulk.py in the working tree)
        from jobs.operations import bulk_walk as walker_module
    except ImportError:
        walker_module = bulk

    endpoint_id, _ = await b.fill("walker-alone", b.args.n)
    os.environ["OBSERVATORY_BULK_RATE_PER_ENDPOINT"] = "0"  # as the workers have it
    if size := b.args.walk_batch:  # an experiment: entries per walker step (WALK_BATCH unpaced)
        walker_module._Pacer.batch = property(lambda self: size)  # type: ignore
    _, started = await _retry_all(client, endpoint_id)
    redis = await connect()
    t0, cpu0, usage = time.perf_counter(), time.process_time(), _Usage()
    result = await walker_module.walk_bulk_operation({"redis": redis}, started["operation_id"])
    took = time.perf_counter() - t0
    handed = (await BulkOperation.get(id=started["operation_id"])).handed
    b.report("CPU per entry handed, walker alone", f"walker process "
             f"{(time.process_time() - cpu0) / max(handed, 1) * 1e6:,.0f} µs, "
             + usage.report(max(handed, 1)))
    await redis.aclose()
    op = await BulkOperation.get(id=started["operation_id"])
    b.report(f"entries handed, walker alone (no deliveries in its process), walker batch "
             f"{b.args.walk_batch or 'as shipped'}",
             f"{op.handed / took:,.0f}/s ({op.handed:,} in {took:.2f} s, {result})",
             ">= 20,000/s")


# --- Retry All then Cancel -------------------------------------------------------------------

async def _walker_result(op_id: int) -> Any:
    """The last arq result of the operation's walker job (arq keeps results 60 s; results
    expiring while they are listed are passed over)."""
    from arq.constants import result_key_prefix

    from jobs.queue import connect

    redis = await connect()
    found = []
    try:
        for key in await redis.keys(result_key_prefix + "*"):
            try:
                r = await redis._get_job_result(key)
            except KeyError:
                continue
            if r.function == "walk_bulk_operation" and r.args and r.args[0] == op_id:
                found.append(r)
    finally:
        await redis.aclose()
    return max(found, key=lambda r: r.finish_time) if found else None


async def cancel_run(b: Bench, client: httpx.AsyncClient, rate: float) -> None:
    from jobs.operations.bulk import progress_key
    from jobs.queue import connect

    n, label = b.args.n, f"cancel@rate={rate:g}/s"
    endpoint_id, _ = await b.fill(label, n)
    _, started = await _retry_all(client, endpoint_id)
    op_id, total = started["operation_id"], started["total"]
    redis = await connect()
    mark = int(total * b.args.cancel_at)
    deadline = time.monotonic() + b.args.timeout
    while int(await redis.hget(progress_key(op_id), "completed") or 0) < mark:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: {mark} completed not reached")
        await asyncio.sleep(0.005)
    sent = datetime.now(UTC)
    r = await client.post(f"/v1/operations/{op_id}/cancel", json={"reason": "bench"})
    answered = datetime.now(UTC)
    r.raise_for_status()
    op = await _wait_finished(op_id, b.args.timeout)
    for _ in range(100):
        if (result := await _walker_result(op_id)) is not None:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"{label}: no result of the walker job (expired after 60 s?)")
    walker_done_before = result.finish_time <= sent
    await redis.aclose()
    b.report(f"{label}: cancel issued at", f"{mark:,}/{total:,} completed; POST cancel "
             f"answered in {(answered - sent).total_seconds() * 1000:.0f} ms")
    if walker_done_before:
        b.report(f"{label}: cancel → walker stopped", "walker had already handed out every "
                 f"entry {(sent - result.finish_time).total_seconds():.2f} s before the cancel "
                 f"(result {result.result!r})", "< 1 s")
    else:
        b.report(f"{label}: cancel → walker stopped",
                 f"{(result.finish_time - sent).total_seconds() * 1000:.0f} ms "
                 f"(walker result {result.result!r})", "< 1 s")
    b.report(f"{label}: cancel → state cancelled (in-flight finished)",
             f"{(op.finished_at - sent).total_seconds():.2f} s (state {op.state.value})")
    await _started_after(b, label, op_id, sent, answered)
    b.report(f"{label}: figures", f"total {op.total:,} = completed {op.completed:,} "
             f"(succeeded {op.succeeded:,}, failed {op.failed:,}) + cancelled "
             f"{op.cancelled_count:,} + skipped {op.skipped:,}; handed {op.handed:,}")
    counts = await _entry_statuses(b, endpoint_id, f"{label}: after cancel")
    ok = (sum(counts.values()) == total and counts.get("retrying", 0) == 0
          and counts.get("resolved", 0) == op.succeeded)
    b.report(f"{label}: no entry lost or stuck", "yes" if ok else "NO")


async def _started_after(b: Bench, label: str, op_id: int, sent: datetime,
                         answered: datetime) -> None:
    """Attempts of the operation started after the cancel, by batch (claim_token): a batch
    with an attempt started before the cancel was in flight; the others started after it."""
    from models.deliveries import Attempt

    rows = await Attempt.filter(delivery__bulk_operation_id=op_id).values_list(
        "started_at", "delivery__claim_token")
    first: dict[str, datetime] = {}
    for started_at, token in rows:
        first[token] = min(first.get(token, started_at), started_at)
    after_sent = [(s, t) for s, t in rows if s > sent]
    after_answer = [(s, t) for s, t in rows if s > answered]
    in_flight = [1 for s, t in after_answer if first[t] <= answered]
    late = sorted({first[t] for s, t in after_answer if first[t] > answered})
    if late:  # how close to the cancel those batches began (a flag read just before it?)
        gaps = ", ".join(f"{(t - answered).total_seconds() * 1000:.0f}" for t in late[:5])
        print(f"{label}: batches begun after the cancel answered, first attempt +{gaps} ms",
              flush=True)
    b.report(f"{label}: attempts started after the cancel",
             f"{len(after_sent):,} after it was sent, {len(after_answer):,} after it answered, "
             f"of which {len(in_flight):,} in batches already in flight and "
             f"{len(after_answer) - len(in_flight):,} in batches started after it",
             "none beyond those in flight")


# --- single retries under 20 clients ---------------------------------------------------------

async def single_retries(b: Bench, base: str, token: str) -> None:
    n = b.args.retries
    _, filled = await b.fill("single-retries", n)
    ids = asyncio.Queue[int]()
    for entry_id in range(filled.first_id, filled.last_id + 1):
        ids.put_nowait(entry_id)
    samples: list[float] = []
    errors: Counter[int] = Counter()

    async def client_loop(stop_after: int | None = None) -> None:
        async with http_poster(b.args.load_client, base, token) as post:
            await post("/v1/operations", None)  # connect and warm up outside the samples
            while not ids.empty() and (stop_after is None or len(samples) < stop_after):
                entry_id = ids.get_nowait()
                t0 = time.perf_counter()
                status = await post(f"/v1/dlq/{entry_id}/retry", b"{}")
                samples.append((time.perf_counter() - t0) * 1000)
                if status != 202:
                    errors[status] += 1

    solo = max(n // 10, 1)  # the service time first: one client, one request at a time
    await asyncio.gather(client_loop(stop_after=solo))
    b.report(f"POST /v1/dlq/{{id}}/retry, 1 client, {solo:,} entries", describe(samples))
    samples.clear()
    cpu0, mine0, t0 = _api_cpu_s(b.st), time.process_time(), time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(CLIENTS)))
    took, cpu = time.perf_counter() - t0, _api_cpu_s(b.st) - cpu0
    mine = time.process_time() - mine0
    n -= solo
    b.report(f"POST /v1/dlq/{{id}}/retry, {CLIENTS} clients ({b.args.load_client}), {n:,} entries",
             f"{describe(samples)}; {n / took:,.0f} req/s; API CPU {cpu / n * 1000:.2f} ms per "
             f"request (clients' {mine / n * 1000:.2f} ms); non-202: {dict(errors) or 'none'}",
             "p95 < 50 ms")
    b.rows[-1] = (b.rows[-1][0], f"p95 {p95(samples):.1f} ms", b.rows[-1][2])


def _api_cpu_s(st: Stack) -> float:
    """CPU seconds (user + system) the API process has used so far (Linux; 0 elsewhere)."""
    for proc in st.procs:
        if "dashboard.api.app:api" in proc.args:
            try:
                with open(f"/proc/{proc.pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                return 0.0
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


# --- main ------------------------------------------------------------------------------------

async def _start_workers(st: Stack, count: int, rate: float) -> list[Any]:
    """Delivery and bulk workers with the given bulk rate, once they poll their queues."""
    from jobs.queue import bulk_queue_name, connect, queue_name

    redis = await connect()
    await redis.delete(f"{queue_name()}:health-check", f"{bulk_queue_name()}:health-check")
    await redis.aclose()
    workers = st.start_workers(delivery=count, bulk=1,
                               OBSERVATORY_BULK_RATE_PER_ENDPOINT=f"{rate:g}")
    await _wait_workers(count)
    return workers


async def _wait_workers(count: int) -> None:
    """Until every worker has started its poll loop (arq's health-check keys)."""
    from jobs.queue import bulk_queue_name, connect, queue_name

    redis = await connect()
    try:
        for key in (f"{queue_name()}:health-check", f"{bulk_queue_name()}:health-check"):
            while not await redis.exists(key):
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    await asyncio.sleep(0.5 if count > 1 else 0)


async def run(args: argparse.Namespace, st: Stack) -> Bench:
    from models.db import close_db

    b = Bench(args, st)
    await open_db(proposed_indexes=args.proposed_indexes)
    if settings := await server_settings():
        b.report("database server", settings)
    token = await make_token()
    base = st.start_api()
    workers = await _start_workers(st, args.workers, 0)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
            for _ in range(3):  # the API's pools and token path warm
                (await client.get("/v1/operations")).raise_for_status()
            if not args.single_retries_only:
                workers = await _bulk_runs(b, client, workers)
        if args.retries:  # `--retries 0` skips them
            await single_retries(b, base, token)
    finally:
        st.stop(workers)
        await close_db()
    return b


async def _bulk_runs(b: Bench, client: httpx.AsyncClient, workers: list[Any]) -> list[Any]:
    """Retry All's figures: the throughput run, the walker alone, the cancel runs; returns
    the workers running afterwards (some runs restart them)."""
    args, st = b.args, b.st
    await throughput_run(b, client)
    if args.engine:
        workers = await engine_run(b, workers)
    if args.walker_alone:
        st.stop(workers)
        await walker_alone(b, client)
        workers = await _start_workers(st, args.workers, 0)
        await _wait_finished((await _last_operation()), args.timeout)
    for rate in args.cancel_rates:
        if rate:  # the bulk worker reads the rate when a walk starts
            st.stop(workers)
            workers = await _start_workers(st, args.workers, rate)
        await cancel_run(b, client, rate)
    return workers


async def _last_operation() -> int:
    from models.bulk import BulkOperation

    return (await BulkOperation.all().order_by("-id").first()).id  # type: ignore[union-attr]


def _rates(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="DLQ entries per Retry All")
    parser.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    parser.add_argument("--workers", type=int, default=1, help="delivery workers (main queue)")
    parser.add_argument("--cancel-rates", type=_rates, default=[0.0, 1000.0],
                        help="one cancel run per bulk rate per endpoint (0 = unpaced)")
    parser.add_argument("--no-engine", dest="engine", action="store_false",
                        help="skip the engine run (the fast lane's own rate, for the ratio)")
    parser.add_argument("--no-walker-alone", dest="walker_alone", action="store_false",
                        help="skip the walker-alone run (its own rate, no deliveries beside it)")
    parser.add_argument("--proposed-indexes", action="store_true",
                        help="create the indexes bench/_common.py proposes, by hand")
    parser.add_argument("--walk-batch", type=int, default=0,
                        help="walker-alone run only: entries per walker batch (experiment)")
    parser.add_argument("--cancel-at", type=float, default=0.3, help="fraction completed")
    parser.add_argument("--retries", type=int, default=3000, help="single retries (20 clients)")
    parser.add_argument("--load-client", choices=("httpx", "aiohttp"), default="aiohttp",
                        help="HTTP client of the single retries' 20 clients")
    parser.add_argument("--single-retries-only", action="store_true",
                        help="only the single retries under 20 clients (the DLQ filled with "
                             "--retries entries; no Retry All before them)")
    parser.add_argument("--experiment-sql", default="",
                        help="SQL run after each fill, before its Retry All (an experiment)")
    parser.add_argument("--timeout", type=float, default=1800, help="per operation, seconds")
    args = parser.parse_args()
    with stack(args.database_url) as st:
        kind = "PostgreSQL" if st.is_postgres else "SQLite"
        scope = "single retries only" if args.single_retries_only else f"n={args.n:,}"
        print(f"bench.bulk_retry: {kind}, {scope}, proposed indexes: "
              f"{args.proposed_indexes}, logs in {st.tmp}", flush=True)
        b = asyncio.run(run(args, st))
    print(f"\n| figure ({kind}, {scope}) | value | target |\n|---|---|---|")
    for figure, value, target in b.rows:
        print(f"| {figure} | {value} | {target} |")


if __name__ == "__main__":
    main()
