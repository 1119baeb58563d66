"""Retrying one DLQ entry: the rule shared by every surface."""

from __future__ import annotations

import asyncio
import json

import pytest

from jobs.errors import (AlreadyInFlightError, ConfigurationGoneError, NotFoundError,
                         NotRetryableError)
from jobs.operations.retry import retry_dead_letter
from models.audit import AuditLog
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint
from tests.receiver import Reply


async def test_retry_creates_new_delivery_and_keeps_original(db, redis, receiver):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    original = await Delivery.get(id=entry.delivery_id)

    result = await retry_dead_letter(entry.id, "alice", redis=redis)

    new = await Delivery.get(id=result["delivery_id"])
    assert new.id != original.id
    assert (new.status, new.retry_of_id, new.message_id) == (
        DeliveryStatus.QUEUED, original.id, original.message_id)
    assert new.metadata["__retry_metadata"]["dead_letter_id"] == entry.id
    after = await Delivery.get(id=original.id)
    assert (after.status, after.updated_at, after.finished_at) == (
        DeliveryStatus.FAILED, original.updated_at, original.finished_at)
    refreshed = await DeadLetter.get(id=entry.id)
    assert (refreshed.status, refreshed.retry_count) == (DeadLetterStatus.RETRYING, 1)
    [row] = await AuditLog.filter(action="dlq.retry")
    assert row.actor == "alice" and row.target_id == str(entry.id)
    assert row.details == {"original_delivery_id": original.id, "new_delivery_id": new.id}
    assert await redis.zcard(__import__("jobs.queue").queue.queue_name()) == 1


async def test_successful_retry_resolves_the_entry(db, redis, receiver, run_worker):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    await retry_dead_letter(entry.id, "alice", redis=redis)
    await run_worker()
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.RESOLVED


async def test_failed_retry_reactivates_the_same_entry(db, redis, receiver, run_worker):
    receiver.script("/bad", Reply(400))
    entry = await make_dead_letter(await make_endpoint(receiver.url("/bad")))
    await retry_dead_letter(entry.id, "alice", redis=redis)
    await run_worker()
    refreshed = await DeadLetter.get(id=entry.id)
    assert refreshed.status == DeadLetterStatus.ACTIVE
    assert refreshed.failure_reason == "non_retryable_status"
    assert len(refreshed.error_history) == 4  # three before, one from the retry
    assert await DeadLetter.all().count() == 1


@pytest.mark.parametrize("status", [DeadLetterStatus.RESOLVED, DeadLetterStatus.ARCHIVED])
async def test_not_active_is_refused(db, redis, receiver, status):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")), status=status)
    with pytest.raises(NotRetryableError, match="only active entries"):
        await retry_dead_letter(entry.id, "alice", redis=redis)
    assert await Delivery.all().count() == 1
    [refused] = await AuditLog.all()  # the refusal is on record, nothing else
    assert (refused.action, refused.actor, refused.details["code"]) == (
        "dlq.retry_refused", "alice", "not_retryable")


