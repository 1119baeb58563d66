"""`observatory dlq …` and `observatory ops …` end-to-end against the real API in a subprocess."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from dashboard.cli.users import Credentials, write_credentials
from jobs.worker import BulkWorkerSettings
from models.bulk import BulkOperation
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.endpoints import Endpoint
from models.enums import DeadLetterStatus
from tests.dashboard.cli.conftest import OBSERVATORY, cli_env
from tests.factories import make_dead_letter, make_endpoint

ROW = re.compile(r"^[│┃]\s*(\d+)\s*[│┃]", re.MULTILINE)


def table_ids(output: str) -> list[int]:
    """The first-column ids of the rows of a rich table."""
    return [int(m) for m in ROW.findall(output)]


@pytest_asyncio.fixture
async def endpoint(db, receiver) -> Endpoint:  # type: ignore[no-untyped-def]
    """An endpoint on the receiver's `/hook`."""
    return await make_endpoint(receiver.url("/hook"))


async def dlq_entries(endpoint: Endpoint, count: int = 2,
                      **kwargs: Any) -> list[DeadLetter]:
    return [await make_dead_letter(endpoint, **kwargs) for _ in range(count)]


async def bulk_worker_once_started(run_worker) -> None:  # type: ignore[no-untyped-def]
    """Run a burst worker of the bulk lane once an operation exists (up to 15 s)."""
    for _ in range(300):
        if await BulkOperation.exists():
            break
        await asyncio.sleep(0.05)
    await run_worker(functions=BulkWorkerSettings.functions,
                     queue_name=BulkWorkerSettings.queue_name)


