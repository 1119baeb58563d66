"""Cron Job Dashboard pieces: a row per job (next run, last result, Run now, Pause/Resume) and
a row per recent run (status, drift, reason, Retry), each carrying `cron-status-<status>`.

The panel shares its row with the Heartbeat Monitor (60 % of the page on wide screens), so its
tables must fit that width without sideways scrolling: headers wrap, a time's drift and a
last result's drift go under them, the action buttons stack, and a reason wraps and is cut at
two lines (the whole text in its tooltip). Job names, cron expressions, times and badges never
break (a name is what an operator types into the CLI). On phones the rows stack as cards
(`panel.data_table`), each cell named by its column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import reflex as rx

from dashboard.components.badges import cron_status_badge, status_badge
from dashboard.components.panel import cell, column_headers, data_table, empty_state, panel
from dashboard.components.reactive import any_true, each, either, is_empty, negate, pick

# a soft tint per status so failed, missed and running rows stand out from the rest
_ROW_TINT = {"failed": rx.color("red", 2), "missed": rx.color("orange", 2),
             "running": rx.color("blue", 2), "paused": rx.color("gray", 2)}
# statuses the shared badge table may not know (yet): their own colour here
_EXTRA = {"missed": ("Missed", "orange"), "paused": ("Paused", "gray")}

Handler = Callable[[Any], Any]
RUN_HEADERS = ("Job", "Status", "Scheduled (UTC) · drift", "Duration", "Error / reason", "")
JOB_HEADERS = ("Job", "Next run (UTC)", "Last result", "Missed 24 h", "")


def cron_badge(status: Any) -> rx.Component:
    """The status badge, `cron-badge-<status>`; missed (orange) and paused (gray) included."""
    extra = {key: status_badge(label, color, class_name=f"cron-badge cron-badge-{key}")
             for key, (label, color) in _EXTRA.items()}
    return pick(status, extra, cron_status_badge(status))


def _field(row: Any, key: str, default: Any = "") -> Any:
    """`row[key]`; a plain row without the key (a bare CronRunItem) gives `default`."""
    return row.get(key, default) if isinstance(row, dict) else row[key]


def _job_cell(run: Any) -> rx.Component:
    return rx.table.row_header_cell(rx.vstack(
        _small(run["job"], weight="medium"),
        rx.code(run["expression"], variant="ghost", size="1", color_scheme="gray",
                white_space="nowrap"),
        spacing="0"))


def _small(text: Any, **props: Any) -> rx.Component:
    """A cell's text, kept on one line (times, counts) unless `props` say otherwise."""
    return rx.text(text, size="2", **{"white_space": "nowrap", **props})


def _when(row: Any) -> rx.Component:
    """The time, and its drift beside it (or under it when the column is narrow)."""
    return rx.flex(
        _small(row["when_label"]),
        _small(_field(row, "drift_label"), color_scheme="orange", class_name="cron-drift"),
        wrap="wrap", column_gap="0.5em", align="center")


def _reason(text: Any) -> rx.Component:
    """An error or missed reason: at most two lines, broken anywhere; all of it on hover."""
    return rx.text(text, size="1", color_scheme="red", title=text, class_name="cron-reason",
                   min_width="6em", overflow="hidden", overflow_wrap="anywhere",
                   display="-webkit-box",
                   style={"-webkit-line-clamp": "2", "-webkit-box-orient": "vertical"})


def _action(label: Any, aria: Any, on_click: Any, busy: Any, disabled: Any,
            class_name: str, color: str = "gray") -> rx.Component:
    """A real <button>: keyboard operable, spins and is disabled while its request runs."""
    return rx.button(label, on_click=on_click, loading=busy, disabled=disabled,
                     aria_label=aria, size="1", variant="soft", color_scheme=color,
                     class_name=class_name)


def cron_job_row(job: Any, *, is_busy: Handler, can_operate: Any, on_run: Handler,
                 on_pause: Handler, on_resume: Handler) -> rx.Component:
    """One job: next run (or paused), last result with its drift, missed ticks, actions."""
    name, status = job["job"], job["status"]
    paused = status == "paused"
    toggle_busy = is_busy(f"pause:{name}")
    return rx.table.row(
        _job_cell(job),
        cell(either(paused, cron_badge("paused"), _small(job["when_label"])),
             label=JOB_HEADERS[1]),
        cell(rx.flex(
            either(_field(job, "last_status", None), cron_badge(_field(job, "last_status")),
                   _small("never ran", color_scheme="gray")),
            _small(_field(job, "drift_label"), color_scheme="orange", class_name="cron-drift"),
            wrap="wrap", gap="0.5em", align="center"), label=JOB_HEADERS[2]),
        cell(_small(_field(job, "missed_24h", 0), class_name="cron-missed-count"),
             label=JOB_HEADERS[3]),
        cell(rx.flex(
            _action("Run now", f"Run {name} now", on_run(name), is_busy(f"run:{name}"),
                    any_true(is_busy(f"run:{name}"), negate(can_operate)), "cron-run-button"),
            either(paused,
                   _action("Resume", f"Resume {name}", on_resume(name), toggle_busy,
                           any_true(toggle_busy, negate(can_operate)), "cron-resume-button",
                           "green"),
                   _action("Pause", f"Pause {name}", on_pause(name), toggle_busy,
                           any_true(toggle_busy, negate(can_operate)), "cron-pause-button")),
            wrap="wrap", gap="0.5em"), actions=True),
        id=f"cron-job-{name}",
        class_name=f"cron-job cron-status-{status}",
        background=pick(status, _ROW_TINT, "transparent"),
        align="center",
    )


