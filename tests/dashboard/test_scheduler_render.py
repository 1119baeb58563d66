"""Scheduler rendering: empty DLQ, cron status classes, zombies, and the live page itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import reflex as rx

from dashboard.components.cron import cron_panel, cron_table
from dashboard.components.dead_letters import EMPTY_MESSAGE, dead_letter_panel
from dashboard.components.heartbeats import heartbeat_panel
from dashboard.pages.scheduler import scheduler_page
from dashboard.state.dead_letters import DeadLetterState
from dashboard.state.heartbeats import HeartbeatState
from dashboard.state.rows import agent_item, cron_run_item
from dashboard.state.scheduler import SchedulerState
from models.queries import AgentRow, CronRunRow
from tests.dashboard.sessions import actor_of, signed_in


def nodes(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every element of a `Component.render()` tree, depth first."""
    yield tree
    for child in tree.get("children", []):
        yield from nodes(child)


def class_names(node: dict[str, Any]) -> list[str]:
    for prop in node.get("props", []):
        if prop.startswith("className:"):
            return prop.removeprefix("className:").strip('"').split()
    return []


def cron_run(status: str, id_: int | None = 1, error: str | None = None) -> CronRunRow:
    return CronRunRow(id=id_, job=f"job-{status}", expression="*/5 * * * *", status=status,
                      scheduled_at="2025-05-04T13:00:00+00:00", started_at=None,
                      finished_at=None, duration_ms=None, error=error)


def agent(id_: str, status: str) -> AgentRow:
    return AgentRow(id=id_, kind="worker", host="box", pid=4242, status=status,
                    last_seen="2025-05-04T13:00:00+00:00", age_s=75.0)


async def test_empty_dlq_renders_empty_state_and_heartbeat_panel_without_retry_buttons(db):
    root = await signed_in()
    await (await root.get_state(SchedulerState)).load()  # an empty database
    dlq = await root.get_state(DeadLetterState)
    beats = await root.get_state(HeartbeatState)
    assert dlq.entries == [] and beats.agents == []

    dlq_html = str(dead_letter_panel(dlq.entries, dlq.failed_count, dlq.queued_count,
                                     on_retry=DeadLetterState.retry_dlq_entry))
    beats_html = str(heartbeat_panel(beats.agents, beats.alive_count, beats.zombie_count))

    assert f'"{EMPTY_MESSAGE}"' in dlq_html
    assert "Retry delivery" not in dlq_html and "RadixThemesButton" not in dlq_html
    assert 'id:"heartbeat-monitor-panel"' in beats_html
    assert "Retry delivery" not in beats_html


def test_cron_pending_running_and_failed_render_their_classes_in_distinct_rows():
    runs = [cron_run_item(cron_run("pending", None)), cron_run_item(cron_run("running", 2)),
            cron_run_item(cron_run("failed", 3, error="exit 1"))]

    tree = cron_table(runs, "none").render()

    rows = [n for n in nodes(tree) if "cron-row" in class_names(n)]
    statuses = [[c for c in class_names(row) if c.startswith("cron-status-")] for row in rows]
    assert statuses == [["cron-status-pending"], ["cron-status-running"],
                        ["cron-status-failed"]]
    # visually distinct: each row carries its own coloured badge
    badges = [[c for n in nodes(row) for c in class_names(n) if c.startswith("cron-badge-")]
              for row in rows]
    assert badges == [["cron-badge-pending"], ["cron-badge-running"], ["cron-badge-failed"]]
    labels = [str(row) for row in rows]
    assert all(color in str(tree) for color in ('"gray"', '"blue"', '"red"'))
    assert len(set(labels)) == 3


def test_cron_panel_splits_upcoming_and_recent_and_counts_failures():
    html = str(cron_panel([cron_run_item(cron_run("pending", None))],
                          [cron_run_item(cron_run("succeeded", 5)),
                           cron_run_item(cron_run("failed", 6, error="boom"))],
                          failed_count=1))
    assert "cron-status-succeeded" in html and "cron-status-pending" in html
    assert '"1 failed"' in html and '"boom"' in html
    assert 'id:"cron-dashboard-panel"' in html


def test_zombie_worker_is_flagged_with_a_visible_badge():
    agents = [agent_item(agent("worker@a:1", "alive")), agent_item(agent("worker@b:2", "zombie"))]

    tree = heartbeat_panel(agents, alive_count=1, zombie_count=1).render()

    rows = [n for n in nodes(tree) if "agent-row" in class_names(n)]
    assert ["agent-status-zombie" in class_names(row) for row in rows] == [False, True]
    zombie_row = str(rows[1])
    assert '"zombie"' in zombie_row and '"worker@b:2"' in zombie_row
    assert '"1 min ago"' in zombie_row  # last seen: 75 s before the refresh
    assert '"1 zombie"' in str(tree)


def test_live_page_binds_panels_to_their_own_states_and_has_no_polling():
    html = str(scheduler_page())

    assert 'id:"heartbeat-monitor-panel"' in html
    assert 'id:"dead-letter-queue-panel"' in html and 'id:"cron-dashboard-panel"' in html
    assert "heartbeat_state.agents" in html and "dead_letter_state.entries" in html
    assert "retry_dlq_entry" in html
    assert '"Observatory"' in html
    for polling in ("setInterval", "interval:", "Moment"):
        assert polling not in html