def server_json(api_url: str, token: str, path: str, **params: object) -> object:
    response = httpx.get(f"{api_url}{path}", params=params,  # type: ignore[arg-type]
                         headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return response.json()


# --- list and show -------------------------------------------------------------------------


async def test_list_prints_the_active_entries_newest_first(endpoint, cli, receiver) -> None:
    first, second = await dlq_entries(endpoint)
    await dlq_entries(endpoint, 1, status=DeadLetterStatus.ARCHIVED)

    result = cli("dlq", "list", token="viewer")

    assert result.exit_code == 0, result.output
    assert table_ids(result.stdout) == [second.id, first.id]
    assert "max_attempts_exceeded" in result.stdout and receiver.url("/hook") in result.stdout


async def test_list_json_is_the_servers_answer(endpoint, cli, api_url, tokens) -> None:
    await dlq_entries(endpoint, 3)

    result = cli("dlq", "list", "--limit", "2", "--format", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == server_json(api_url, tokens["admin"], "/v1/dlq", limit=2)
    assert json.loads(result.stdout)["next_cursor"] is not None


async def test_list_all_follows_the_cursor_to_the_end(endpoint, cli) -> None:
    entries = await dlq_entries(endpoint, 5)

    result = cli("dlq", "list", "--limit", "2", "--all", "--format", "json")

    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    assert [e["id"] for e in page["entries"]] == [e.id for e in reversed(entries)]
    assert page["next_cursor"] is None


async def test_list_table_says_how_to_get_the_next_page(endpoint, cli) -> None:
    entries = await dlq_entries(endpoint, 3)

    result = cli("dlq", "list", "--limit", "2")

    assert table_ids(result.stdout) == [entries[2].id, entries[1].id]
    assert f"--cursor {entries[1].id}" in result.stdout


async def test_list_filters_reach_the_server(endpoint, cli, receiver) -> None:
    active = await dlq_entries(endpoint, 1)
    archived = await dlq_entries(endpoint, 2, status=DeadLetterStatus.ARCHIVED)
    other = await make_dead_letter(await make_endpoint(receiver.url("/other")),
                                   status=DeadLetterStatus.ARCHIVED)

    by_status = cli("dlq", "list", "--status", "archived")
    by_endpoint = cli("dlq", "list", "--status", "archived,active", "--endpoint-id",
                      str(other.endpoint_id))  # type: ignore[attr-defined]
    by_text = cli("dlq", "list", "-q", "/other", "--status", "archived")

    assert table_ids(by_status.stdout) == [other.id, archived[1].id, archived[0].id]
    assert table_ids(by_endpoint.stdout) == [other.id]
    assert table_ids(by_text.stdout) == [other.id]
    assert active[0].id not in table_ids(by_status.stdout)


async def test_list_refused_filter_prints_the_field_error(cli) -> None:
    result = cli("dlq", "list", "--status", "bogus")

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert "status" in result.stderr and "'archived'" in result.stderr
    assert result.stderr.count("Input should be") == 1  # the field error once, not repeated
    assert "Traceback" not in result.output


async def test_show_prints_the_entry_and_its_error_history(endpoint, cli, api_url, tokens) -> None:
    (entry,) = await dlq_entries(endpoint, 1, payload={"order": 42})

    table = cli("dlq", "show", str(entry.id), token="viewer")
    as_json = cli("dlq", "show", str(entry.id), "--format", "json")

    assert table.exit_code == 0, table.output
    assert f"DLQ entry {entry.id}" in table.stdout and "max_attempts_exceeded" in table.stdout
    assert "error history" in table.stdout and "500" in table.stdout
    assert "42" in table.stdout  # the payload
    assert json.loads(as_json.stdout) == server_json(api_url, tokens["admin"],
                                                     f"/v1/dlq/{entry.id}")


async def test_show_unknown_entry_exits_1_with_the_servers_message(cli) -> None:
    result = cli("dlq", "show", "424242")

    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: DLQ entry 424242 does not exist"


# --- retry ---------------------------------------------------------------------------------


async def test_retry_makes_a_new_delivery_and_a_second_retry_is_refused(endpoint, cli) -> None:
    (entry,) = await dlq_entries(endpoint, 1)

    first = cli("dlq", "retry", str(entry.id), token="operator")
    second = cli("dlq", "retry", str(entry.id), token="operator")

    assert first.exit_code == 0, first.output
    (new,) = await Delivery.filter(retry_of_id=entry.delivery_id)  # type: ignore[attr-defined]
    assert f"delivery {new.id} (queued)" in first.stdout
    assert second.exit_code == 1
    assert second.stderr.strip() == f"Error: A retry of DLQ entry {entry.id} is already in flight"


async def test_retry_wait_reports_success_once_the_worker_delivered(
        endpoint, api_url, tokens, receiver, redis, run_worker) -> None:
    (entry,) = await dlq_entries(endpoint, 1)
    proc = await asyncio.create_subprocess_exec(
        OBSERVATORY, "dlq", "retry", str(entry.id), "--wait", "--url", api_url, "--token",
        tokens["operator"], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cli_env())
    assert proc.stdout is not None
    started = await asyncio.wait_for(proc.stdout.readline(), 30)  # printed once enqueued
    assert b"Retry of DLQ entry" in started

    await run_worker()
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 0, stderr.decode()
    assert re.search(r"Delivery \d+ succeeded after 1 attempt\(s\), HTTP 200", stdout.decode())
    assert len(receiver.hits("/hook")) == 1


async def test_retry_wait_exits_1_when_the_retry_fails_again(
        endpoint, api_url, tokens, receiver, redis, run_worker) -> None:
    from tests.receiver import Reply

    receiver.script("/hook", Reply(status=400, body="bad"))  # final: no further attempt
    (entry,) = await dlq_entries(endpoint, 1)
    proc = await asyncio.create_subprocess_exec(
        OBSERVATORY, "dlq", "retry", str(entry.id), "--wait", "--url", api_url, "--token",
        tokens["operator"], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cli_env())
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 30)

    await run_worker()
    stdout, _ = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 1
    assert re.search(r"Delivery \d+ failed after 1 attempt\(s\), HTTP 400", stdout.decode())


async def test_retry_overrides_need_sandbox_usage_error(cli) -> None:
    result = cli("dlq", "retry", "1", "--target-url", "http://127.0.0.1:9/x")
    bad_header = cli("dlq", "retry", "1", "--sandbox", "--header", "no-colon")

    assert result.exit_code == 2 and "need --sandbox" in result.output
    assert bad_header.exit_code == 2 and "Name: value" in bad_header.output


async def test_sandbox_retry_delivers_to_the_override_url(
        endpoint, cli, receiver, run_worker) -> None:
    (entry,) = await dlq_entries(endpoint, 1)

    result = cli("dlq", "retry", str(entry.id), "--sandbox", "--target-url",
                 receiver.url("/sandbox"), "-H", "X-Test: yes", "--payload", '{"order": 7}',
                 token="operator")
    assert result.exit_code == 0, result.output
    await run_worker()

    assert "Sandbox retry" in result.stdout
    (hit,) = receiver.hits("/sandbox")
    assert json.loads(hit.body)["data"] == {"order": 7} and hit.headers.get("X-Test") == "yes"
    assert receiver.hits("/hook") == []


async def test_viewer_token_is_refused_with_the_403_message(endpoint, cli) -> None:
    (entry,) = await dlq_entries(endpoint, 1)

    result = cli("dlq", "retry", str(entry.id), token="viewer")

    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: Role 'viewer' may not do this; it needs 'operator' "
                                     "or higher")
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.ACTIVE


