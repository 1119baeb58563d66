"""State of the Endpoints page: the endpoint overview, disable/enable, the retry editor and
a forced re-sync (admins; a confirmation stating the count, an optional since date).

Handlers call jobs.operations.endpoints and jobs.operations.resync (the same functions as REST
and the CLI) and keep plain rows. The page refreshes on load and after each action; a
re-sync's progress shows in the operations cards of the Scheduler and Dead letters pages.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import reflex as rx

from dashboard import runtime
from dashboard.state.rows import clock_label
from dashboard.state.session import current_actor, signed_in
from jobs.errors import OperationError, ValidationError
from jobs.operations import endpoints as ops
from jobs.operations import resync
from jobs.operations.endpoints import EndpointOverview
from jobs.policy import RetryPolicy
from models.enums import Role

logger = logging.getLogger(__name__)

#: the editor's text inputs, in form order (jitter is a switch, kept apart)
RETRY_FORM_FIELDS = ("max_retries", "backoff", "base_delay", "max_delay")
#: error slots shown inline: one per field, plus `retry_config` for the form as a whole
ERROR_KEYS = (*RETRY_FORM_FIELDS, "jitter", "retry_config")
UNEXPECTED = "Unexpected server error; see the dashboard log."


class EndpointItem(EndpointOverview):
    health_label: str  # "Healthy", "Failing since May 04 13:02:11", "Disabled"
    success_label: str  # "98 % of 50" over the last hour, "—" without deliveries
    events_label: str  # "All events" or the filter, comma-separated
    reason_label: str  # the disabled reason, "" when there is none


def _success_label(row: EndpointOverview) -> str:
    rate = row["success_rate"]
    if rate is None:
        return "—"
    return f"{rate * 100:.0f} % of {row['recent_finished']}"


def endpoint_item(row: EndpointOverview) -> EndpointItem:
    health = {"healthy": "Healthy", "disabled": "Disabled"}.get(
        row["health"], f"Failing since {clock_label(row['failing_since'])}")
    events = ", ".join(row["event_types"] or []) or "All events"
    return EndpointItem(**row, health_label=health, success_label=_success_label(row),
                        events_label=events, reason_label=row["disabled_reason"] or "")


def no_errors() -> dict[str, str]:
    return dict.fromkeys(ERROR_KEYS, "")


def form_values(policy: dict[str, Any]) -> dict[str, str]:
    """The editor's text values of a policy (`5.0` shows as `5`)."""
    return {name: f"{policy[name]:g}" if isinstance(policy[name], float) else str(policy[name])
            for name in RETRY_FORM_FIELDS}


def errors_of(exc: ValidationError) -> dict[str, str]:
    """Inline messages by field from an operation's ValidationError (first one per field)."""
    errors = no_errors()
    for item in exc.details.get("fields", []):
        key = item["field"] if item["field"] in errors else "retry_config"
        errors[key] = errors[key] or item["message"]
    return errors


def parse_since(value: str) -> datetime | None:
    """The since date typed (`YYYY-MM-DD`, or an ISO time; naive = UTC); None when blank.

    Raises:
        ValidationError: naming `since` when it is not a date.
    """
    value = value.strip()
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError("since: must be a date (YYYY-MM-DD)", {"fields": [
            {"field": "since", "rule": "date", "message": "must be a date (YYYY-MM-DD)"}]}
        ) from exc


