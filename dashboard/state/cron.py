"""State of the Cron Job Dashboard panel: jobs with their next run, recent runs, and the
operator actions (run now, pause/resume a job, retry a failed or missed run)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import reflex as rx

from dashboard import runtime
from dashboard.state.panels import Panel, fetch_panels
from dashboard.state.rows import CronRunItem
from dashboard.state.session import current_actor
from jobs.errors import OperationError
from jobs.operations import cron as ops
from models.enums import Role

logger = logging.getLogger(__name__)


class CronItem(CronRunItem):
    drift_label: str  # "+1.2 s" late start, "" when on time or unknown
    last_label: str  # upcoming rows: the job's last result ("never ran" before its first)
    can_retry: bool  # a failed or missed run not retried yet


def drift_label(drift_s: float | None) -> str:
    """`+1.2 s` for a start that late; nothing under 50 ms (arq's polling, not lateness)."""
    if drift_s is None or drift_s < 0.05:
        return ""
    return f"+{drift_s:.1f} s" if drift_s < 60 else f"+{drift_s / 60:.0f} min"


def cron_item(row: CronRunItem) -> CronItem:
    return CronItem(**row, drift_label=drift_label(row["drift_s"]),
                    last_label=row["last_status"] or "never ran",
                    can_retry=row["status"] in ("failed", "missed") and row["retried_by"] is None)


class CronState(rx.State):
    """The cron panel's rows (loaded by the Scheduler page and the relay) and its actions;
    each action needs an operator, checked in the handler."""

    upcoming: list[CronItem] = []  # one row per cron job: its next run, state, last result
    recent: list[CronItem] = []  # the latest recorded runs, newest first
    busy: list[str] = []  # keys ("run:name", "pause:name", "retry:id") of requests in flight
    loaded: bool = False

    @rx.var
    def failed_count(self) -> int:
        return sum(1 for run in self.recent if run["status"] == "failed" and run["can_retry"])

    @rx.var
    def missed_count(self) -> int:
        return sum(1 for run in self.recent if run["status"] == "missed" and run["can_retry"])

    def _apply(self, upcoming: list[CronRunItem], recent: list[CronRunItem]) -> None:
        jobs = [cron_item(row) for row in upcoming]
        runs = [cron_item(row) for row in recent]
        if not self.loaded or jobs != self.upcoming:
            self.upcoming = jobs
        if not self.loaded or runs != self.recent:
            self.recent = runs
        if not self.loaded:
            self.loaded = True

    async def _reload(self) -> None:
        """Re-read this panel through the page's refresh contract: rows that cannot be read
        show an error in this panel only (and a later good read clears it)."""
        # imported here: the Scheduler state imports this module
        from dashboard.state.scheduler import apply_panels

        await apply_panels(self, await fetch_panels({Panel.CRON}))

    async def _act(self, key: str, action: Callable[[str, Any], Awaitable[Any]],
                   done: str, failed: str) -> AsyncIterator[Any]:
        """Run one operator action: button busy, role checked here, toast, rows reloaded."""
        if key in self.busy:
            return
        self.busy = [*self.busy, key]
        yield
        try:
            await runtime.ensure_db()
            await action(await current_actor(self, Role.OPERATOR), await runtime.get_redis())
        except OperationError as exc:
            yield rx.toast.error(failed, description=exc.message)
        except Exception:
            logger.exception("cron action %s failed unexpectedly", key)
            yield rx.toast.error(failed, description="Unexpected server error; see the log.")
        else:
            yield rx.toast.success(done)
        finally:
            self.busy = [k for k in self.busy if k != key]
        await self._reload()

    @rx.event
    async def retry_run(self, run_id: int) -> AsyncIterator[Any]:
        """Retry a failed or missed run: a new run row, run now by a worker."""
        async for update in self._act(
                f"retry:{run_id}", lambda who, redis: ops.retry_run(run_id, who, redis=redis),
                f"Run {run_id} retried", "Retry refused"):
            yield update

    @rx.event
    async def run_job(self, name: str) -> AsyncIterator[Any]:
        async for update in self._act(
                f"run:{name}", lambda who, redis: ops.run_now(name, who, redis=redis),
                f"{name} queued to run now", "Run refused"):
            yield update

    @rx.event
    async def pause_job(self, name: str) -> AsyncIterator[Any]:
        async for update in self._act(
                f"pause:{name}", lambda who, redis: ops.pause(name, who, redis=redis),
                f"{name} paused", "Pause refused"):
            yield update

    @rx.event
    async def resume_job(self, name: str) -> AsyncIterator[Any]:
        async for update in self._act(
                f"pause:{name}", lambda who, redis: ops.resume(name, who, redis=redis),
                f"{name} resumed", "Resume refused"):
            yield update
