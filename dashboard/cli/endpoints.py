"""`observatory endpoints …`: actions on one endpoint over the REST API (force re-sync).

Like the other command groups, a few lines over one `/v1/endpoints/{id}…` call: the rules
live on the server; a refusal becomes `Error: message`, exit 1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from dashboard.cli.client import DEFAULT_URL, Api, TokenOption, UrlOption, handled
from dashboard.cli.ops import Reason, start_confirmed

app = typer.Typer(help="Endpoints: force a re-sync of the messages they received.",
                  no_args_is_help=True)

EndpointId = Annotated[int, typer.Argument(help="Endpoint id.", min=1)]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
WaitOperation = Annotated[bool, typer.Option("--wait",
                                             help="Follow the progress (Ctrl-C: cancel).")]


def _since(value: str | None) -> str | None:
    """An ISO 8601 date or time, checked here: a malformed one is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date or time "
                                 "(e.g. 2025-05-01 or 2025-05-01T12:00:00Z)",
                                 param_hint="--since") from exc
    return value


Since = Annotated[str | None, typer.Option(
    "--since", callback=_since,
    help="Only messages created at or after this (ISO 8601; a bare date is midnight UTC).")]


@app.command("resync")
def resync_command(endpoint_id: EndpointId, since: Since = None, reason: Reason = None,
                   yes: Yes = False, wait: WaitOperation = False,
                   url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Re-send every message the endpoint received (or those since --since) as new
    deliveries, one per message, as a bulk operation. Admin."""
    body: dict[str, Any] = {k: v for k, v in (("since", since), ("reason", reason)) if v}
    in_range = f" since {since}" if since else ""
    with handled(), Api(url, token) as api:
        start_confirmed(api, f"/v1/endpoints/{endpoint_id}/resync", body,
                        question=f"Re-send {{total}} messages to endpoint {endpoint_id}?",
                        nothing=f"Nothing to re-sync: endpoint {endpoint_id} received no "
                                f"message{in_range}.",
                        declined="Nothing re-sent.",
                        started=f"re-sending {{total}} messages to endpoint {endpoint_id}",
                        yes=yes, wait=wait)
