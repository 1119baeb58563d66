"""State of the Audit log page: exact-match filters and one cursor page of rows.

Reading is for every signed-in role. A view is ONE page query (`models.queries.audit_page`,
keyset on the id, newest first: no OFFSET, no COUNT), whatever the size of the log. Paging
keeps a stack of the cursors of the pages before the current one, so Previous re-reads exactly
what was shown (rows written meanwhile appear on the first page, not mid-walk).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

import reflex as rx

from dashboard import runtime
from dashboard.state.paging import CursorPager
from dashboard.state.rows import clock_label
from dashboard.state.session import signed_in
from models.queries import AuditRow, audit_page

PAGE_SIZE = 50
#: the filters, with the width of their column (a longer value can match nothing)
FILTER_LIMITS = {"action": 100, "actor": 200, "target_type": 50}
FIELD_LABELS = {"action": "Action", "actor": "Actor", "target_type": "Target type"}
EMPTY_FORM = dict.fromkeys(FILTER_LIMITS, "")


class AuditItem(TypedDict):
    """One audit row as the table shows it."""

    id: int
    at: str  # `May 04 13:02:11` (UTC)
    at_iso: str
    actor: str
    action: str
    target_type: str
    target: str  # `dead_letter #12`
    details: str  # compact JSON, `—` when empty


def audit_item(row: AuditRow) -> AuditItem:
    details = row["details"] or {}
    return AuditItem(
        id=row["id"], at=clock_label(row["created_at"]), at_iso=row["created_at"],
        actor=row["actor"], action=row["action"], target_type=row["target_type"],
        target=f"{row['target_type']} #{row['target_id']}",
        # keys sorted: the same text whatever order the database keeps them in (JSONB sorts)
        details=json.dumps(details, separators=(",", ":"), ensure_ascii=False, default=str,
                           sort_keys=True)
        if details else "—")


def filter_errors(form: Mapping[str, str]) -> dict[str, str]:
    """Each bad filter's message (naming the field and the rule); empty when all are fine."""
    errors: dict[str, str] = {}
    for name, limit in FILTER_LIMITS.items():
        if len(str(form.get(name, "")).strip()) > limit:
            errors[name] = f"{FIELD_LABELS[name]}: at most {limit} characters"
    return errors


def query_of(form: Mapping[str, str]) -> dict[str, str | None]:
    """The `audit_page` filters of the form: blank fields do not filter."""
    return {name: (str(form.get(name, "")).strip() or None) for name in FILTER_LIMITS}


class AuditState(CursorPager, rx.State):
    """The /audit page: filters as typed and as applied, the page shown and its cursors."""

    form: dict[str, str] = EMPTY_FORM
    applied: dict[str, str] = EMPTY_FORM
    errors: dict[str, str] = EMPTY_FORM
    rows: list[AuditItem] = []
    loaded: bool = False

    @rx.var
    def filtered(self) -> bool:
        return any(self.applied.values())

    async def _read(self) -> None:
        await runtime.ensure_db()
        page = await audit_page(**query_of(self.applied), limit=PAGE_SIZE,
                                cursor=self.cursor or None)
        self.rows = [audit_item(row) for row in page["entries"]]
        self.next_cursor = page["next_cursor"] or 0
        self.loaded = True

    @rx.event
    async def load(self) -> None:
        """Page-load event: the first page of the applied filters (nothing without a sign-in)."""
        if not await signed_in(self):
            return
        self.cursor, self.previous = 0, []
        await self._read()

    @rx.event
    async def refresh(self) -> None:
        """Re-read the page shown."""
        if await signed_in(self):
            await self._read()

    @rx.event
    def set_filter(self, name: str, value: str) -> None:
        if name in FILTER_LIMITS:
            self.form = {**self.form, name: value}
            self.errors = {**self.errors, name: ""}

    @rx.event
    async def apply(self, data: dict[str, Any] | None = None) -> None:
        """Validate the typed filters (`data`: the submitted form, which wins over values
        still in flight) and show their first page; bad ones are named, nothing is loaded."""
        if data:
            self.form = {**self.form,
                         **{k: str(v) for k, v in data.items() if k in FILTER_LIMITS}}
        errors = filter_errors(self.form)
        self.errors = EMPTY_FORM | errors
        if errors or not await signed_in(self):
            return
        self.applied = {name: str(self.form.get(name, "")).strip() for name in FILTER_LIMITS}
        self.cursor, self.previous = 0, []
        await self._read()

    @rx.event
    async def reset_filters(self) -> None:
        self.form = dict(EMPTY_FORM)
        await self.apply()

    @rx.event
    async def filter_by(self, name: str, value: str) -> None:
        """Show only the rows sharing `value` (a click on an actor, action or target type)."""
        if name in FILTER_LIMITS:
            self.form = {**self.form, name: value}
            await self.apply()

