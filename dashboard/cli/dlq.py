"""`observatory dlq …`: the dead-letter queue over the REST API (list, show, retry, retry-all,
archive, archive-all, delete, delete-all, status, stats, export).

Each command is a few lines over one `/v1/dlq…` call: the rules live on the server, the CLI
only asks, shows the answer and turns a refusal into `Error: message`, exit 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.json import JSON
from rich.panel import Panel
from rich.table import Table

from dashboard.cli.client import (DEFAULT_URL, Api, FormatOption, Output, TokenOption, UrlOption,
                                  err, handled, out, short_time)
from dashboard.cli.ops import Reason, delivery_outcome, start_confirmed, wait_for_delivery
from models.enums import DeadLetterStatus

app = typer.Typer(help="The dead-letter queue: list, inspect, retry, archive, delete, export.",
                  no_args_is_help=True)

EntryId = Annotated[int, typer.Argument(help="DLQ entry id.", min=1)]
Status = Annotated[str | None, typer.Option(
    "--status", help="active, retrying, resolved, archived (comma-separated).")]
EventType = Annotated[str | None, typer.Option("--event-type", help="Event type.")]
EndpointId = Annotated[int | None, typer.Option("--endpoint-id", min=1, help="Endpoint id.")]
AppId = Annotated[int | None, typer.Option("--app-id", min=1, help="Application id.")]
Since = Annotated[str | None, typer.Option("--since", help="Created at or after (ISO 8601).")]
Until = Annotated[str | None, typer.Option("--until", help="Created before (ISO 8601).")]
Query = Annotated[str | None, typer.Option(
    "-q", "--query", help="Text in the failure reason, last error or endpoint URL.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Do not ask for confirmation.")]
WaitDelivery = Annotated[bool, typer.Option("--wait", help="Wait for the new delivery's outcome.")]
WaitOperation = Annotated[bool, typer.Option("--wait",
                                             help="Follow the progress (Ctrl-C: cancel).")]
Timeout = Annotated[float, typer.Option("--timeout", min=1,
                                        help="--wait at most this long (seconds).")]
Sandbox = Annotated[bool, typer.Option("--sandbox", help="Sandbox retry (with overrides).")]
TargetUrl = Annotated[str | None, typer.Option(
    "--target-url", help="Sandbox: deliver to this URL instead.")]
Headers = Annotated[list[str] | None, typer.Option(
    "--header", "-H", help="Sandbox: extra header 'Name: value' (repeatable).")]
Payload = Annotated[str | None, typer.Option("--payload", help="Sandbox: JSON payload.")]
Canary = Annotated[int | None, typer.Option(
    "--canary", min=1, help="Retry the first N first; halt if too many fail again.")]
CanaryPct = Annotated[float | None, typer.Option(
    "--canary-max-failure-pct", min=0, max=100, help="Halt when more than this % of the canary "
    "fail.")]


class ExportFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


def _set(**values: Any) -> dict[str, Any]:
    """The options given (a filter, a scope, a body), without the unset ones."""
    return {k: v for k, v in values.items() if v is not None and v != ""}


def _with_reason(reason: str | None) -> dict[str, Any]:
    return {"reason": reason} if reason else {}


# --- list and show -------------------------------------------------------------------------


def _pages(api: Api, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every entry of the filter, following `next_cursor` page after page."""
    cursor = params.get("cursor")
    while True:
        page = api.get("/v1/dlq", **{**params, "cursor": cursor})
        yield from page["entries"]
        cursor = page.get("next_cursor")
        if cursor is None:
            return


