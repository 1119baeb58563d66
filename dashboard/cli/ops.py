"""`observatory ops …`: bulk operations (retry all, re-sync, archive/delete by filter) —
progress, cancel, pause, resume.

Also home of what starting one and `--wait` share: `start_confirmed` (count, confirm with the
count, start over exactly that snapshot), `follow_operation` (the progress bar of
`dlq retry-all --wait` and the others) and `wait_for_delivery` (the spinner of `dlq retry
--wait`).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from dashboard.cli import fail
from dashboard.cli.client import (DEFAULT_URL, Api, FormatOption, Output, TokenOption, UrlOption,
                                  err, handled, out, short_time)

app = typer.Typer(help="Bulk operations: show, list, cancel, pause, resume.",
                  no_args_is_help=True)

#: states after which an operation's figures no longer move
FINAL_STATES = frozenset({"completed", "cancelled", "halted", "failed"})
#: states after which a delivery does not change any more
FINAL_DELIVERY = frozenset({"succeeded", "failed", "cancelled"})
POLL_S = 0.5

OperationId = Annotated[int, typer.Argument(help="Operation id.", min=1)]
Reason = Annotated[str | None, typer.Option("--reason", help="Why (stored in the audit log).")]


def figures(op: dict[str, Any]) -> str:
    """`12/40 completed · 10 succeeded · 2 failed` (+ cancelled/skipped when there are any)."""
    parts = [f"{op.get('completed', 0)}/{op.get('total', 0)} completed",
             f"{op.get('succeeded', 0)} succeeded", f"{op.get('failed', 0)} failed"]
    parts += [f"{op[k]} {k}" for k in ("cancelled", "skipped") if op.get(k)]
    return " · ".join(parts)


def summary(op: dict[str, Any]) -> str:
    """One line for the end of an operation."""
    line = f"Operation {op['id']} ({op.get('kind', 'bulk')}) {op.get('state')}: {figures(op)}"
    if op.get("halted_reason"):
        line += f" — {op['halted_reason']}"
    if op.get("state") == "halted":
        line += (f"\nGo on with `observatory ops resume {op['id']}`, or give up with "
                 f"`observatory ops cancel {op['id']}`.")
    return line


def _eta(op: dict[str, Any]) -> str:
    eta = op.get("eta_s")
    if eta is None or op.get("state") in FINAL_STATES:
        return ""
    eta = int(eta)
    return f"ETA {eta // 60}m{eta % 60:02d}s" if eta >= 60 else f"ETA {eta}s"


def follow_operation(api: Api, op_id: int) -> dict[str, Any]:
    """Poll the operation with a progress bar until it ends; Ctrl-C offers to cancel it.

    Returns the final operation. Declining the cancel keeps following.
    """
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                        console=err(), transient=True)
    task = progress.add_task(f"Operation {op_id}", total=None, detail="")
    op: dict[str, Any] = {}
    with progress:
        while True:
            try:
                op = api.get(f"/v1/operations/{op_id}")
                progress.update(task, total=op.get("total") or None,
                                completed=op.get("completed", 0),
                                description=f"Operation {op_id} {op.get('state', '')}",
                                detail=f"{op.get('succeeded', 0)} ok · {op.get('failed', 0)} "
                                       f"failed {_eta(op)}")
                if op.get("state") in FINAL_STATES:
                    return op
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                progress.stop()
                if typer.confirm(f"Cancel operation {op_id}?", default=False):
                    api.post(f"/v1/operations/{op_id}/cancel")
                    err().print(f"Cancel requested for operation {op_id}; waiting for it to stop")
                progress.start()


def start_confirmed(api: Api, path: str, body: dict[str, Any], *, question: str,
                    nothing: str, declined: str, started: str, yes: bool, wait: bool) -> None:
    """Start a bulk operation the way every `… -all`/`resync` command does: a dry run counts
    the scope; unless `yes`, `question` (with `{total}`) asks to confirm that count; the start
    passes the dry run's snapshot back, so the count confirmed is the count acted on.

    Exits 1 when declined, or under `wait` when the operation ends other than completed or
    cancelled; an empty scope prints `nothing` and exits 0.
    """
    counted = api.post(path, {k: v for k, v in body.items() if k != "reason"} | {"dry_run": True})
    if not counted["total"]:
        typer.echo(nothing)
        return
    if not yes and not typer.confirm(question.format(total=counted["total"]), default=False):
        typer.echo(declined, err=True)
        raise typer.Exit(1)
    result = api.post(path, {**body, "snapshot": counted["snapshot"]})
    op_id = result["operation_id"]
    typer.echo(f"Operation {op_id} started: {started.format(total=result['total'])} "
               f"(follow it: observatory ops show {op_id})")
    if wait:
        op = follow_operation(api, op_id)
        typer.echo(summary(op))
        if op.get("state") in FINAL_STATES - {"completed", "cancelled"}:
            raise typer.Exit(1)


def wait_for_delivery(api: Api, delivery_id: int, timeout: float) -> dict[str, Any]:
    """Poll the delivery (a spinner on stderr) until it succeeded, failed or was cancelled."""
    deadline = time.monotonic() + timeout
    with err().status(f"Waiting for delivery {delivery_id}…"):
        while True:
            delivery = api.get(f"/v1/deliveries/{delivery_id}")
            if delivery["status"] in FINAL_DELIVERY:
                return delivery
            if time.monotonic() > deadline:
                raise fail(f"delivery {delivery_id} is still {delivery['status']} after "
                           f"{timeout:g}s (it goes on; see GET /v1/deliveries/{delivery_id})")
            time.sleep(POLL_S)


def delivery_outcome(delivery: dict[str, Any]) -> str:
    """`Delivery 12 failed after 1 attempt(s), HTTP 400: <last error>`."""
    attempts = delivery.get("attempts") or []
    last = attempts[-1] if attempts else {}
    code = f", HTTP {last['status_code']}" if last.get("status_code") else ""
    line = (f"Delivery {delivery['id']} {delivery['status']} after {len(attempts)} "
            f"attempt(s){code}")
    if delivery["status"] != "succeeded" and delivery.get("last_error"):
        line += f": {delivery['last_error']}"
    return line


def operation_table(op: dict[str, Any]) -> Table:
    table = Table(title=f"Operation {op['id']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in op.items():
        if key != "id":
            table.add_row(key, "" if value is None else value if isinstance(value, str)
                          else json.dumps(value))
    return table


@app.command("show")
def show_command(op_id: OperationId, output: FormatOption = Output.table,
                 url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Show an operation's state and figures."""
    with handled(), Api(url, token) as api:
        op = api.read(f"/v1/operations/{op_id}", output)
        if op is not None:
            out().print(operation_table(op))


