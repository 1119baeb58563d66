"""`observatory dlq archive-all|delete-all` and `observatory endpoints resync` end-to-end
against the real API in a subprocess (fixtures of tests/dashboard/cli/conftest.py)."""

from __future__ import annotations

import asyncio
import re

import pytest

from models.audit import AuditLog
from models.bulk import BulkOperation
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.endpoints import Endpoint
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.dashboard.cli.test_dlq_cli import bulk_worker_once_started, dlq_entries
from tests.factories import make_dead_letter, make_endpoint

A = DeadLetterStatus


pytestmark = pytest.mark.usefixtures("unpaced")  # see tests/conftest.py


async def _statuses() -> set[DeadLetterStatus]:
    return set(await DeadLetter.all().values_list("status", flat=True))


async def _received(endpoint: Endpoint, n: int) -> list[Message]:
    messages = []
    for _ in range(n):
        message = await Message.create(app_id=endpoint.app_id, event_type="order.paid",  # type: ignore[attr-defined]
                                       payload={})
        await Delivery.create(message=message, endpoint=endpoint,
                              status=DeliveryStatus.SUCCEEDED, attempts=1)
        messages.append(message)
    return messages


# --- archive-all -----------------------------------------------------------------------------

async def test_archive_all_declined_changes_nothing(db, receiver, cli) -> None:
    endpoint = await make_endpoint(receiver.url("/hook"))
    await dlq_entries(endpoint, 3)

    result = cli("dlq", "archive-all", token="operator", input="n\n")

    assert result.exit_code == 1
    assert "Archive 3 entries? [y/N]" in result.stdout
    assert "Nothing archived." in result.stderr
    assert not await BulkOperation.exists() and await _statuses() == {A.ACTIVE}


async def test_archive_all_confirmed_and_waited_archives_the_scope(db, receiver, cli,
                                                                   run_worker) -> None:
    endpoint = await make_endpoint(receiver.url("/hook"))
    mine = await dlq_entries(endpoint, 2)
    other = await make_dead_letter(await make_endpoint(receiver.url("/other")))

    worker = asyncio.create_task(bulk_worker_once_started(run_worker))
    result = await asyncio.to_thread(cli, "dlq", "archive-all", "--endpoint-id",
                                     str(endpoint.id), "--reason", "known outage", "--wait",
                                     token="operator", input="y\n")
    await worker

    assert result.exit_code == 0, result.output
    assert "Archive 2 entries? [y/N]" in result.stdout
    assert re.search(r"Operation \d+ started: archiving 2 entries", result.stdout)
    assert re.search(r"Operation \d+ \(archive\) completed: 2/2 completed · 2 succeeded",
                     result.stdout)
    statuses = dict(await DeadLetter.all().values_list("id", "status"))
    assert [statuses[e.id] for e in mine] == [A.ARCHIVED, A.ARCHIVED]
    assert statuses[other.id] == A.ACTIVE
    [audit] = await AuditLog.all()
    assert (audit.action, audit.details["reason"]) == ("dlq.archive_all", "known outage")


async def test_archive_all_on_an_empty_scope_exits_0(db, cli) -> None:
    result = cli("dlq", "archive-all", "--yes", token="operator")

    assert result.exit_code == 0, result.output
    assert "Nothing to archive" in result.stdout and not await BulkOperation.exists()


# --- delete-all ------------------------------------------------------------------------------

async def test_delete_all_asks_unless_forced_and_operators_are_refused(db, receiver,
                                                                       cli) -> None:
    endpoint = await make_endpoint(receiver.url("/hook"))
    await dlq_entries(endpoint, 2)
    await make_dead_letter(endpoint, status=A.RETRYING)

    declined = cli("dlq", "delete-all", input="n\n")
    assert declined.exit_code == 1
    assert "Delete 2 entries permanently? [y/N]" in declined.stdout
    refused = cli("dlq", "delete-all", "--force", token="operator")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: Role 'operator' may not do this")
    assert await DeadLetter.all().count() == 3 and not await BulkOperation.exists()

    forced = cli("dlq", "delete-all", "--force", "--status", "active")
    assert forced.exit_code == 0, forced.output
    assert re.search(r"Operation \d+ started: deleting 2 entries", forced.stdout)
    op = await BulkOperation.get()
    assert (op.kind, op.total, op.scope["status"]) == ("delete", 2, ["active"])


async def test_delete_all_with_a_bad_status_is_refused_by_the_server(db, receiver, cli) -> None:
    endpoint = await make_endpoint(receiver.url("/hook"))
    await dlq_entries(endpoint, 1)

    result = cli("dlq", "delete-all", "--force", "--status", "retrying")

    assert result.exit_code == 1
    assert "scope.status" in result.stderr
    assert await DeadLetter.all().count() == 1


# --- endpoints resync ------------------------------------------------------------------------

async def test_resync_confirmed_and_waited_resends_every_message(db, receiver, cli,
                                                                 run_worker) -> None:
    endpoint = await make_endpoint(receiver.url("/hook"))
    messages = await _received(endpoint, 3)

    worker = asyncio.create_task(bulk_worker_once_started(run_worker))
    result = await asyncio.to_thread(cli, "endpoints", "resync", str(endpoint.id), "--wait",
                                     input="y\n")
    await worker

    assert result.exit_code == 0, result.output
    assert f"Re-send 3 messages to endpoint {endpoint.id}? [y/N]" in result.stdout
    assert re.search(r"Operation \d+ \(resync\) completed: 3/3 completed · 3 succeeded",
                     result.stdout)
    assert sorted(r.headers["webhook-id"] for r in receiver.hits("/hook")) == sorted(
        f"msg_{m.id}" for m in messages)


async def test_resync_declined_or_refused_changes_nothing(db, receiver, cli) -> None:
    endpoint = await make_endpoint(receiver.url("/hook"))
    await _received(endpoint, 2)
    off = await make_endpoint(receiver.url("/off"), enabled=False, disabled_reason="gone")
    await _received(off, 1)

    declined = cli("endpoints", "resync", str(endpoint.id), input="n\n")
    assert declined.exit_code == 1 and "Nothing re-sent." in declined.stderr
    operator = cli("endpoints", "resync", str(endpoint.id), "--yes", token="operator")
    assert operator.exit_code == 1 and "Role 'operator' may not do this" in operator.stderr
    disabled = cli("endpoints", "resync", str(off.id), "--yes")
    assert disabled.exit_code == 1
    assert f"Error: endpoint {off.id} is disabled (gone); enable it" in disabled.stderr
    usage = cli("endpoints", "resync", str(endpoint.id), "--since", "last tuesday")
    assert usage.exit_code == 2 and "--since" in usage.output
    later = cli("endpoints", "resync", str(endpoint.id), "--since", "2999-01-01", "--yes")
    assert later.exit_code == 0 and "Nothing to re-sync" in later.stdout
    assert not await BulkOperation.exists()
    assert await Delivery.all().count() == 3
