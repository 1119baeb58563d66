"""The Heartbeat Monitor panel: labels computed from the rows, zombies tinted and first, the
scaling events listed; works from plain rows (tests) as from state Vars (the page)."""

from __future__ import annotations

from dashboard.components.heartbeats import heartbeat_panel
from dashboard.state.heartbeats import HeartbeatState, agent_view, scaling_event_item
from dashboard.state.rows import agent_item
from models.queries import AgentRow, ScalingEventRow


def _agent(id_: str, status: str, age_s: float) -> AgentRow:
    return AgentRow(id=id_, kind="worker", host="box", pid=7, status=status,
                    last_seen="2025-05-04T13:00:00+00:00", age_s=age_s, queue="obs:queue",
                    running=2, totals={"jobs": 9, "succeeded": 120, "failed": 3})


EVENT = ScalingEventRow(id=4, created_at="2025-05-04T13:00:05+00:00", direction="scale_up",
                        reason="queue depth 900 >= 500", queue_depth=900, oldest_age_s=12.5,
                        workers=2, suggested_workers=4,
                        hooks={"command": {"ok": True}, "webhook": {"ok": False}})


def test_labels_of_an_agent_and_a_scaling_event():
    view = agent_view(agent_item(_agent("worker@a:1", "alive", 4.2)))
    assert (view["age_label"], view["running_label"], view["totals_label"], view["queue_label"]) \
        == ("4 s ago", "2 running", "9 jobs · 120 ok · 3 failed", "obs:queue")
    item = scaling_event_item(EVENT)
    assert (item["direction_label"], item["figures_label"], item["hooks_label"]) == (
        "Scale up", "2 → 4 workers · 900 waiting · oldest 12.5 s", "command ok · webhook failed")


def test_zombie_row_is_tinted_and_scaling_events_render():
    agents = [agent_view(agent_item(_agent("worker@z:9", "zombie", 40))),
              agent_view(agent_item(_agent("worker@a:1", "alive", 1)))]
    html = str(heartbeat_panel(agents, 1, 1, [scaling_event_item(EVENT)]))
    assert html.index("worker@z:9") < html.index("worker@a:1")
    assert "agent-status-zombie" in html and 'id:"zombie-count"' in html
    assert 'id:"scaling-event-4"' in html and "queue depth 900 >= 500" in html
    assert "40 s ago" in html


def test_state_keeps_events_when_a_refresh_did_not_load_them():
    state = HeartbeatState()  # type: ignore[call-arg]
    state._apply([agent_item(_agent("worker@a:1", "alive", 1))], [EVENT])
    state._apply([agent_item(_agent("worker@a:1", "zombie", 30))])
    assert [e["id"] for e in state.scaling_events] == [4]
    assert state.agents[0]["status"] == "zombie" and state.agents[0]["age_label"] == "30 s ago"


def test_panel_binds_to_state_vars():
    from dashboard.views.heartbeats import heartbeat_view

    html = str(heartbeat_view())
    assert "heartbeat_state.scaling_events" in html and "heartbeat_state.agents" in html
