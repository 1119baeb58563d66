"""`observatory cron …`: the cron schedule over the REST API (list, runs, run, pause, resume,
retry).

Each command is one `/v1/cron…` call: the rules live on the server, the CLI shows the answer
and turns a refusal into `Error: message`, exit 1.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from dashboard.cli.client import (DEFAULT_URL, Api, FormatOption, Output, TokenOption, UrlOption,
                                  handled, out, short_time)

app = typer.Typer(help="Cron jobs: schedule, runs, run now, pause, resume, retry.",
                  no_args_is_help=True)

JobName = Annotated[str, typer.Argument(help="Cron job name (see `observatory cron list`).")]
RunId = Annotated[int, typer.Argument(help="Cron run id (see `observatory cron runs NAME`).",
                                      min=1)]


def _drift(run: dict[str, Any] | None) -> str:
    drift = (run or {}).get("drift_s")
    return f"+{drift:.1f} s" if drift is not None else ""


def _last(run: dict[str, Any] | None) -> str:
    if not run:
        return "never ran"
    return f"{run['status']} {short_time(run['scheduled_at'])}"


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Cron jobs ({len(jobs)})")
    for column in ("Job", "Schedule (UTC)", "State", "Last run", "Drift", "Missed 24h",
                   "Next run"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(job["name"], job["expression"],
                      f"paused by {job['paused_by']}" if job["paused"] else "active",
                      _last(job["last_run"]), _drift(job["last_run"]), str(job["missed_24h"]),
                      short_time((job["next_runs"] or [""])[0]) or "—")
    return table


def runs_table(name: str, runs: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Runs of {name} ({len(runs)} shown)")
    for column in ("ID", "Status", "Trigger", "Scheduled", "Drift", "Duration", "Retry",
                   "Error / reason"):
        table.add_column(column, overflow="fold")
    for run in runs:
        duration = f"{run['duration_ms']:.0f} ms" if run["duration_ms"] is not None else ""
        retry = (f"of #{run['retry_of']}" if run["retry_of"] else "") + \
            (f" → #{run['retried_by']}" if run["retried_by"] else "")
        table.add_row(str(run["id"]), run["status"], run["trigger"],
                      short_time(run["scheduled_at"]), _drift(run), duration, retry.strip(),
                      run["error"] or "")
    return table


@app.command("list")
def list_command(output: FormatOption = Output.table, url: UrlOption = DEFAULT_URL,
                 token: TokenOption = None) -> None:
    """List cron jobs: schedule, state, last run, drift, missed ticks, next run."""
    with handled(), Api(url, token) as api:
        if (data := api.read("/v1/cron", output)) is not None:
            out().print(jobs_table(data["jobs"]))


@app.command("runs")
def runs_command(
    name: JobName,
    status: Annotated[str | None, typer.Option(
        "--status", help="pending, running, succeeded, failed or missed.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="Page size.")] = 20,
    output: FormatOption = Output.table, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """List the runs of one cron job, newest first."""
    with handled(), Api(url, token) as api:
        data = api.read(f"/v1/cron/{name}/runs", output, status=status, limit=limit)
        if data is not None:
            out().print(runs_table(name, data["runs"]))


def _act(url: str, token: str | None, output: Output, path: str, done: str) -> None:
    with handled(), Api(url, token) as api:
        response = api.request("POST", path)
        if output is Output.json:
            typer.echo(response.text)
            return
        out().print(done.format(**api.json(response)))


@app.command("run")
def run_command(name: JobName, output: FormatOption = Output.table,
                url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Run a cron job now (even when paused)."""
    _act(url, token, output, f"/v1/cron/{name}/run", "Run {id} of {job} queued.")


@app.command("pause")
def pause_command(name: JobName, output: FormatOption = Output.table,
                  url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Pause a cron job: its ticks are skipped until it is resumed."""
    _act(url, token, output, f"/v1/cron/{name}/pause", "{name} paused.")


@app.command("resume")
def resume_command(name: JobName, output: FormatOption = Output.table,
                   url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Resume a paused cron job from its next tick."""
    _act(url, token, output, f"/v1/cron/{name}/resume", "{name} resumed.")


@app.command("retry")
def retry_command(run_id: RunId, output: FormatOption = Output.table,
                  url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Retry a failed or missed cron run (a new run; the old one is kept)."""
    _act(url, token, output, f"/v1/cron/runs/{run_id}/retry",
         "Run {retry_of} retried as run {id} of {job}.")