def cron_row(run: Any, *, is_busy: Handler | None = None, can_operate: Any = False,
             on_retry: Handler | None = None) -> rx.Component:
    """One run: status, when, drift, duration, error or missed reason, and Retry when it
    failed or was missed (and was not retried yet)."""
    status, run_id = run["status"], run["id"]
    retry = rx.fragment()
    if on_retry is not None and is_busy is not None:
        busy = is_busy(f"retry:{run_id}")
        retry = either(_field(run, "can_retry", False), _action(
            "Retry", f"Retry cron run {run_id}", on_retry(run_id), busy,
            any_true(busy, negate(can_operate)), "cron-retry-button", "red"), rx.fragment())
    return rx.table.row(
        rx.table.row_header_cell(_small(run["job"], weight="medium")),
        cell(cron_badge(status), label="Status"),
        cell(_when(run), label="Scheduled (UTC)"),
        cell(_small(run["duration_label"], color_scheme="gray"), label="Duration"),
        cell(_reason(run["error_label"]), label="Error / reason"),
        cell(retry, actions=True),
        id=f"cron-run-{run_id}",
        class_name=f"cron-row cron-status-{status}",
        background=pick(status, _ROW_TINT, "transparent"),
        align="center",
    )


def cron_table(runs: Any, empty_message: str) -> rx.Component:
    """Runs in a table without actions (static renders), or `empty_message` when none."""
    return _table(runs, empty_message, RUN_HEADERS, cron_row)


def _table(rows: Any, empty_message: str, headers: tuple[str, ...],
           render: Callable[[Any], rx.Component]) -> rx.Component:
    return either(
        is_empty(rows),
        empty_state(empty_message, icon="calendar-x"),
        data_table(column_headers(*headers, wrap=True), rx.table.body(each(rows, render)),
                   class_name="cron-table"),
    )


def cron_panel(upcoming: Any, recent: Any, failed_count: Any = 0, missed_count: Any = 0, *,
               is_busy: Handler = lambda key: False, can_operate: Any = False,
               on_run: Handler | None = None, on_pause: Handler | None = None,
               on_resume: Handler | None = None, on_retry: Handler | None = None
               ) -> rx.Component:
    """The Cron Job Dashboard card: the jobs (next run, last result, actions), then the
    recent runs (failed and missed ones kept until retried)."""
    noop: Handler = lambda _: rx.noop()  # noqa: E731 - static renders without handlers
    job_row = lambda job: cron_job_row(  # noqa: E731
        job, is_busy=is_busy, can_operate=can_operate, on_run=on_run or noop,
        on_pause=on_pause or noop, on_resume=on_resume or noop)
    run_row = lambda run: cron_row(run, is_busy=is_busy, can_operate=can_operate,  # noqa: E731
                                   on_retry=on_retry)
    return panel(
        "Cron Job Dashboard",
        "calendar-clock",
        rx.vstack(
            rx.text("Jobs", size="2", weight="bold", color_scheme="gray"),
            _table(upcoming, "No cron jobs are scheduled.", JOB_HEADERS, job_row),
            rx.text("Recent runs", size="2", weight="bold", color_scheme="gray",
                    padding_top="0.5em"),
            _table(recent, "No cron run has been recorded yet.", RUN_HEADERS, run_row),
            spacing="2",
            width="100%",
        ),
        description="Every job's next run and last result; failed and missed runs until "
                    "retried",
        aside=rx.hstack(
            either(failed_count > 0, rx.badge(f"{failed_count} failed", color_scheme="red",
                                              variant="surface"), rx.fragment()),
            either(missed_count > 0, rx.badge(f"{missed_count} missed", color_scheme="orange",
                                              variant="surface"), rx.fragment()),
            spacing="2"),
        id="cron-dashboard-panel",
        min_width="0",  # a grid item: never wider than its column
    )
