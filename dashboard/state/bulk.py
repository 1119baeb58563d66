"""State of "Retry All": the confirmation (a frozen count), and live progress with Pause,
Resume and Cancel for every bulk operation in progress (and the ones that just finished) —
Retry All, re-sync, archive and delete by filter alike, each card labelled by its kind.

The rules live in jobs.operations.bulk; this state asks it, checks the role first (operators
and admins act, viewers watch), and shows refusals as toasts. Progress arrives through the
live relay (`bulk.progress` events → `apply_operations`), never by polling from the browser.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import reflex as rx

from dashboard import runtime
from dashboard.state.session import current_actor
from jobs.errors import OperationError, ValidationError
from jobs.operations import bulk
from pydantic import ValidationError as PydanticValidationError

from models.dlq_filter import DlqFilter, select
from models.enums import BulkKind, DeadLetterStatus, Role

logger = logging.getLogger(__name__)

#: finished operations stay on screen this long, so the operator sees how it ended
SHOW_FINISHED_FOR = timedelta(minutes=10)
LIVE = frozenset(s.value for s in bulk.LIVE_STATES)


class OperationItem(TypedDict):
    """An operation as the progress card shows it (labels computed here, not in the UI)."""

    id: int
    kind: str
    title: str  # "Retry all #12", "Re-sync #13", "Archive #14", "Delete #15"
    state: str
    live: bool
    total: int
    done: int  # completed + cancelled + skipped: what the bar shows
    succeeded: int
    failed: int
    cancelled: int
    percent: int
    figures_label: str  # "120 succeeded · 3 failed · 0 cancelled · 2 skipped"
    eta_label: str  # "about 12 s left", "" when unknown or finished
    scope_label: str
    actor: str
    reason: str
    halted_reason: str
    new_failures: int  # entries that failed after the scope was frozen (not included)


def _eta_label(eta_s: float | None, live: bool) -> str:
    if not live or eta_s is None:
        return ""
    if eta_s < 60:
        return f"about {max(eta_s, 1):.0f} s left"
    return f"about {eta_s / 60:.0f} min left"


#: kind → (card title, what a success is called, the scope when nothing narrows it)
KIND_LABELS: dict[str, tuple[str, str, str]] = {
    "retry": ("Retry all", "succeeded", "every active entry"),
    "resync": ("Re-sync", "succeeded", "every message received"),
    "archive": ("Archive", "archived", "every active or resolved entry"),
    "delete": ("Delete", "deleted", "every entry not being retried"),
}


def _labels(kind: str) -> tuple[str, str, str]:
    return KIND_LABELS.get(kind, (kind.capitalize() or "Operation", "succeeded", "everything"))


def _scope_label(scope: dict[str, Any], kind: str = "retry") -> str:
    parts = [f"{key.replace('_', ' ')} {value}" for key, value in scope.items()
             if key not in ("status", "max_id")]
    if kind in ("archive", "delete") and scope.get("status") not in (
            None, [s.value for s in bulk.ACTS_ON[BulkKind(kind)]]):
        parts.insert(0, f"status {', '.join(scope['status'])}")  # narrower than the kind's
    return ", ".join(parts) if parts else _labels(kind)[2]


def _figures_label(view: bulk.OperationView) -> str:
    """"120 succeeded · 3 failed · 0 cancelled · 2 skipped"; archive and delete have no
    failures: "40 archived · 0 cancelled · 1 skipped"."""
    done = f"{view['succeeded']} {_labels(view['kind'])[1]}"
    failed = [] if view["kind"] in ("archive", "delete") else [f"{view['failed']} failed"]
    return " · ".join([done, *failed, f"{view['cancelled']} cancelled",
                       f"{view['skipped']} skipped"])


async def _new_failures(view: bulk.OperationView) -> int:
    """Active entries of a Retry All's scope that arrived after it was frozen (other kinds'
    scopes are not the active DLQ: nothing to say)."""
    if view["kind"] != "retry":
        return 0
    scope = dict(view["scope"])
    frozen_at = scope.pop("max_id", None)
    if not frozen_at:
        return 0
    scope["status"] = [DeadLetterStatus.ACTIVE.value]
    return await select(DlqFilter.model_validate(scope)).filter(id__gt=frozen_at).count()


async def operation_item(view: bulk.OperationView) -> OperationItem:
    live = view["state"] in LIVE
    done = view["completed"] + view["cancelled"] + view["skipped"]
    total = max(view["total"], 1)
    return OperationItem(
        id=view["id"], kind=view["kind"], title=f"{_labels(view['kind'])[0]} #{view['id']}",
        state=view["state"], live=live, total=view["total"], done=done,
        succeeded=view["succeeded"], failed=view["failed"], cancelled=view["cancelled"],
        percent=min(100, round(100 * done / total)), figures_label=_figures_label(view),
        eta_label=_eta_label(view["eta_s"], live),
        scope_label=_scope_label(view["scope"], view["kind"]),
        actor=view["actor"], reason=view["reason"] or "",
        halted_reason=view["halted_reason"] or "",
        new_failures=await _new_failures(view) if live else 0)


def finished_summary(op: OperationItem) -> str:
    """"Bulk retry #4 complete: 20 succeeded, 3 failed" (or cancelled / halted); "Re-sync #5
    complete: …", "Archive #6 complete: 40 archived"."""
    verdict = {"completed": "complete"}.get(op["state"], op["state"])
    kind = op.get("kind", "retry")
    name, success, _ = _labels(kind)
    name = "Bulk retry" if kind == "retry" else name
    text = f"{name} #{op['id']} {verdict}: {op['succeeded']} {success}"
    if kind not in ("archive", "delete"):
        text += f", {op['failed']} failed"
    return text + (f", {op['cancelled']} cancelled" if op["cancelled"] else "")