def entries_table(entries: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Dead-letter queue ({len(entries)} shown)")
    for column in ("ID", "Status", "Event type", "Endpoint", "Failure", "Tries", "Retries",
                   "Created"):
        table.add_column(column, overflow="fold")
    table.add_column("Payload", max_width=40, no_wrap=True, overflow="ellipsis")
    for e in entries:
        table.add_row(str(e["id"]), e["status"], e["event_type"], e["endpoint_url"],
                      e["failure_reason"], str(e["attempts"]), str(e["retry_count"]),
                      short_time(e["created_at"]), e.get("payload_preview", ""))
    return table


@app.command("list")
def list_command(
    status: Status = None, event_type: EventType = None, endpoint_id: EndpointId = None,
    app_id: AppId = None, since: Since = None, until: Until = None, q: Query = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="Page size.")] = 50,
    cursor: Annotated[int | None, typer.Option("--cursor", min=1,
                                               help="Start after this page cursor.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the cursor to the end.")] = False,
    output: FormatOption = Output.table, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """List DLQ entries, newest first (default: active and retrying)."""
    params = _set(status=status, event_type=event_type, endpoint_id=endpoint_id, app_id=app_id,
                  since=since, until=until, q=q, limit=limit, cursor=cursor)
    with handled(), Api(url, token) as api:
        if all_pages:
            page = {"entries": list(_pages(api, params)), "next_cursor": None}
            if output is Output.json:
                typer.echo(json.dumps(page))
                return
        else:
            page = api.read("/v1/dlq", output, **params)
            if page is None:
                return
        out().print(entries_table(page["entries"]))
        if page.get("next_cursor") is not None:
            typer.echo(f"More entries: --cursor {page['next_cursor']} (or --all)")


def _rows_table(title: str, rows: list[Any]) -> Table:
    """A list of records (attempts, error history) as a table over the union of their keys."""
    table = Table(title=title)
    keys = list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))
    for key in keys or ["value"]:
        table.add_column(key, overflow="fold")
    for row in rows:
        cells = [row.get(k) for k in keys] if isinstance(row, dict) else [row]
        table.add_row(*("" if c is None else c if isinstance(c, str) else json.dumps(c)
                        for c in cells))
    return table