# --- retry-all and ops ---------------------------------------------------------------------


async def test_retry_all_declined_changes_nothing(endpoint, cli) -> None:
    entries = await dlq_entries(endpoint, 2)

    result = cli("dlq", "retry-all", token="operator", input="n\n")

    assert result.exit_code == 1
    assert "Retry 2 entries? [y/N]" in result.stdout
    assert await BulkOperation.all().count() == 0
    assert {e.status for e in await DeadLetter.filter(id__in=[e.id for e in entries])} == {
        DeadLetterStatus.ACTIVE}


async def test_retry_all_yes_starts_an_operation_over_the_scope(endpoint, cli, receiver) -> None:
    await dlq_entries(endpoint, 2)
    other = await make_dead_letter(await make_endpoint(receiver.url("/other")))

    other_endpoint = str(other.endpoint_id)  # type: ignore[attr-defined]

    result = cli("dlq", "retry-all", "--endpoint-id", other_endpoint, "--yes", "--reason",
                 "receiver fixed", token="operator")

    assert result.exit_code == 0, result.output
    op = await BulkOperation.get()
    assert f"Operation {op.id} started: retrying 1 entries" in result.stdout
    assert op.total == 1 and op.reason == "receiver fixed"


async def test_retry_all_on_an_empty_scope_says_nothing_to_retry(cli) -> None:
    result = cli("dlq", "retry-all", token="operator")

    assert result.exit_code == 0, result.output
    assert "Nothing to retry" in result.stdout
    assert await BulkOperation.all().count() == 0


async def test_retry_all_wait_follows_the_operation_to_its_end(endpoint, cli, run_worker) -> None:
    await dlq_entries(endpoint, 3)

    worker = asyncio.create_task(bulk_worker_once_started(run_worker))
    result = await asyncio.to_thread(cli, "dlq", "retry-all", "--yes", "--wait",
                                     token="operator")
    await worker

    assert result.exit_code == 0, result.output
    assert re.search(r"Operation \d+ \(retry\) completed: 3/3 completed · 3 succeeded · "
                     r"0 failed", result.stdout)


