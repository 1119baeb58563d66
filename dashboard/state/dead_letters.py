"""State of the Dead Letter Queue panel: its entries and the Retry action."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import reflex as rx

from dashboard import runtime
from dashboard.state.panels import Panel, fetch_panels
from dashboard.state.rows import DeadLetterItem
from dashboard.state.session import current_actor
from jobs.errors import OperationError
from jobs.operations.retry import retry_dead_letter
from models.enums import Role

logger = logging.getLogger(__name__)

RETRY_FAILED = "Retry failed. Please try again."


class DeadLetterState(rx.State):
    """The DLQ entries an operator acts on (active and retrying), newest first."""

    entries: list[DeadLetterItem] = []
    # ids of the entries whose Retry request is in flight (their buttons are disabled)
    in_flight: list[int] = []
    loaded: bool = False

    @rx.var
    def failed_count(self) -> int:
        return sum(1 for entry in self.entries if entry["status"] == "active")

    @rx.var
    def queued_count(self) -> int:
        return sum(1 for entry in self.entries if entry["status"] == "retrying")

    def _apply(self, entries: list[DeadLetterItem]) -> None:
        """Take freshly loaded rows; assigning only on change keeps pushes empty when idle."""
        if not self.loaded or entries != self.entries:
            self.entries = entries
        if not self.loaded:
            self.loaded = True

    def _set_status(self, entry_id: int, status: str) -> None:
        self.entries = [
            DeadLetterItem(**{**entry, "status": status}) if entry["id"] == entry_id else entry
            for entry in self.entries
        ]

    async def _reload(self) -> None:
        self._apply((await fetch_panels({Panel.DEAD_LETTERS}))["dead_letters"])

    @rx.event
    async def retry_dlq_entry(self, entry_id: int) -> AsyncIterator[Any]:
        """Retry one entry: it shows "Queued" at once; a refusal leaves it failed with a toast."""
        if entry_id in self.in_flight:
            return
        self.in_flight = [*self.in_flight, entry_id]
        yield  # disable the button now, before the round trip
        try:
            await runtime.ensure_db()
            result = await retry_dead_letter(
                entry_id, await current_actor(self, Role.OPERATOR), redis=await runtime.get_redis())
        except OperationError as exc:
            self.in_flight = [i for i in self.in_flight if i != entry_id]
            await self._reload()  # show the entry as it really is
            yield rx.toast.error(RETRY_FAILED, description=exc.message)
            return
        except Exception:
            logger.exception("Retry of DLQ entry %s failed unexpectedly", entry_id)
            self.in_flight = [i for i in self.in_flight if i != entry_id]
            yield rx.toast.error(RETRY_FAILED,
                                 description="Unexpected server error; see the dashboard log.")
            return
        self._set_status(entry_id, "retrying")
        self.in_flight = [i for i in self.in_flight if i != entry_id]
        yield rx.toast.success(
            "Retry queued",
            description=f"DLQ entry {entry_id} is re-delivered as delivery "
                        f"{result['delivery_id']}.")