async def load_operations() -> list[OperationItem]:
    """Operations in progress, then those finished in the last ten minutes (newest first)."""
    await runtime.ensure_db()
    views = await bulk.list_operations(redis=await runtime.get_redis(), limit=10)
    cutoff = datetime.now(UTC) - SHOW_FINISHED_FOR
    shown = [v for v in views if v["state"] in LIVE
             or (v["finished_at"] and datetime.fromisoformat(v["finished_at"]) >= cutoff)]
    return [await operation_item(v) for v in shown]


class BulkRetryState(rx.State):
    """The Retry All dialog and the progress cards."""

    operations: list[OperationItem] = []
    # the confirmation dialog: the scope and count frozen when it opened, the reason typed
    confirm_open: bool = False
    confirm_scope: dict[str, Any] = {}
    confirm_scope_label: str = ""
    confirm_total: int = 0
    confirm_snapshot: int = 0
    reason: str = ""
    reason_error: str = ""
    new_since_confirm: int = 0  # failures that arrived while the dialog was open
    preparing: bool = False
    starting: bool = False
    busy: list[int] = []  # operations whose Pause/Resume/Cancel request is in flight

    # "Bulk retry complete: 20 succeeded, 3 failed" for operations that finished while this
    # session watched them live; shown by a toast fired from the page (see `announce`)
    finished_summary: str = ""

    def _apply(self, operations: list[OperationItem]) -> None:
        was_live = {op["id"] for op in self.operations if op["live"]}
        ended = [op for op in operations if op["id"] in was_live and not op["live"]]
        if ended:
            self.finished_summary = "; ".join(finished_summary(op) for op in ended)
        if operations != self.operations:
            self.operations = operations

    @rx.event
    def announce(self) -> Any:
        """Fired when the summary appears on the page: show it as a toast once."""
        summary, self.finished_summary = self.finished_summary, ""
        if summary:
            return rx.toast.success(summary, duration=10_000)
        return None

    async def note_entries(self) -> None:
        """While the dialog is open, count failures that arrived after its snapshot."""
        if self.confirm_open and self.confirm_snapshot:
            scope = DlqFilter.model_validate(
                {**self.confirm_scope, "status": [DeadLetterStatus.ACTIVE]})
            self.new_since_confirm = await select(scope).filter(
                id__gt=self.confirm_snapshot).count()

    @rx.event
    async def ask_retry_all(self, scope: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """Freeze the selection (the active entries of `scope`, DlqFilter fields; everything
        when left out) and ask the operator to confirm it."""
        self.preparing = True
        yield
        try:
            await current_actor(self, Role.OPERATOR)
            scope = {k: v for k, v in (scope or {}).items() if v not in (None, "", [])}
            scope.pop("status", None)  # a bulk retry acts on active entries only
            preview = await bulk.preview(DlqFilter.model_validate(scope))
        except PydanticValidationError as exc:
            self.preparing = False
            yield rx.toast.error("Retry all is not possible",
                                 description=f"Invalid filter: {exc.errors()[0]['msg']}")
            return
        except OperationError as exc:
            self.preparing = False
            yield rx.toast.error("Retry all is not possible", description=exc.message)
            return
        self.preparing = False
        if not preview["total"]:
            yield rx.toast.info("Nothing to retry", description="No failed delivery is active.")
            return
        self.confirm_total, self.confirm_snapshot = preview["total"], preview["snapshot"] or 0
        self.confirm_scope, self.confirm_scope_label = scope, _scope_label(scope)
        self.reason, self.reason_error, self.new_since_confirm = "", "", 0
        self.confirm_open = True

    @rx.event
    def set_reason(self, value: str) -> None:
        self.reason = value
        self.reason_error = ""

    @rx.event
    def close_confirm(self) -> None:
        self.confirm_open = False
        self.reason_error = ""

    @rx.event
    async def confirm_retry_all(self) -> AsyncIterator[Any]:
        """Start the operation over exactly the entries counted when the dialog opened."""
        if self.starting or not self.confirm_open:
            return
        self.starting = True
        yield
        try:
            actor = await current_actor(self, Role.OPERATOR)
            started = await bulk.start_retry_all(
                DlqFilter.model_validate(self.confirm_scope), actor, reason=self.reason.strip() or None,
                snapshot=self.confirm_snapshot or None, redis=await runtime.get_redis())
        except ValidationError as exc:  # e.g. a reason is required: the dialog stays open
            self.starting = False
            self.reason_error = next((f.get("message", exc.message)
                                      for f in exc.details.get("fields", [])), exc.message)
            return
        except OperationError as exc:
            self.starting, self.confirm_open = False, False
            yield rx.toast.error("Retry all was not started", description=exc.message)
            return
        self.starting, self.confirm_open = False, False
        self._apply(await load_operations())
        yield rx.toast.success(
            "Retry all started",
            description=f"Operation {started['operation_id']}: {started['total']} entries.")

    async def _control(self, operation_id: int, action: Callable[..., Awaitable[Any]],
                       done: str) -> AsyncIterator[Any]:
        if operation_id in self.busy:
            return
        self.busy = [*self.busy, operation_id]
        yield
        try:
            actor = await current_actor(self, Role.OPERATOR)
            await action(operation_id, actor, redis=await runtime.get_redis())
        except OperationError as exc:
            yield rx.toast.error(f"Operation {operation_id}: not {done}", description=exc.message)
        except Exception:
            logger.exception("bulk operation %s: %s failed", operation_id, done)
            yield rx.toast.error(f"Operation {operation_id}: not {done}",
                                 description="Unexpected server error; see the dashboard log.")
        else:
            yield rx.toast.success(f"Operation {operation_id} {done}")
        self.busy = [i for i in self.busy if i != operation_id]
        self._apply(await load_operations())

    @rx.event
    async def cancel(self, operation_id: int) -> AsyncIterator[Any]:
        """Stop it: nothing new starts, queued deliveries are skipped, in-flight ones finish."""
        async for item in self._control(operation_id, bulk.cancel_operation, "cancelled"):
            yield item

    @rx.event
    async def pause(self, operation_id: int) -> AsyncIterator[Any]:
        async for item in self._control(operation_id, bulk.pause_operation, "paused"):
            yield item

    @rx.event
    async def resume(self, operation_id: int) -> AsyncIterator[Any]:
        async for item in self._control(operation_id, bulk.resume_operation, "resumed"):
            yield item