async def test_deleted_endpoint_is_refused(db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    entry = await make_dead_letter(endpoint)
    await endpoint.delete()
    with pytest.raises(ConfigurationGoneError, match="original configuration could not be found"):
        await retry_dead_letter(entry.id, "alice", redis=redis)
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.ACTIVE


async def test_retry_in_flight_is_refused(db, redis, receiver):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    await retry_dead_letter(entry.id, "alice", redis=redis)
    with pytest.raises(AlreadyInFlightError):
        await retry_dead_letter(entry.id, "bob", redis=redis)
    assert await Delivery.filter(retry_of_id=entry.delivery_id).count() == 1


async def test_concurrent_clicks_make_one_retry(db, redis, receiver):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    results = await asyncio.gather(*(retry_dead_letter(entry.id, f"u{i}", redis=redis)
                                     for i in range(5)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, AlreadyInFlightError) for r in results if isinstance(r, Exception))
    assert await Delivery.filter(retry_of_id=entry.delivery_id).count() == 1


async def test_unknown_entry_is_not_found(db, redis):
    with pytest.raises(NotFoundError):
        await retry_dead_letter(999_999, "alice", redis=redis)


async def test_fifty_concurrent_rest_clicks_make_one_delivery_and_every_click_is_audited(
        db, redis, receiver):
    import httpx

    from dashboard.api.app import api
    from models.auth import create_user

    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    tokens = [(await create_user(f"op{i}", "operator"))[2] for i in range(5)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api),
                                 base_url="http://test") as client:
        answers = await asyncio.gather(*(
            client.post(f"/v1/dlq/{entry.id}/retry",
                        headers={"Authorization": f"Bearer {tokens[i % 5]}"})
            for i in range(50)))

    codes = sorted(a.status_code for a in answers)
    assert codes == [202] + [409] * 49
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "already_in_flight"}
    assert await Delivery.filter(retry_of_id=entry.delivery_id).count() == 1
    assert await AuditLog.filter(action="dlq.retry").count() == 1
    refused = await AuditLog.filter(action="dlq.retry_refused")
    assert len(refused) == 49 and {r.details["code"] for r in refused} == {"already_in_flight"}
    assert (await DeadLetter.get(id=entry.id)).retry_count == 1


async def test_retry_links_the_entry_and_enqueues_one_deliver_job_for_the_first_try(
        db, redis, receiver):
    from jobs.queue import queue_name

    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))

    result = await retry_dead_letter(entry.id, "alice", redis=redis)

    refreshed = await DeadLetter.get(id=entry.id)
    assert refreshed.last_retry_delivery_id == result["delivery_id"]  # type: ignore[attr-defined]
    [job] = await redis.queued_jobs(queue_name=queue_name())
    assert (job.function, job.args, job.job_try) == ("deliver", (result["delivery_id"],), None)
    assert await redis.exists(f"arq:job:{result['delivery_id']}:1")


async def test_enqueueing_the_same_try_again_is_a_no_op(db, redis):
    from jobs.queue import delivery_command, queue_name

    for expected in (1, 0):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.execute_command(*delivery_command(redis, 41, attempt=2))
            [added] = await pipe.execute()
        assert added == expected

    assert await redis.zrange(queue_name(), 0, -1) == [b"41:2"]


async def test_the_hand_over_command_publishes_its_events_new_job_or_not(db, redis):
    from jobs.queue import delivery_command

    pubsub = redis.pubsub()
    await pubsub.subscribe(get_settings().events_channel)
    events = [{"type": "dlq.changed", "id": 7, "status": "retrying"},
              {"type": "delivery.updated", "id": 41, "status": "queued"}]
    try:
        added = [await redis.execute_command(*delivery_command(redis, 41, events=events))
                 for _ in range(2)]
        seen = []
        for _ in range(20):  # bounded; None also answers the subscribe confirmation
            if msg := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1):
                seen.append(json.loads(msg["data"]))
    finally:
        await pubsub.aclose()

    assert added == [1, 0]
    assert seen == events * 2


