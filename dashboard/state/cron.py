"""State of the Cron Job Dashboard panel: upcoming and recent runs."""

from __future__ import annotations

import reflex as rx

from dashboard.state.rows import CronRunItem


class CronState(rx.State):
    upcoming: list[CronRunItem] = []  # the next run of every (unpaused) cron job
    recent: list[CronRunItem] = []  # the latest recorded runs, newest first
    loaded: bool = False

    @rx.var
    def failed_count(self) -> int:
        return sum(1 for run in self.recent if run["status"] == "failed")

    def _apply(self, upcoming: list[CronRunItem], recent: list[CronRunItem]) -> None:
        if not self.loaded or upcoming != self.upcoming:
            self.upcoming = upcoming
        if not self.loaded or recent != self.recent:
            self.recent = recent
        if not self.loaded:
            self.loaded = True