@app.command("list")
def list_command(output: FormatOption = Output.table, url: UrlOption = DEFAULT_URL,
                 token: TokenOption = None) -> None:
    """List bulk operations, newest first."""
    with handled(), Api(url, token) as api:
        listing = api.read("/v1/operations", output)
        if listing is None:
            return
        table = Table(title="Operations")
        for column in ("ID", "Kind", "State", "Progress", "Actor", "Started"):
            table.add_column(column)
        for op in listing.get("operations", []):
            table.add_row(str(op["id"]), op.get("kind", ""), op.get("state", ""), figures(op),
                          op.get("actor") or "", short_time(op.get("started_at")))
        out().print(table)


def _action(op_id: int, verb: str, reason: str | None, url: str, token: str | None) -> None:
    with handled(), Api(url, token) as api:
        op = api.post(f"/v1/operations/{op_id}/{verb}", {"reason": reason} if reason else {})
        typer.echo(f"Operation {op_id}: {verb} requested (state {op.get('state', '?')}; "
                   f"{figures(op)})")


@app.command("cancel")
def cancel_command(op_id: OperationId, reason: Reason = None, url: UrlOption = DEFAULT_URL,
                   token: TokenOption = None) -> None:
    """Cancel an operation: nothing new starts, in-flight deliveries finish."""
    _action(op_id, "cancel", reason, url, token)


@app.command("pause")
def pause_command(op_id: OperationId, reason: Reason = None, url: UrlOption = DEFAULT_URL,
                  token: TokenOption = None) -> None:
    """Pause an operation (resume it later)."""
    _action(op_id, "pause", reason, url, token)


@app.command("resume")
def resume_command(op_id: OperationId, reason: Reason = None, url: UrlOption = DEFAULT_URL,
                   token: TokenOption = None) -> None:
    """Resume a paused or canary-halted operation."""
    _action(op_id, "resume", reason, url, token)