class EndpointsState(rx.State):
    """Endpoints overview and the actions on one endpoint."""

    endpoints: list[EndpointItem] = []
    loaded: bool = False
    refreshed_at: str = ""
    busy: list[int] = []  # endpoints whose enable/disable request is in flight
    # disable confirmation: the endpoint asked about (0 = closed) and the reason typed
    disable_id: int = 0
    disable_url: str = ""
    disable_reason: str = ""
    disable_error: str = ""
    # retry policy editor (0 = closed); values are text as typed, validated on every change
    editor_id: int = 0
    editor_url: str = ""
    editor_is_default: bool = False
    retry_form: dict[str, str] = dict.fromkeys(RETRY_FORM_FIELDS, "")
    retry_jitter: bool = True
    retry_errors: dict[str, str] = no_errors()
    saving: bool = False
    # re-sync confirmation (0 = closed): the count and snapshot of the last dry run, for the
    # since date typed (YYYY-MM-DD, "" = every message)
    resync_id: int = 0
    resync_url: str = ""
    resync_since: str = ""
    resync_total: int = 0
    resync_snapshot: int = 0
    resync_reason: str = ""
    resync_error: str = ""
    resync_starting: bool = False

    @rx.var
    def app_count(self) -> int:
        return len({row["app_id"] for row in self.endpoints})

    @rx.var
    def failing_count(self) -> int:
        return sum(1 for row in self.endpoints if row["health"] == "failing")

    @rx.var
    def disabled_count(self) -> int:
        return sum(1 for row in self.endpoints if row["health"] == "disabled")

    @rx.var
    def has_retry_errors(self) -> bool:
        return any(self.retry_errors.values())

    async def _reload(self) -> None:
        await runtime.ensure_db()
        rows = [endpoint_item(row) for row in await ops.list_endpoints_overview()]
        if not self.loaded or rows != self.endpoints:
            self.endpoints = rows
        self.loaded = True
        self.refreshed_at = clock_label(datetime.now(UTC).isoformat())

    @rx.event
    async def load(self) -> None:
        """Page-load event (also the Refresh button); nothing without a sign-in."""
        if not await signed_in(self):
            return
        await self._reload()

    # -- disable / enable -------------------------------------------------------------------

    @rx.event
    def ask_disable(self, endpoint_id: int) -> None:
        """Open the confirmation for disabling one endpoint."""
        url = next((row["url"] for row in self.endpoints if row["id"] == endpoint_id), "")
        self.disable_id, self.disable_url = endpoint_id, url
        self.disable_reason, self.disable_error = "", ""

    @rx.event
    def set_disable_reason(self, value: str) -> None:
        self.disable_reason = value
        self.disable_error = ""

    @rx.event
    def cancel_disable(self) -> None:
        self.disable_id, self.disable_url, self.disable_reason, self.disable_error = 0, "", "", ""

    @rx.event
    async def confirm_disable(self) -> AsyncIterator[Any]:
        """Disable the endpoint asked about, with the reason typed."""
        endpoint_id = self.disable_id
        if not endpoint_id or endpoint_id in self.busy:
            return
        self.busy = [*self.busy, endpoint_id]
        yield
        try:
            await runtime.ensure_db()
            await ops.disable_endpoint(endpoint_id, await current_actor(self, Role.ADMIN), self.disable_reason)
        except ValidationError as exc:  # the dialog stays open with the reason's error
            self.disable_error = next(
                (f["message"] for f in exc.details.get("fields", [])), exc.message)
            self.busy = [i for i in self.busy if i != endpoint_id]
            return
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            self.busy = [i for i in self.busy if i != endpoint_id]
            self.cancel_disable()
            await self._reload()
            yield _failure("Could not disable the endpoint", exc)
            return
        self.busy = [i for i in self.busy if i != endpoint_id]
        self.cancel_disable()
        await self._reload()
        yield rx.toast.success("Endpoint disabled",
                               description=f"Endpoint {endpoint_id} receives no deliveries.")

    @rx.event
    async def enable(self, endpoint_id: int) -> AsyncIterator[Any]:
        """Re-enable an endpoint (its failure record starts afresh)."""
        if endpoint_id in self.busy:
            return
        self.busy = [*self.busy, endpoint_id]
        yield
        try:
            await runtime.ensure_db()
            await ops.enable_endpoint(endpoint_id, await current_actor(self, Role.ADMIN))
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            self.busy = [i for i in self.busy if i != endpoint_id]
            await self._reload()
            yield _failure("Could not enable the endpoint", exc)
            return
        self.busy = [i for i in self.busy if i != endpoint_id]
        await self._reload()
        yield rx.toast.success("Endpoint enabled",
                               description=f"Endpoint {endpoint_id} receives deliveries again.")

    # -- retry policy editor ----------------------------------------------------------------

    @rx.event
    async def open_retry_editor(self, endpoint_id: int) -> AsyncIterator[Any]:
        """Open the editor on the endpoint's effective policy."""
        try:
            await runtime.ensure_db()
            view = await ops.get_retry_config(endpoint_id)
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            yield _failure("Could not open the retry policy", exc)
            return
        self.editor_id = endpoint_id
        self.editor_url = next((r["url"] for r in self.endpoints if r["id"] == endpoint_id), "")
        self.editor_is_default = view["is_default"]
        self.retry_form = form_values(view["policy"])
        self.retry_jitter = bool(view["policy"]["jitter"])
        self.retry_errors = no_errors()

    @rx.event
    def close_retry_editor(self) -> None:
        self.editor_id, self.editor_url, self.saving = 0, "", False
        self.retry_errors = no_errors()

    def _config(self) -> dict[str, Any]:
        return {**{k: v.strip() for k, v in self.retry_form.items()}, "jitter": self.retry_jitter}

    def _validate(self) -> None:
        try:
            ops.validate_retry_config(self._config())
        except ValidationError as exc:
            self.retry_errors = errors_of(exc)
        else:
            self.retry_errors = no_errors()

    @rx.event
    def set_retry_field(self, field: str, value: str) -> None:
        """Take one typed value and re-validate the form (errors show under each field)."""
        if field not in RETRY_FORM_FIELDS:
            return
        self.retry_form = {**self.retry_form, field: value}
        self._validate()

    @rx.event
    def set_retry_jitter(self, value: bool) -> None:
        self.retry_jitter = bool(value)
        self._validate()

    @rx.event
    async def save_retry_config(self) -> AsyncIterator[Any]:
        """Store the form as the endpoint's own policy; bad fields keep the editor open."""
        async for item in self._store(self._config(), "Retry policy saved"):
            yield item

    @rx.event
    async def reset_retry_config(self) -> AsyncIterator[Any]:
        """Drop the endpoint's own policy: it follows the default one again."""
        async for item in self._store(None, "Retry policy reset to the default"):
            yield item

    async def _store(self, config: dict[str, Any] | None, done: str) -> AsyncIterator[Any]:
        endpoint_id = self.editor_id
        if not endpoint_id or self.saving:
            return
        self.saving = True
        yield
        try:
            await runtime.ensure_db()
            view = await ops.set_retry_config(endpoint_id, await current_actor(self, Role.ADMIN), config)
        except ValidationError as exc:
            self.retry_errors, self.saving = errors_of(exc), False
            yield rx.toast.error("Retry policy not saved", description=exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            self.saving = False
            yield _failure("Retry policy not saved", exc)
            return
        self.close_retry_editor()
        await self._reload()
        yield rx.toast.success(done, description=f"Endpoint {endpoint_id}: "
                               f"{ops.retry_summary(RetryPolicy(**view['policy']))}.")

    # -- re-sync (admins) ----------------------------------------------------------------

    async def _count(self) -> None:
        """The dry run for the endpoint and since date asked about."""
        preview = await resync.preview_resync(self.resync_id,
                                              since=parse_since(self.resync_since))
        self.resync_total, self.resync_snapshot = preview["total"], preview["snapshot"] or 0

    @rx.event
    async def ask_resync(self, endpoint_id: int) -> AsyncIterator[Any]:
        """Count what a re-sync of the endpoint would re-send and open the confirmation."""
        try:
            await runtime.ensure_db()
            await current_actor(self, Role.ADMIN)
            self.resync_id, self.resync_since = endpoint_id, ""
            await self._count()
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            self.resync_id = 0
            yield _failure("Re-sync is not possible", exc)
            return
        if not self.resync_total:
            self.cancel_resync()
            yield rx.toast.info("Nothing to re-sync",
                                description=f"Endpoint {endpoint_id} never received a message.")
            return
        self.resync_url = next((r["url"] for r in self.endpoints if r["id"] == endpoint_id), "")
        self.resync_reason, self.resync_error = "", ""

    @rx.event
    async def set_resync_since(self, value: str) -> AsyncIterator[Any]:
        """Narrow to messages since a date: the count in the dialog follows."""
        self.resync_since, self.resync_error = value, ""
        try:
            await self._count()
        except ValidationError as exc:
            self.resync_error = exc.message
        except Exception as exc:  # noqa: BLE001 - e.g. the endpoint was disabled meanwhile
            self.cancel_resync()
            yield _failure("Re-sync is not possible", exc)

    @rx.event
    def set_resync_reason(self, value: str) -> None:
        self.resync_reason, self.resync_error = value, ""

    @rx.event
    def cancel_resync(self) -> None:
        self.resync_id, self.resync_url, self.resync_since = 0, "", ""
        self.resync_total, self.resync_snapshot, self.resync_reason = 0, 0, ""
        self.resync_error, self.resync_starting = "", False

    @rx.event
    async def confirm_resync(self) -> AsyncIterator[Any]:
        """Start the re-sync over exactly the messages counted (the dry run's snapshot)."""
        endpoint_id = self.resync_id
        if not endpoint_id or self.resync_starting or not self.resync_total:
            return
        self.resync_starting = True
        yield
        try:
            await runtime.ensure_db()
            started = await resync.start_resync(
                endpoint_id, await current_actor(self, Role.ADMIN),
                since=parse_since(self.resync_since), reason=self.resync_reason or None,
                snapshot=self.resync_snapshot or None, redis=await runtime.get_redis())
        except ValidationError as exc:  # e.g. a reason is required: the dialog stays open
            self.resync_starting = False
            self.resync_error = next((f.get("message", exc.message)
                                      for f in exc.details.get("fields", [])), exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            self.cancel_resync()
            yield _failure("Re-sync was not started", exc)
            return
        self.cancel_resync()
        yield rx.toast.success(
            "Re-sync started",
            description=f"Operation {started['operation_id']}: re-sending {started['total']} "
                        f"messages to endpoint {endpoint_id}; progress on the Scheduler and "
                        "Dead letters pages.")


def _failure(title: str, exc: Exception) -> Any:
    """An error toast: the operation's message, or a generic one for a bug (logged)."""
    if isinstance(exc, OperationError):
        return rx.toast.error(title, description=exc.message)
    logger.error("%s", title, exc_info=exc)
    return rx.toast.error(title, description=UNEXPECTED)