@app.command("show")
def show_command(entry_id: EntryId, output: FormatOption = Output.table,
                 url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Show one entry: its fields, error history, attempts and payload."""
    with handled(), Api(url, token) as api:
        entry = api.read(f"/v1/dlq/{entry_id}", output)
        if entry is None:
            return
        console = out()
        fields = Table.grid(padding=(0, 2))
        fields.add_column(style="bold")
        fields.add_column(overflow="fold")
        skip = {"payload", "payload_preview"} if "payload" in entry else {"payload"}
        for key, value in entry.items():
            if not isinstance(value, (dict, list)) and key not in skip:
                fields.add_row(key, "" if value is None else str(value))
        console.print(Panel(fields, title=f"DLQ entry {entry_id}", expand=False))
        for key, value in entry.items():  # records as tables, documents as JSON panels
            if isinstance(value, list) and value:
                console.print(_rows_table(key.replace("_", " "), value))
            elif (isinstance(value, dict) and value) or key == "payload":
                console.print(Panel(JSON.from_data(value), title=key, expand=False))


# --- retry ---------------------------------------------------------------------------------


def _overrides(target_url: str | None, headers: list[str], payload: str | None) -> dict[str, Any]:
    """The sandbox overrides; a malformed header or payload is a usage error (exit 2)."""
    parsed: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{header!r} is not 'Name: value'", param_hint="--header")
        parsed[name.strip()] = value.strip()
    body: dict[str, Any] = _set(url=target_url, headers=parsed or None)
    if payload is not None:
        try:
            body["payload"] = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from exc
    return body


@app.command("retry")
def retry_command(
    entry_id: EntryId, sandbox: Sandbox = False, target_url: TargetUrl = None,
    header: Headers = None, payload: Payload = None, wait: WaitDelivery = False,
    timeout: Timeout = 300, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Retry one entry as a new delivery (exit 1 under --wait if it fails again)."""
    overrides = _overrides(target_url, header or [], payload)
    if overrides and not sandbox:
        raise typer.BadParameter("--target-url, --header and --payload need --sandbox")
    body: dict[str, Any] = {"sandbox": sandbox, **({"overrides": overrides} if overrides else {})}
    with handled(), Api(url, token) as api:
        result = api.post(f"/v1/dlq/{entry_id}/retry", body)
        kind = "Sandbox retry" if sandbox else "Retry"
        typer.echo(f"{kind} of DLQ entry {entry_id}: delivery {result['delivery_id']} "
                   f"({result['status']})")
        if wait:
            delivery = wait_for_delivery(api, result["delivery_id"], timeout)
            typer.echo(delivery_outcome(delivery))
            if delivery["status"] != "succeeded":
                raise typer.Exit(1)


@app.command("retry-all")
def retry_all_command(
    event_type: EventType = None, endpoint_id: EndpointId = None, app_id: AppId = None,
    since: Since = None, until: Until = None, q: Query = None, reason: Reason = None,
    canary: Canary = None, canary_max_failure_pct: CanaryPct = None, yes: Yes = False,
    wait: WaitOperation = False, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Retry every active entry of a scope (all by default) as one bulk operation."""
    if (canary is None) != (canary_max_failure_pct is None):
        raise typer.BadParameter("--canary N and --canary-max-failure-pct X go together")
    scope = _set(event_type=event_type, endpoint_id=endpoint_id, app_id=app_id, since=since,
                 until=until, q=q)
    body: dict[str, Any] = {"scope": scope, **_with_reason(reason)}
    if canary is not None:
        body["canary"] = {"count": canary, "max_failure_pct": canary_max_failure_pct}
    with handled(), Api(url, token) as api:
        start_confirmed(api, "/v1/dlq/retry-all", body, question="Retry {total} entries?",
                        nothing="Nothing to retry: no active entry in this scope.",
                        declined="Nothing retried.", started="retrying {total} entries",
                        yes=yes, wait=wait)


# --- archive, delete, status ---------------------------------------------------------------


@app.command("archive")
def archive_command(entry_id: EntryId, reason: Reason = None, url: UrlOption = DEFAULT_URL,
                    token: TokenOption = None) -> None:
    """Archive an entry (kept, out of the active queue)."""
    with handled(), Api(url, token) as api:
        entry = api.post(f"/v1/dlq/{entry_id}/archive", _with_reason(reason))
        typer.echo(f"DLQ entry {entry_id} is now {entry.get('status', 'archived')}.")


@app.command("delete")
def delete_command(entry_id: EntryId, reason: Reason = None, force: Force = False,
                   url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Delete an entry for good (the audit log keeps a row of it)."""
    if not force and not typer.confirm(f"Delete DLQ entry {entry_id} permanently?",
                                       default=False):
        typer.echo("Nothing deleted.", err=True)
        raise typer.Exit(1)
    with handled(), Api(url, token) as api:
        api.delete(f"/v1/dlq/{entry_id}", _with_reason(reason))
        typer.echo(f"Deleted DLQ entry {entry_id}.")


@app.command("archive-all")
def archive_all_command(
    status: Status = None, event_type: EventType = None, endpoint_id: EndpointId = None,
    app_id: AppId = None, since: Since = None, until: Until = None, q: Query = None,
    reason: Reason = None, yes: Yes = False, wait: WaitOperation = False,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Archive every active or resolved entry of a scope (all by default) as one bulk
    operation (--status narrows it to active or resolved)."""
    scope = _set(status=status, event_type=event_type, endpoint_id=endpoint_id, app_id=app_id,
                 since=since, until=until, q=q)
    with handled(), Api(url, token) as api:
        start_confirmed(api, "/v1/dlq/archive-all", {"scope": scope, **_with_reason(reason)},
                        question="Archive {total} entries?",
                        nothing="Nothing to archive: no active or resolved entry in this scope.",
                        declined="Nothing archived.", started="archiving {total} entries",
                        yes=yes, wait=wait)


@app.command("delete-all")
def delete_all_command(
    status: Status = None, event_type: EventType = None, endpoint_id: EndpointId = None,
    app_id: AppId = None, since: Since = None, until: Until = None, q: Query = None,
    reason: Reason = None, force: Force = False, wait: WaitOperation = False,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Delete for good every entry of a scope that is not being retried, as one bulk
    operation (the audit log keeps one row of it)."""
    scope = _set(status=status, event_type=event_type, endpoint_id=endpoint_id, app_id=app_id,
                 since=since, until=until, q=q)
    with handled(), Api(url, token) as api:
        start_confirmed(api, "/v1/dlq/delete-all", {"scope": scope, **_with_reason(reason)},
                        question="Delete {total} entries permanently?",
                        nothing="Nothing to delete: no entry (other than retrying ones) in "
                                "this scope.",
                        declined="Nothing deleted.", started="deleting {total} entries",
                        yes=force, wait=wait)


@app.command("status")
def status_command(entry_id: EntryId, status: Annotated[DeadLetterStatus, typer.Argument(
                       help="The new status (only legal transitions are accepted).")],
                   reason: Reason = None, url: UrlOption = DEFAULT_URL,
                   token: TokenOption = None) -> None:
    """Set an entry's status."""
    with handled(), Api(url, token) as api:
        entry = api.put(f"/v1/dlq/{entry_id}/status",
                        {"status": status.value, **_with_reason(reason)})
        typer.echo(f"DLQ entry {entry_id} is now {entry.get('status', status.value)}.")


# --- stats and export ----------------------------------------------------------------------


def _counts_table(title: str, column: str, counts: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column(column)
    table.add_column("Entries", justify="right")
    for key, count in counts.items():
        table.add_row(key, str(count))
    return table


@app.command("stats")
def stats_command(
    status: Status = None, event_type: EventType = None, endpoint_id: EndpointId = None,
    app_id: AppId = None, since: Since = None, until: Until = None, q: Query = None,
    output: FormatOption = Output.table, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Totals by status, event type and endpoint; the oldest and newest entry."""
    params = _set(status=status, event_type=event_type, endpoint_id=endpoint_id, app_id=app_id,
                  since=since, until=until, q=q)
    with handled(), Api(url, token) as api:
        stats = api.read("/v1/dlq/stats", output, **params)
        if stats is None:
            return
        console = out()
        console.print(f"[bold]{stats['total']}[/] entries · oldest "
                      f"{short_time(stats.get('oldest'))} · newest "
                      f"{short_time(stats.get('newest'))}")
        for title, column, key in (("By status", "Status", "by_status"),
                                   ("By event type", "Event type", "by_event_type")):
            console.print(_counts_table(title, column, stats.get(key) or {}))
        endpoints = Table(title="By endpoint")
        endpoints.add_column("ID")
        endpoints.add_column("URL", overflow="fold")
        endpoints.add_column("Entries", justify="right")
        for row in stats.get("by_endpoint") or []:
            endpoints.add_row(str(row.get("endpoint_id") or "—"), row.get("endpoint_url", ""),
                              str(row["count"]))
        console.print(endpoints)


@app.command("export")
def export_command(
    status: Status = None, event_type: EventType = None, endpoint_id: EndpointId = None,
    app_id: AppId = None, since: Since = None, until: Until = None, q: Query = None,
    export_format: Annotated[ExportFormat, typer.Option("--format", help="csv or jsonl.")]
    = ExportFormat.csv,
    output_file: Annotated[Path | None, typer.Option(
        "--output", "-o", dir_okay=False, help="Write to this file (default: stdout).")] = None,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Export the entries of a filter as CSV or JSON lines, streamed (never held in memory)."""
    params = _set(status=status, event_type=event_type, endpoint_id=endpoint_id, app_id=app_id,
                  since=since, until=until, q=q, format=export_format.value)
    with handled(), Api(url, token) as api, api.stream("/v1/dlq/export", **params) as response:
        if output_file is None:
            sink = typer.get_binary_stream("stdout")
            for chunk in response.iter_bytes():
                sink.write(chunk)
            sink.flush()
            return
        written = _write_file(output_file, response.iter_bytes())
        typer.echo(f"Wrote {written} bytes to {output_file}", err=True)


def _write_file(path: Path, chunks: Iterator[bytes]) -> int:
    """Write the chunks to `path.part`, renamed over `path` once complete (no half export
    left under the real name when the stream breaks)."""
    part = path.with_name(path.name + ".part")
    written = 0
    try:
        with part.open("wb") as sink:
            for chunk in chunks:
                written += sink.write(chunk)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return written
