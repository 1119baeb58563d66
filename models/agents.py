"""Workers and external agents with their heartbeats, and scaling signals about the fleet.

The heartbeat settings live here (not in jobs/) because the read side needs them too: the
dashboard decides "zombie" from the same window as the sweep that marks one.
"""

from __future__ import annotations

import os

from tortoise import fields
from tortoise.models import Model

from models.enums import AgentStatus

DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
MISSED_BEATS = 3  # the default window: this many beats missed in a row


class Agent(Model):
    id = fields.CharField(max_length=200, primary_key=True)  # e.g. `worker@host:pid`
    kind = fields.CharField(max_length=32, default="worker")  # worker | any external kind
    host = fields.CharField(max_length=200, default="")
    pid = fields.IntField(null=True)
    # db_default: what migration 0007 gives the rows already there ("" and 0: not reported)
    queue = fields.CharField(max_length=200, default="", db_default="")  # arq queue it serves
    version = fields.CharField(max_length=64, default="", db_default="")  # software it runs
    status = fields.CharEnumField(AgentStatus, default=AgentStatus.ALIVE, max_length=16)
    started_at = fields.DatetimeField(auto_now_add=True)
    last_seen = fields.DatetimeField()
    # jobs running at the last beat
    running = fields.IntField(default=0, db_default=0)
    # totals since start: jobs finished, delivery attempts that succeeded / did not
    jobs_done = fields.IntField(default=0, db_default=0)
    succeeded = fields.IntField(default=0, db_default=0)
    failed = fields.IntField(default=0, db_default=0)
    stopped_at = fields.DatetimeField(null=True)  # clean exit
    zombie_at = fields.DatetimeField(null=True)  # when the sweep declared it a zombie
    metadata = fields.JSONField(default=dict)

    class Meta:
        table = "agent"


class ScalingEvent(Model):
    id = fields.IntField(primary_key=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    direction = fields.CharField(max_length=16)  # scale_up | scale_down
    reason = fields.CharField(max_length=500)
    queue_depth = fields.IntField(default=0)  # deliveries waiting (queued, or retrying and due)
    oldest_age_s = fields.FloatField(default=0)  # how long the longest-waiting one waited
    workers = fields.IntField(default=0)  # live workers on the delivery queue
    suggested_workers = fields.IntField(default=0)
    # what the configured command / webhook answered: {"command": {...}, "webhook": {...}}
    hooks = fields.JSONField(default=dict)

    class Meta:
        table = "scaling_event"


def _seconds_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}: must be a number of seconds > 0, got {raw!r}")
    return value


def heartbeat_interval_s() -> float:
    """`HEARTBEAT_INTERVAL` (seconds between two beats of a worker; default 5)."""
    return _seconds_env("HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL_S)


def zombie_after_s() -> float:
    """`HEARTBEAT_ZOMBIE_AFTER`: an alive agent silent for longer is a zombie (seconds;
    default 3 missed beats). Must exceed the interval, or healthy workers would flap."""
    interval = heartbeat_interval_s()
    window = _seconds_env("HEARTBEAT_ZOMBIE_AFTER", MISSED_BEATS * interval)
    if window <= interval:
        raise ValueError(f"HEARTBEAT_ZOMBIE_AFTER: must be greater than HEARTBEAT_INTERVAL "
                         f"({interval:g} s), got {window:g}")
    return window