async def test_a_refused_retry_changes_nothing_and_is_audited_once(db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    entry = await make_dead_letter(endpoint)
    await endpoint.delete()

    with pytest.raises(ConfigurationGoneError):
        await retry_dead_letter(entry.id, "alice", redis=redis)

    after = await DeadLetter.get(id=entry.id)
    assert (after.status, after.retry_count, after.last_retry_delivery_id) == (  # type: ignore[attr-defined]
        DeadLetterStatus.ACTIVE, 0, None)
    assert await Delivery.all().count() == 1
    assert [(a.action, a.details["code"]) for a in await AuditLog.all()] == [
        ("dlq.retry_refused", "configuration_gone")]


async def test_a_retry_inside_a_callers_transaction_is_undone_with_it(db, redis, receiver):
    from tortoise.transactions import in_transaction

    class Undo(Exception):
        pass

    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    with pytest.raises(Undo):
        async with in_transaction():
            result = await retry_dead_letter(entry.id, "alice", redis=redis)
            assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.RETRYING
            raise Undo

    assert await Delivery.filter(id=result["delivery_id"]).count() == 0
    after = await DeadLetter.get(id=entry.id)
    assert (after.status, after.retry_count) == (DeadLetterStatus.ACTIVE, 0)
    assert await AuditLog.all().count() == 0
    async with in_transaction():  # and kept when the caller's transaction commits
        result = await retry_dead_letter(entry.id, "alice", redis=redis)
    assert (await Delivery.get(id=result["delivery_id"])).retry_of_id == entry.delivery_id  # type: ignore[attr-defined]
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.RETRYING


async def test_a_statement_failing_mid_retry_undoes_the_claim_and_raises_tortoises_error(
        db, redis, receiver):
    """SQLite runs the retry's four statements as one transaction on aiosqlite's thread: the
    new delivery's INSERT failing (its message is gone, a foreign key) rolls the claim back."""
    from tortoise import connections
    from tortoise.exceptions import IntegrityError

    if db.startswith("postgres"):
        pytest.skip("SQLite's transaction (PostgreSQL's is one statement)")
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    conn = connections.get("default")
    await conn.execute_script("PRAGMA foreign_keys=OFF")
    try:
        await conn.execute_query("UPDATE dead_letter SET message_id = 999999 WHERE id = ?",
                                 [entry.id])
    finally:
        await conn.execute_script("PRAGMA foreign_keys=ON")

    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        await retry_dead_letter(entry.id, "alice", redis=redis)

    after = await DeadLetter.get(id=entry.id)
    assert (after.status, after.retry_count, after.last_retry_delivery_id) == (  # type: ignore[attr-defined]
        DeadLetterStatus.ACTIVE, 0, None)
    assert await Delivery.all().count() == 1
    assert await AuditLog.all().count() == 0
    assert await redis.zcard(__import__("jobs.queue").queue.queue_name()) == 0
    # nothing left open: with its message back the entry retries
    await conn.execute_query("UPDATE dead_letter SET message_id = ? WHERE id = ?",
                             [entry.message_id, entry.id])  # type: ignore[attr-defined]
    result = await retry_dead_letter(entry.id, "alice", redis=redis)
    assert (await Delivery.get(id=result["delivery_id"])).message_id == entry.message_id  # type: ignore[attr-defined]


async def test_concurrent_sqlite_retries_share_a_transaction_and_one_failing_undoes_only_itself(
        db, redis, receiver, monkeypatch):
    """SQLite: retries arriving together are written in one transaction (group commit), each
    in its own savepoint: the one whose INSERT fails is undone alone and gets tortoise's error,
    the others are done; a second click on an entry of the group is refused as usual."""
    from tortoise import connections
    from tortoise.exceptions import IntegrityError

    from jobs.operations import retry as retry_module

    if db.startswith("postgres"):
        pytest.skip("SQLite's group commit (PostgreSQL's retry is one statement)")
    endpoint = await make_endpoint(receiver.url("/ok"))
    entries = [await make_dead_letter(endpoint) for _ in range(6)]
    broken = entries[2]
    conn = connections.get("default")
    await conn.execute_script("PRAGMA foreign_keys=OFF")
    try:
        await conn.execute_query("UPDATE dead_letter SET message_id = 999999 WHERE id = ?",
                                 [broken.id])
    finally:
        await conn.execute_script("PRAGMA foreign_keys=ON")
    sizes: list[int] = []
    real = retry_module._sqlite_retry_transaction

    def counting(db_, items):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return real(db_, items)

    monkeypatch.setattr(retry_module, "_sqlite_retry_transaction", counting)

    results = await asyncio.gather(
        *(retry_dead_letter(e.id, f"u{i}", redis=redis) for i, e in enumerate(entries)),
        retry_dead_letter(entries[0].id, "late", redis=redis), return_exceptions=True)

    assert sizes == [7]  # one transaction for the seven
    assert isinstance(results[2], IntegrityError)
    assert isinstance(results[6], AlreadyInFlightError)
    done = [r for i, r in enumerate(results) if i not in (2, 6)]
    assert [r["dead_letter_id"] for r in done] == [e.id for i, e in enumerate(entries) if i != 2]
    after = {e.id: e for e in await DeadLetter.all()}
    assert (after[broken.id].status, after[broken.id].retry_count,
            after[broken.id].last_retry_delivery_id) == (DeadLetterStatus.ACTIVE, 0, None)  # type: ignore[attr-defined]
    for r in done:
        entry = after[r["dead_letter_id"]]
        assert (entry.status, entry.retry_count, entry.last_retry_delivery_id) == (  # type: ignore[attr-defined]
            DeadLetterStatus.RETRYING, 1, r["delivery_id"])
        assert (await Delivery.get(id=r["delivery_id"])).retry_of_id == entry.delivery_id  # type: ignore[attr-defined]
    assert await Delivery.filter(retry_of_id__not_isnull=True).count() == 5
    audit = sorted((a.action, a.target_id) for a in await AuditLog.all())
    assert audit == sorted([("dlq.retry", str(r["dead_letter_id"])) for r in done]
                           + [("dlq.retry_refused", str(entries[0].id))])
    assert await redis.zcard(__import__("jobs.queue").queue.queue_name()) == 5


async def test_a_sqlite_retry_cancelled_before_its_turn_is_left_out(db, redis, receiver):
    from tortoise import connections

    if db.startswith("postgres"):
        pytest.skip("SQLite's group commit")
    endpoint = await make_endpoint(receiver.url("/ok"))
    first, second = [await make_dead_letter(endpoint) for _ in range(2)]
    conn = connections.get("default")
    async with conn.acquire_connection():  # the connection busy: both wait for their turn
        a = asyncio.ensure_future(retry_dead_letter(first.id, "alice", redis=redis))
        b = asyncio.ensure_future(retry_dead_letter(second.id, "bob", redis=redis))
        await asyncio.sleep(0.05)
        b.cancel()
    assert (await a)["dead_letter_id"] == first.id
    with pytest.raises(asyncio.CancelledError):
        await b
    assert (await DeadLetter.get(id=second.id)).status == DeadLetterStatus.ACTIVE
    assert await AuditLog.filter(target_id=str(second.id)).count() == 0


async def test_concurrent_hand_overs_go_to_redis_in_one_pipeline(db, redis, receiver,
                                                                 monkeypatch):
    from jobs.operations import retry as retry_module
    from jobs.queue import queue_name

    endpoint = await make_endpoint(receiver.url("/ok"))
    entries = [await make_dead_letter(endpoint) for _ in range(5)]
    sizes: list[int] = []
    real = retry_module._send_commands

    async def counting(redis_, group):  # type: ignore[no-untyped-def]
        sizes.append(len(group))
        return await real(redis_, group)

    monkeypatch.setattr(retry_module, "_send_commands", counting)
    pubsub = redis.pubsub()
    await pubsub.subscribe(get_settings().events_channel)
    try:
        results = await asyncio.gather(*(retry_dead_letter(e.id, "alice", redis=redis)
                                         for e in entries))
        seen = []
        for _ in range(40):
            if msg := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1):
                seen.append(json.loads(msg["data"]))
    finally:
        await pubsub.aclose()

    assert sum(sizes) == 5 and max(sizes) > 1  # together (how many at once: the DB decides)
    assert sorted(j.args[0] for j in await redis.queued_jobs(queue_name=queue_name())) == sorted(
        r["delivery_id"] for r in results)
    assert sorted((e["type"], e["id"]) for e in seen) == sorted(
        [("dlq.changed", e.id) for e in entries]
        + [("delivery.updated", r["delivery_id"]) for r in results])


