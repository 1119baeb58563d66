"""Heartbeat Monitor panel bound to HeartbeatState (independent of the DLQ panel's state)."""

from __future__ import annotations

import reflex as rx

from dashboard.components.heartbeats import heartbeat_panel
from dashboard.state.heartbeats import HeartbeatState


def heartbeat_view() -> rx.Component:
    return heartbeat_panel(HeartbeatState.agents, HeartbeatState.alive_count,
                           HeartbeatState.zombie_count, HeartbeatState.scaling_events)
