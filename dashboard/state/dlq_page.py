"""State of the Dead Letter Queue page: filters, one cursor page, entry detail and actions.

Every read is bounded whatever the size of the DLQ: a view is ONE page query
(`models.queries.dead_letter_page`, keyset on the id: no OFFSET, no COUNT) plus the aggregate
`stats()` of the filter. Paging keeps a stack of the cursors of the pages before the current
one, so Previous re-reads exactly what was shown. Actions call jobs.operations (the same
functions as REST and the CLI) after checking the role; refusals become toasts and the page is
re-read so it shows the entries as they really are.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from datetime import date, timedelta
from typing import Any, TypedDict

import reflex as rx
from pydantic import ValidationError as PydanticValidationError

from dashboard import runtime
from dashboard.state import dlq_export
from dashboard.state.bulk import BulkRetryState, load_operations
from dashboard.state.paging import CursorPager
from dashboard.state.rows import DeadLetterItem, clock_label, dead_letter_item, duration_label, humanize
from dashboard.state.scheduler import SchedulerState
from dashboard.state.session import current_actor, signed_in
from jobs.errors import OperationError, ValidationError
from jobs.operations import dlq as ops
from jobs.operations.retry import retry_dead_letter
from models.dlq_filter import DlqFilter
from models.enums import DeadLetterStatus, Role
from models.queries import DeadLetterDetail, DeliveryDetail, dead_letter_page

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
UNEXPECTED = "Unexpected server error; see the dashboard log."
#: (success, refusal) toast titles of each action
RETRY_TITLES = ("Retry queued", "Retry failed")
ARCHIVE_TITLES = ("Entry archived", "Entry not archived")
DELETE_TITLES = ("Entry deleted", "Entry not deleted")
SANDBOX_FAILED = "Sandbox retry not sent"
EXPORT_FAILED = "Export failed"
FILTER_FIELDS = ("status", "event_type", "endpoint_id", "app_id", "since", "until", "q")
FIELD_LABELS = {"status": "Status", "event_type": "Event type", "endpoint_id": "Endpoint id",
                "app_id": "Application id", "since": "Since", "until": "Until", "q": "Search"}
#: the status choice → statuses asked for (None: the default, active and retrying)
STATUS_CHOICES: dict[str, list[str] | None] = {
    "open": None,
    **{s.value: [s.value] for s in DeadLetterStatus},
    "all": [s.value for s in DeadLetterStatus],
}
DEFAULT_FORM = {name: "" for name in FILTER_FIELDS} | {"status": "open"}
EMPTY_EXPORT = "No DLQ entry matches the applied filters."
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: friendlier words for pydantic's rule types
_RULE_MESSAGES = {"int_parsing": "must be a whole number", "int_from_float": "must be a whole number",
                  "greater_than_equal": "must be 1 or more",
                  "datetime_from_date_parsing": "must be a date (YYYY-MM-DD)",
                  "datetime_parsing": "must be a date (YYYY-MM-DD)"}


class FormError(Exception):
    """Bad form input (filters, sandbox overrides): `errors` maps each field to its inline
    message, which names the field."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def no_filter_errors() -> dict[str, str]:
    return dict.fromkeys(FILTER_FIELDS, "")


def _end_of_day(value: str) -> str:
    """An `until` date is inclusive: entries created before the NEXT midnight (UTC)."""
    if _DAY.match(value):
        try:
            return (date.fromisoformat(value) + timedelta(days=1)).isoformat()
        except ValueError:
            return value  # "2024-02-31": the filter names the field
    return value


def _message(error: Mapping[str, Any]) -> tuple[str, str]:
    """(field, message) of one pydantic error; model-level ones say "field: rule"."""
    loc = error.get("loc") or ()
    if loc:
        field = str(loc[0])
        return field, _RULE_MESSAGES.get(error.get("type", ""), str(error.get("msg", "")))
    text = str(error.get("msg", "")).removeprefix("Value error, ")
    field, _, rule = text.partition(": ")
    if field == "until" and "later than since" in rule:
        rule = "must be on or after since"
    return (field, rule) if field in FILTER_FIELDS else ("q", text)