async def test_a_failing_command_in_a_shared_pipeline_fails_only_its_caller(redis):
    from jobs.grouping import GroupCommit
    from jobs.operations.retry import _send_commands

    await redis.set("not-a-number", "x")
    group = GroupCommit(_send_commands)
    answers = await asyncio.gather(group.run(redis, ("SET", "a", "1")),
                                   group.run(redis, ("INCR", "not-a-number")),
                                   group.run(redis, ("INCR", "counter")),
                                   return_exceptions=True)
    assert answers[0] is True or answers[0] in (b"OK", "OK")
    assert isinstance(answers[1], Exception) and "not an integer" in str(answers[1])
    assert answers[2] == 1
    assert group.sender is None and group.waiting == []


async def test_concurrent_postgres_retries_go_in_one_statement(db, redis, receiver, monkeypatch):
    """PostgreSQL: retries arriving together are one statement (_PG_RETRY_MANY); a second
    click on an entry of the group misses as it would after the first."""
    from jobs.operations import retry as retry_module

    if not db.startswith("postgres"):
        pytest.skip("PostgreSQL's grouped statement")
    endpoint = await make_endpoint(receiver.url("/ok"))
    entries = [await make_dead_letter(endpoint) for _ in range(4)]
    sizes: list[int] = []
    real = retry_module._pg_write

    async def counting(conn, items):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return await real(conn, items)

    monkeypatch.setattr(retry_module, "_pg_write", counting)
    results = await asyncio.gather(
        *(retry_dead_letter(e.id, f"u{i}", redis=redis) for i, e in enumerate(entries)),
        retry_dead_letter(entries[1].id, "late", redis=redis), return_exceptions=True)

    assert sizes == [5]
    assert isinstance(results[4], AlreadyInFlightError)
    for i, (entry, result) in enumerate(zip(entries, results[:4], strict=True)):
        assert result["dead_letter_id"] == entry.id  # type: ignore[index]
        after = await DeadLetter.get(id=entry.id)
        assert (after.status, after.retry_count, after.last_retry_delivery_id) == (  # type: ignore[attr-defined]
            DeadLetterStatus.RETRYING, 1, result["delivery_id"])  # type: ignore[index]
        new = await Delivery.get(id=result["delivery_id"])  # type: ignore[index]
        assert (new.retry_of_id, new.status, new.metadata["__retry_metadata"]) == (  # type: ignore[attr-defined]
            entry.delivery_id, DeliveryStatus.QUEUED,  # type: ignore[attr-defined]
            {"original_delivery_id": entry.delivery_id, "dead_letter_id": entry.id,  # type: ignore[attr-defined]
             "retry_count": 1, "sandbox": False})
        [row] = await AuditLog.filter(action="dlq.retry", target_id=str(entry.id))
        assert row.actor == f"u{i}" and row.details == {
            "original_delivery_id": entry.delivery_id, "new_delivery_id": new.id}  # type: ignore[attr-defined]
    assert await AuditLog.filter(action="dlq.retry_refused", actor="late").count() == 1


async def test_a_failing_grouped_postgres_statement_falls_back_to_one_per_retry(
        db, redis, receiver, monkeypatch):
    from jobs.operations import retry as retry_module

    if not db.startswith("postgres"):
        pytest.skip("PostgreSQL's grouped statement")
    monkeypatch.setattr(retry_module, "_PG_RETRY_MANY", "SELECT no_such_column FROM delivery")
    endpoint = await make_endpoint(receiver.url("/ok"))
    entries = [await make_dead_letter(endpoint) for _ in range(3)]
    results = await asyncio.gather(*(retry_dead_letter(e.id, "alice", redis=redis)
                                     for e in [*entries, entries[0]]), return_exceptions=True)
    assert [r["dead_letter_id"] for r in results[:3]] == [e.id for e in entries]  # type: ignore[index]
    assert isinstance(results[3], AlreadyInFlightError)
    assert await Delivery.filter(retry_of_id__not_isnull=True).count() == 3