async def test_ctrl_c_during_wait_offers_to_cancel_the_operation(
        endpoint, api_url, tokens) -> None:
    await dlq_entries(endpoint, 2)  # no worker runs: the operation stays running
    proc = subprocess.Popen(
        [OBSERVATORY, "dlq", "retry-all", "--yes", "--wait", "--url", api_url, "--token",
         tokens["operator"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=cli_env(), text=True)
    assert proc.stdout is not None and proc.stdin is not None
    started = await asyncio.to_thread(proc.stdout.readline)
    op_id = int(re.search(r"Operation (\d+) started", started).group(1))  # type: ignore[union-attr]
    await asyncio.sleep(1)  # polling

    proc.send_signal(signal.SIGINT)
    proc.stdin.write("y\n")
    proc.stdin.flush()
    stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=30)

    assert f"Cancel operation {op_id}? [y/N]" in stdout
    assert f"Operation {op_id} (retry) cancelled" in stdout, stderr
    assert proc.returncode == 0
    assert (await BulkOperation.get(id=op_id)).cancelled


async def test_ops_show_cancel_and_list(endpoint, cli, api_url, tokens) -> None:
    await dlq_entries(endpoint, 2)
    started = cli("dlq", "retry-all", "--yes", token="operator")
    op_id = (await BulkOperation.get()).id
    assert started.exit_code == 0, started.output

    shown = cli("ops", "show", str(op_id), "--format", "json", token="viewer")
    on_server = server_json(api_url, tokens["admin"], f"/v1/operations/{op_id}")
    as_table = cli("ops", "show", str(op_id), token="viewer")
    cancelled = cli("ops", "cancel", str(op_id), token="operator")
    listed = cli("ops", "list", token="viewer")

    assert json.loads(shown.stdout) == on_server  # no worker runs: nothing moves meanwhile
    assert f"Operation {op_id}" in as_table.stdout and "running" in as_table.stdout
    assert cancelled.exit_code == 0, cancelled.output
    assert f"Operation {op_id}: cancel requested" in cancelled.stdout
    assert (await BulkOperation.get(id=op_id)).cancelled
    assert table_ids(listed.stdout) == [op_id]
    assert "0/2 completed" in listed.stdout


async def test_ops_pause_then_resume(endpoint, cli) -> None:
    await dlq_entries(endpoint, 1)
    cli("dlq", "retry-all", "--yes", token="operator")
    op = await BulkOperation.get()

    paused = cli("ops", "pause", str(op.id), "--reason", "receiver deploy", token="operator")
    state_paused = (await BulkOperation.get(id=op.id)).state
    resumed = cli("ops", "resume", str(op.id), token="operator")

    assert paused.exit_code == 0, paused.output
    assert f"Operation {op.id}: pause requested (state paused" in paused.stdout
    assert state_paused == "paused"
    assert resumed.exit_code == 0, resumed.output
    assert (await BulkOperation.get(id=op.id)).state == "running"


async def test_retry_all_canary_reaches_the_server_and_halts_with_exit_1(
        endpoint, cli, receiver, run_worker) -> None:
    from tests.receiver import Reply

    receiver.script("/hook", Reply(status=400))  # every retry fails again, for good
    await dlq_entries(endpoint, 4)
    half = cli("dlq", "retry-all", "--canary", "2", token="operator")

    worker = asyncio.create_task(bulk_worker_once_started(run_worker))
    result = await asyncio.to_thread(cli, "dlq", "retry-all", "--yes", "--wait", "--canary",
                                     "2", "--canary-max-failure-pct", "50", token="operator")
    await worker

    assert half.exit_code == 2 and "go together" in half.output
    op = await BulkOperation.get()
    assert op.canary == {"count": 2, "max_failure_pct": 50}
    assert result.exit_code == 1, result.output
    assert f"Operation {op.id} (retry) halted" in result.stdout
    assert f"observatory ops resume {op.id}" in result.stdout


async def test_ops_cancel_by_a_viewer_is_refused(endpoint, cli) -> None:
    await dlq_entries(endpoint, 1)
    cli("dlq", "retry-all", "--yes", token="operator")
    op = await BulkOperation.get()

    result = cli("ops", "cancel", str(op.id), token="viewer")

    assert result.exit_code == 1 and "Role 'viewer' may not do this" in result.stderr
    assert not (await BulkOperation.get(id=op.id)).cancelled


# --- archive, delete, status ---------------------------------------------------------------


async def test_archive_sets_the_entry_archived(endpoint, cli) -> None:
    (entry,) = await dlq_entries(endpoint, 1)

    result = cli("dlq", "archive", str(entry.id), "--reason", "known outage", token="operator")

    assert result.exit_code == 0, result.output
    assert f"DLQ entry {entry.id} is now archived" in result.stdout
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.ARCHIVED


async def test_delete_without_force_asks_and_a_no_keeps_the_entry(endpoint, cli) -> None:
    (entry,) = await dlq_entries(endpoint, 1)

    declined = cli("dlq", "delete", str(entry.id), input="n\n")
    assert await DeadLetter.exists(id=entry.id)
    accepted = cli("dlq", "delete", str(entry.id), input="y\n")

    assert declined.exit_code == 1
    assert f"Delete DLQ entry {entry.id} permanently? [y/N]" in declined.stdout
    assert accepted.exit_code == 0, accepted.output
    assert not await DeadLetter.exists(id=entry.id)


async def test_delete_force_does_not_ask_and_needs_an_admin(endpoint, cli) -> None:
    first, second = await dlq_entries(endpoint, 2)

    by_operator = cli("dlq", "delete", str(first.id), "--force", token="operator")
    by_admin = cli("dlq", "delete", str(second.id), "--force", "--reason", "test data")

    assert by_operator.exit_code == 1 and "Error: " in by_operator.stderr
    assert await DeadLetter.exists(id=first.id)
    assert by_admin.exit_code == 0, by_admin.output
    assert f"Deleted DLQ entry {second.id}" in by_admin.stdout
    assert not await DeadLetter.exists(id=second.id)


async def test_status_sets_a_legal_status_and_refuses_an_unknown_one(endpoint, cli) -> None:
    (entry,) = await dlq_entries(endpoint, 1)

    resolved = cli("dlq", "status", str(entry.id), "resolved", token="operator")
    unknown = cli("dlq", "status", str(entry.id), "gone")

    assert resolved.exit_code == 0, resolved.output
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.RESOLVED
    assert unknown.exit_code == 2


# --- stats and export ----------------------------------------------------------------------


async def test_stats_table_and_json(endpoint, cli, api_url, tokens) -> None:
    await dlq_entries(endpoint, 2)
    await dlq_entries(endpoint, 1, status=DeadLetterStatus.ARCHIVED)

    table = cli("dlq", "stats", token="viewer")
    as_json = cli("dlq", "stats", "--format", "json")

    assert table.exit_code == 0, table.output
    assert "3 entries" in table.stdout and "order.created" in table.stdout
    stats = json.loads(as_json.stdout)
    assert stats == server_json(api_url, tokens["admin"], "/v1/dlq/stats")
    assert stats["total"] == 3 and stats["by_status"]["archived"] == 1


async def test_export_to_a_file_parses_back(endpoint, cli, tmp_path: Path) -> None:
    entries = await dlq_entries(endpoint, 3)
    jsonl, csv_file = tmp_path / "dlq.jsonl", tmp_path / "dlq.csv"

    as_jsonl = cli("dlq", "export", "--format", "jsonl", "-o", str(jsonl), token="viewer")
    as_csv = cli("dlq", "export", "--format", "csv", "--output", str(csv_file))

    assert as_jsonl.exit_code == 0, as_jsonl.output
    assert as_csv.exit_code == 0, as_csv.output
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text())))
    assert sorted(row["id"] for row in lines) == sorted(e.id for e in entries)
    assert sorted(int(row["id"]) for row in rows) == sorted(e.id for e in entries)
    assert not list(tmp_path.glob("*.part"))