def build_filter(form: Mapping[str, str]) -> DlqFilter:
    """The DlqFilter of the typed form values (dates from `<input type=date>`).

    Raises:
        FormError: naming every bad field (nothing is loaded then).
    """
    values: dict[str, Any] = {k: str(form.get(k, "")).strip() for k in FILTER_FIELDS}
    choice = values.pop("status") or "open"
    if choice not in STATUS_CHOICES:
        raise FormError({"status": f"{FIELD_LABELS['status']}: must be one of "
                                     f"{', '.join(STATUS_CHOICES)}"})
    if values["until"]:
        values["until"] = _end_of_day(values["until"])
    data = {k: v for k, v in values.items() if v} | {"status": STATUS_CHOICES[choice]}
    try:
        return DlqFilter.model_validate(data)
    except PydanticValidationError as exc:
        errors = _errors(exc)
        if errors.keys().isdisjoint({"since", "until"}) and data.get("since") and data.get("until"):
            try:  # pydantic skips the order check when another field is bad: name it too
                DlqFilter.model_validate({"since": data["since"], "until": data["until"]})
            except PydanticValidationError as order:
                errors |= _errors(order)
        raise FormError(errors) from exc


def _errors(exc: PydanticValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        field, message = _message(error)
        errors.setdefault(field, f"{FIELD_LABELS.get(field, field)}: {message}")
    return errors


def retry_scope(f: DlqFilter) -> dict[str, Any]:
    """The filter as a Retry All scope: JSON, without status (bulk retry acts on active ones)."""
    return {k: v for k, v in f.described().items() if k not in ("status", "max_id")}


# -- sandbox retry overrides ---------------------------------------------------------------------

SANDBOX_FIELDS = ("url", "headers", "payload")


def no_sandbox_errors() -> dict[str, str]:
    return dict.fromkeys(SANDBOX_FIELDS, "")


def _header_lines(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise FormError({"headers": f'Headers: line {number} must be "Name: value"'})
        headers[name.strip()] = value.strip()
    return headers


def sandbox_overrides(form: Mapping[str, str]) -> dict[str, Any]:
    """The `overrides` of a sandbox retry from the dialog's text: a URL (required: a sandbox
    never goes to production unless told to), "Name: value" header lines, a JSON object of
    payload fields to replace. The operation checks the rest (SSRF guard, reserved headers).

    Raises:
        FormError: naming the field.
    """
    url = str(form.get("url", "")).strip()
    errors = {} if url else {"url": "URL: required (where the sandbox delivery goes)"}
    overrides: dict[str, Any] = {"url": url}
    try:
        overrides["headers"] = _header_lines(str(form.get("headers", "")))
    except FormError as exc:
        errors |= exc.errors
    payload = str(form.get("payload", "")).strip()
    if payload:
        try:
            overrides["payload"] = json.loads(payload)
        except ValueError as exc:
            errors["payload"] = f"Payload: not valid JSON ({exc})"
        else:
            if not isinstance(overrides["payload"], dict):
                errors["payload"] = "Payload: must be a JSON object of the fields to replace"
    if errors:
        raise FormError(errors)
    return overrides


def sandbox_errors_of(exc: ValidationError) -> dict[str, str]:
    """Inline messages from the operation's field errors (`overrides.url` → url); empty
    when none of them is a field of the dialog."""
    errors: dict[str, str] = {}
    for item in exc.details.get("fields", []):
        parts = str(item.get("field", "")).split(".")
        field = parts[1] if len(parts) > 1 and parts[0] == "overrides" else ""
        if field in SANDBOX_FIELDS:
            errors.setdefault(field, f"{field.capitalize() if field != 'url' else 'URL'}: "
                                     f"{item.get('message', exc.message)}")
    return errors


# -- the entry detail, as labels ----------------------------------------------------------------

class HeaderItem(TypedDict):
    name: str
    value: str


class AttemptItem(TypedDict):
    delivery: str  # "original #12", "retry #40"
    number: int
    at: str
    status_code: str
    error: str
    duration: str
    response: str


class HistoryItem(TypedDict):
    attempt: str
    at: str
    status_code: str
    error: str
    duration: str


def webhook_headers(message_id: int) -> list[HeaderItem]:
    """What a (re-)delivery of the entry carries. The signature is computed at send time from
    the endpoint's secret, which is never shown."""
    return [HeaderItem(name="content-type", value="application/json"),
            HeaderItem(name="webhook-id", value=f"msg_{message_id}"),
            HeaderItem(name="webhook-timestamp", value="Unix seconds, set when sent"),
            HeaderItem(name="webhook-signature",
                       value="v1,<HMAC-SHA256 with the endpoint secret, computed when sent>")]


def _code(value: Any) -> str:
    return "—" if value in (None, "") else str(value)


def attempt_items(delivery: DeliveryDetail | None, kind: str) -> list[AttemptItem]:
    if delivery is None:
        return []
    return [AttemptItem(
        delivery=f"{kind} #{delivery['id']}", number=a["number"], at=clock_label(a["started_at"]),
        status_code=_code(a["status_code"]),
        error=" · ".join(p for p in (a["error"], a["error_message"]) if p) or "—",
        duration=duration_label(a["duration_ms"]), response=a["response_excerpt"] or "")
        for a in delivery["attempts"]]


def history_items(history: list[Any]) -> list[HistoryItem]:
    items = []
    for item in history:
        item = item if isinstance(item, dict) else {"message": str(item)}
        error = " · ".join(str(p) for p in (item.get("error"), item.get("message")) if p)
        duration = item.get("duration_ms")
        items.append(HistoryItem(
            attempt=_code(item.get("attempt")), at=clock_label(item.get("at")),
            status_code=_code(item.get("status_code")), error=error or "—",
            duration=duration_label(duration) if isinstance(duration, int | float) else "—"))
    return items


def detail_fields(detail: DeadLetterDetail) -> dict[str, str]:
    """The scalar facts of an entry, as the dialog shows them."""
    return {
        "id": str(detail["id"]), "status": detail["status"], "event_type": detail["event_type"],
        "endpoint_url": detail["endpoint_url"], "endpoint_id": _code(detail["endpoint_id"]),
        "app_id": str(detail["app_id"]), "message_id": str(detail["message_id"]),
        "delivery_id": str(detail["delivery_id"]),
        "failure_reason": humanize(detail["failure_reason"]),
        "attempts": str(detail["attempts"]), "retry_count": str(detail["retry_count"]),
        "created_at": clock_label(detail["created_at"]),
        "updated_at": clock_label(detail["updated_at"]),
        "resolved_at": clock_label(detail["resolved_at"]) if detail["resolved_at"] else "—",
    }


class DlqPageState(CursorPager, rx.State):
    """The /dlq page. Reads need a sign-in; retry and archive an operator; delete an admin."""

    # filters: as typed, and the values of the page shown (paging and Retry All use those)
    form: dict[str, str] = DEFAULT_FORM
    applied: dict[str, str] = DEFAULT_FORM
    filter_errors: dict[str, str] = no_filter_errors()
    scope: dict[str, Any] = {}  # the applied filter as a Retry All scope
    # the page's rows (its cursors: CursorPager)
    rows: list[DeadLetterItem] = []
    loaded: bool = False
    # totals of the applied filter by status (whatever status is chosen), from stats()
    by_status: dict[str, int] = dict.fromkeys([s.value for s in DeadLetterStatus], 0)
    total: int = 0
    oldest: str = "—"
    newest: str = "—"
    # the detail dialog (0: closed)
    detail_id: int = 0
    detail: dict[str, str] = {}
    detail_payload: str = ""
    detail_headers: list[HeaderItem] = []
    detail_attempts: list[AttemptItem] = []
    detail_history: list[HistoryItem] = []
    # confirmations of archive / delete (0: closed), the reason typed and its error
    archive_id: int = 0
    delete_id: int = 0
    confirm_label: str = ""
    reason: str = ""
    reason_error: str = ""
    busy: list[int] = []  # entries with a request in flight (their buttons spin)
    # the sandbox retry dialog (0: closed): overrides as typed, and their errors
    sandbox_id: int = 0
    sandbox_form: dict[str, str] = dict.fromkeys(SANDBOX_FIELDS, "")
    sandbox_errors: dict[str, str] = no_sandbox_errors()
    exporting: str = ""  # the format of the export in flight ("": none)

    @rx.var
    def has_filter_errors(self) -> bool:
        return any(self.filter_errors.values())

    # -- loading -----------------------------------------------------------------------------

    async def _read(self) -> None:
        """The page at `cursor` of the applied filter, and its totals: one page query and
        the aggregate stats, never a count or a scan of everything."""
        f = build_filter(self.applied)
        await runtime.ensure_db()
        page = await dead_letter_page(f, limit=PAGE_SIZE, cursor=self.cursor or None)
        self.rows = [dead_letter_item(row) for row in page["entries"]]
        self.next_cursor = page["next_cursor"] or 0
        stats = await ops.stats(f.model_copy(update={"status": None}))
        self.by_status, self.total = stats["by_status"], stats["total"]
        self.oldest, self.newest = clock_label(stats["oldest"]), clock_label(stats["newest"])
        self.scope = retry_scope(f)
        self.loaded = True

    @rx.event
    async def load(self) -> None:
        """Page-load event: the first page of the applied filter, and the bulk operations
        (running ones survive a reload). Nothing without a sign-in."""
        if not await signed_in(self):
            return
        self.cursor, self.previous = 0, []
        await self._read()
        (await self.get_state(BulkRetryState))._apply(await load_operations())
        # the live relay pushes Retry All progress to sessions that watch (routes.LIVE_ROUTES)
        (await self.get_state(SchedulerState))._watching = True

    @rx.event
    async def refresh(self) -> None:
        """Re-read the page shown (after an action, or when a bulk operation ended)."""
        if await signed_in(self):
            await self._read()

    @rx.event
    def set_filter(self, name: str, value: str) -> None:
        if name in FILTER_FIELDS:
            self.form = {**self.form, name: value}
            self.filter_errors = {**self.filter_errors, name: ""}

    @rx.event
    async def apply(self, data: dict[str, Any] | None = None) -> None:
        """Validate the typed filters (`data`: the submitted form, which wins over values
        still in flight); bad ones are named inline and nothing new is loaded."""
        if data:
            self.form = {**self.form, **{k: str(v) for k, v in data.items() if k in FILTER_FIELDS}}
        try:
            build_filter(self.form)
        except FormError as exc:
            self.filter_errors = no_filter_errors() | exc.errors
            return
        if not await signed_in(self):
            return
        self.filter_errors = no_filter_errors()
        self.applied, self.cursor, self.previous = dict(self.form), 0, []
        await self._read()

    @rx.event
    async def reset_filters(self) -> None:
        self.form = dict(DEFAULT_FORM)
        await self.apply()

    # -- export ------------------------------------------------------------------------------

    @rx.event
    async def export(self, fmt: str) -> AsyncIterator[Any]:
        """Download the entries matching the applied filters as "csv" or "jsonl", through
        the export operation of REST and the CLI (any signed-in role: it is a read; like
        REST, no audit row). The dashboard stops at dlq_export's limits and says so."""
        if self.exporting or fmt not in dlq_export.FORMATS:
            return
        self.exporting = fmt
        yield
        try:
            await runtime.ensure_db()
            actor = await current_actor(self, Role.VIEWER)
            done = await dlq_export.export_file(build_filter(self.applied), fmt)
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            self.exporting = ""
            yield self._failure(EXPORT_FAILED, exc)
            return
        self.exporting = ""
        logger.info("dlq export by %s: %d entries as %s%s", actor, done.count, fmt,
                    " (cut at the dashboard limit)" if done.truncated else "")
        if not done.count:
            yield rx.toast.info("Nothing to export", description=EMPTY_EXPORT)
            return
        label = dlq_export.FORMATS[fmt][0]
        download = rx.download(data=done.text, filename=done.filename, mime_type=done.mime_type)
        if done.truncated:
            yield [download, rx.toast.warning("Export cut short", duration=20_000, description=(
                f"Exported the oldest {done.count:,} matching entries as {label}: the "
                f"dashboard exports at most {dlq_export.limit_label()}; "
                f"{dlq_export.FOR_MORE}."))]
        else:
            yield [download, rx.toast.success("Export ready", description=(
                f"{done.count:,} {'entry' if done.count == 1 else 'entries'} exported as "
                f"{label} ({done.filename})."))]


    # -- detail ------------------------------------------------------------------------------

    @rx.event
    async def open_detail(self, entry_id: int) -> Any:
        if not await signed_in(self):
            return None
        try:
            detail = await ops.entry_detail(entry_id)
        except OperationError as exc:
            await self._read()
            return rx.toast.error("Entry not shown", description=exc.message)
        self.detail_id, self.detail = entry_id, detail_fields(detail)
        self.detail_payload = json.dumps(detail["payload"], indent=2, ensure_ascii=False,
                                         default=str)
        self.detail_headers = webhook_headers(detail["message_id"])
        self.detail_attempts = (attempt_items(detail["original_delivery"], "original")
                                + attempt_items(detail["last_retry_delivery"], "retry"))
        self.detail_history = history_items(detail["error_history"])
        return None

    @rx.event
    def close_detail(self) -> None:
        self.detail_id = 0

    # -- actions -----------------------------------------------------------------------------

    def _label(self, entry_id: int) -> str:
        row = next((r for r in self.rows if r["id"] == entry_id), None)
        return f"#{entry_id}" + (f" ({row['event_type']} → {row['endpoint_url']})" if row else "")

    @rx.event
    async def retry(self, entry_id: int) -> AsyncIterator[Any]:
        """Re-deliver one entry as a new delivery (operator)."""
        async for item in self._act(entry_id, Role.OPERATOR, RETRY_TITLES, self._retry):
            yield item

    async def _retry(self, entry_id: int, actor: str) -> str:
        result = await retry_dead_letter(entry_id, actor, redis=await runtime.get_redis())
        return f"DLQ entry {entry_id} is re-delivered as delivery {result['delivery_id']}."

    @rx.event
    def ask_sandbox(self, entry_id: int) -> None:
        """Open the sandbox dialog (in place of the detail it is opened from)."""
        self.sandbox_id, self.detail_id = entry_id, 0
        self.confirm_label = self._label(entry_id)
        self.sandbox_form, self.sandbox_errors = dict.fromkeys(SANDBOX_FIELDS, ""), no_sandbox_errors()

    @rx.event
    def set_sandbox_field(self, name: str, value: str) -> None:
        if name in SANDBOX_FIELDS:
            self.sandbox_form = {**self.sandbox_form, name: value}
            self.sandbox_errors = {**self.sandbox_errors, name: ""}

    @rx.event
    def close_sandbox(self) -> None:
        self.sandbox_id, self.sandbox_errors = 0, no_sandbox_errors()

    @rx.event
    async def confirm_sandbox(self) -> AsyncIterator[Any]:
        """Send the entry's message once to the URL given, with the overrides (operator); the
        entry keeps its status. Bad overrides are named inline and nothing is sent."""
        entry_id = self.sandbox_id
        if not entry_id or entry_id in self.busy:
            return
        try:
            overrides = sandbox_overrides(self.sandbox_form)
        except FormError as exc:
            self.sandbox_errors = no_sandbox_errors() | exc.errors
            return
        self.busy = [*self.busy, entry_id]
        yield
        try:
            result = await retry_dead_letter(
                entry_id, await current_actor(self, Role.OPERATOR),
                redis=await runtime.get_redis(), sandbox=True, overrides=overrides)
            outcome = rx.toast.success("Sandbox retry queued", description=(
                f"Delivery {result['delivery_id']} goes to {overrides['url']}; "
                f"DLQ entry {entry_id} keeps its status."))
        except ValidationError as exc:
            if errors := sandbox_errors_of(exc):
                self.busy = [i for i in self.busy if i != entry_id]
                self.sandbox_errors = no_sandbox_errors() | errors
                return
            outcome = self._failure(SANDBOX_FAILED, exc)
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            outcome = self._failure(SANDBOX_FAILED, exc)
        self.busy = [i for i in self.busy if i != entry_id]
        self.sandbox_id = 0
        await self._read()
        yield outcome

    @rx.event
    def ask_archive(self, entry_id: int) -> None:
        self.archive_id, self.delete_id = entry_id, 0
        self.confirm_label, self.reason, self.reason_error = self._label(entry_id), "", ""

    @rx.event
    def ask_delete(self, entry_id: int) -> None:
        self.delete_id, self.archive_id = entry_id, 0
        self.confirm_label, self.reason, self.reason_error = self._label(entry_id), "", ""

    @rx.event
    def set_reason(self, value: str) -> None:
        self.reason, self.reason_error = value, ""

    @rx.event
    def close_confirm(self) -> None:
        self.archive_id, self.delete_id, self.reason_error = 0, 0, ""

    @rx.event
    async def confirm_archive(self) -> AsyncIterator[Any]:
        """Archive the entry asked about (operator), with the reason typed."""
        async for item in self._act(self.archive_id, Role.OPERATOR, ARCHIVE_TITLES,
                                    self._archive):
            yield item

    async def _archive(self, entry_id: int, actor: str) -> str:
        await ops.archive(entry_id, actor, reason=self.reason, redis=await runtime.get_redis())
        return f"DLQ entry {entry_id} is archived."

    @rx.event
    async def confirm_delete(self) -> AsyncIterator[Any]:
        """Delete the entry asked about for good (admin); its audit row stays."""
        async for item in self._act(self.delete_id, Role.ADMIN, DELETE_TITLES,
                                    self._delete):
            yield item

    async def _delete(self, entry_id: int, actor: str) -> str:
        await ops.delete(entry_id, actor, reason=self.reason, redis=await runtime.get_redis())
        return f"DLQ entry {entry_id} is deleted; the audit log keeps its facts."

    async def _act(self, entry_id: int, role: Role, titles: tuple[str, str],
                   action: Any) -> AsyncIterator[Any]:
        """Run `action(entry_id, actor)` with the busy spinner, then toast and re-read the page.

        A reason the operation refuses keeps the confirmation open with the error inline.
        """
        succeeded, failed = titles
        if not entry_id or entry_id in self.busy:
            return
        self.busy = [*self.busy, entry_id]
        yield
        try:
            await runtime.ensure_db()
            outcome = rx.toast.success(succeeded, description=await action(
                entry_id, await current_actor(self, role)))
        except ValidationError as exc:
            fields = {f.get("field"): f.get("message") for f in exc.details.get("fields", [])}
            if "reason" in fields and (self.archive_id or self.delete_id):
                self.busy = [i for i in self.busy if i != entry_id]
                self.reason_error = f"Reason: {fields['reason']}"
                return
            outcome = self._failure(failed, exc)
        except Exception as exc:  # noqa: BLE001 - reported as a toast
            outcome = self._failure(failed, exc)
        self.busy = [i for i in self.busy if i != entry_id]
        self.archive_id, self.delete_id, self.reason_error = 0, 0, ""
        if self.detail_id == entry_id:
            self.detail_id = 0
        await self._read()  # the rows as they really are now
        yield outcome

    @staticmethod
    def _failure(title: str, exc: Exception) -> Any:
        if isinstance(exc, OperationError):
            return rx.toast.error(title, description=exc.message)
        logger.error("%s", title, exc_info=exc)
        return rx.toast.error(title, description=UNEXPECTED)
