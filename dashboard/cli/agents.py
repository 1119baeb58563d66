"""`observatory agents …`: the fleet — workers and agents with their heartbeats, scaling
events, and a heartbeat for scripts that report themselves (an HTTP client of `/v1`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from dashboard.cli.client import (DEFAULT_URL, Api, FormatOption, Output, TokenOption, UrlOption,
                                  handled, out, short_time)

app = typer.Typer(help="Workers and agents: heartbeats, zombies, scaling events.",
                  no_args_is_help=True)

STATUS_STYLE = {"alive": "green", "zombie": "bold red", "stopped": "dim"}


def ago(seconds: float | None) -> str:
    """`4 s ago`, `3 min ago`, `2 h ago`."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    return f"{seconds // 3600:.0f} h ago"


def _totals(agent: dict[str, Any]) -> str:
    t = agent.get("totals") or {}
    return f"{t.get('jobs', 0)} jobs · {t.get('succeeded', 0)} ok · {t.get('failed', 0)} failed"


@app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option(
        "--status", help="Only agents in this status: alive, zombie or stopped.")] = None,
    output: FormatOption = Output.table, url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List workers and agents, zombies first."""
    with handled(), Api(url, token) as api:
        listing = api.read("/v1/agents", output, status=status)
        if listing is None:
            return
        table = Table(title=f"Agents (zombie after {listing.get('zombie_after_s', 0):g} s "
                            "without a heartbeat)")
        for column in ("ID", "Status", "Last seen", "Host", "PID", "Queue", "Running",
                       "Totals"):
            table.add_column(column)
        for agent in listing.get("agents", []):
            table.add_row(agent["id"], Text(agent["status"],
                                            style=STATUS_STYLE.get(agent["status"], "")),
                          ago(agent.get("age_s")), agent.get("host") or "",
                          str(agent.get("pid") or ""), agent.get("queue") or "",
                          str(agent.get("running", 0)), _totals(agent))
        out().print(table)


@app.command("scaling-events")
def scaling_events_command(
    limit: Annotated[int, typer.Option("--limit", min=1, max=500,
                                       help="At most this many events.")] = 20,
    output: FormatOption = Output.table, url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List recent scaling events (scale_up / scale_down), newest first."""
    with handled(), Api(url, token) as api:
        listing = api.read("/v1/scaling-events", output, limit=limit)
        if listing is None:
            return
        table = Table(title="Scaling events")
        for column in ("ID", "At", "Direction", "Workers", "Suggested", "Queue depth",
                       "Oldest wait", "Reason"):
            table.add_column(column)
        for event in listing.get("events", []):
            table.add_row(str(event["id"]), short_time(event.get("created_at")),
                          event["direction"], str(event["workers"]),
                          str(event["suggested_workers"]), str(event["queue_depth"]),
                          f"{event['oldest_age_s']:g} s", event["reason"])
        out().print(table)


@app.command("beat")
def beat_command(
    agent_id: Annotated[str, typer.Argument(help="The agent's id (e.g. `backup@db1`).")],
    kind: Annotated[str | None, typer.Option("--kind", help="What it is (default agent).")] = None,
    running: Annotated[int | None, typer.Option("--running", min=0,
                                                help="Jobs running now.")] = None,
    stopped: Annotated[bool, typer.Option("--stopped",
                                          help="A clean exit: never a zombie.")] = False,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Send one heartbeat for an external agent (needs an operator token)."""
    body: dict[str, Any] = {"status": "stopped" if stopped else "alive"}
    if kind:
        body["kind"] = kind
    if running is not None:
        body["running"] = running
    with handled(), Api(url, token) as api:
        agent = api.post(f"/v1/agents/{agent_id}/heartbeat", body)
        typer.echo(f"Agent {agent['id']}: {agent['status']}, last seen {agent['last_seen']}")