async def test_export_to_stdout(endpoint, cli) -> None:
    entries = await dlq_entries(endpoint, 2)

    result = cli("dlq", "export", "--format", "jsonl", "--endpoint-id",
                 str(entries[0].endpoint_id))  # type: ignore[attr-defined]

    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2


# --- where the API is, who we are, exit codes ----------------------------------------------


async def test_unreachable_api_exits_1_with_cannot_reach(cli) -> None:
    result = cli("dlq", "list", "--url", "http://127.0.0.1:1")

    assert result.exit_code == 1
    assert "Error: cannot reach the Observatory API at http://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.output


async def test_a_url_that_is_not_the_api_exits_1(cli, receiver) -> None:
    # the receiver answers 200 "ok" to anything (threads: it runs on this test's loop)
    as_table = await asyncio.to_thread(cli, "dlq", "list", "--url", receiver.url(""))
    as_json = await asyncio.to_thread(cli, "dlq", "stats", "--format", "json", "--url",
                                      receiver.url(""))

    for result in (as_table, as_json):
        assert result.exit_code == 1
        assert "did not answer JSON" in result.stderr and result.stdout == ""


async def test_usage_errors_exit_2(cli) -> None:
    assert cli("dlq", "list", "--limit", "0").exit_code == 2
    assert cli("dlq", "list", "--format", "yaml").exit_code == 2
    assert cli("dlq", "show").exit_code == 2


async def test_console_script_exit_codes(endpoint, api_url, tokens) -> None:
    (entry,) = await dlq_entries(endpoint, 1)

    def run(*args: str, token: str = "viewer") -> subprocess.CompletedProcess[str]:
        return subprocess.run([OBSERVATORY, *args], capture_output=True, text=True, timeout=60,
                              env=cli_env(OBSERVATORY_URL=api_url,
                                          OBSERVATORY_TOKEN=tokens[token]))

    ok = await asyncio.to_thread(run, "dlq", "list", "--format", "json")
    refused = await asyncio.to_thread(run, "dlq", "archive", str(entry.id))
    unreachable = await asyncio.to_thread(run, "dlq", "list", "--url", "http://127.0.0.1:1")
    usage = await asyncio.to_thread(run, "dlq", "list", "--limit", "nope")

    assert ok.returncode == 0 and json.loads(ok.stdout)["entries"][0]["id"] == entry.id
    assert refused.returncode == 1 and refused.stderr.startswith("Error: Role 'viewer'")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    assert usage.returncode == 2
    assert all("Traceback" not in r.stderr for r in (ok, refused, unreachable, usage))


async def test_token_from_the_credentials_file_of_observatory_up(
        endpoint, cli, api_url, tokens, tmp_path: Path) -> None:
    (entry,) = await dlq_entries(endpoint, 1)
    write_credentials(tmp_path / "credentials", Credentials("admin", "pw", tokens["admin"]))
    env = {"OBSERVATORY_DATA_DIR": str(tmp_path), "OBSERVATORY_TOKEN": None,
           "OBSERVATORY_URL": api_url}

    from typer.testing import CliRunner

    from dashboard.cli.main import app

    with_file = CliRunner().invoke(app, ["dlq", "list", "--format", "json"], env=env)
    without = CliRunner().invoke(app, ["dlq", "list"], env={
        **env, "OBSERVATORY_DATA_DIR": str(tmp_path / "empty")})

    assert with_file.exit_code == 0, with_file.output
    assert json.loads(with_file.stdout)["entries"][0]["id"] == entry.id
    assert without.exit_code == 1
    assert "Missing bearer token" in without.stderr and "--token" in without.stderr
