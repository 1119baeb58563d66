"""Status enums shared by the models, the jobs and every surface."""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeadLetterStatus(StrEnum):
    ACTIVE = "active"
    RETRYING = "retrying"
    RESOLVED = "resolved"
    ARCHIVED = "archived"


class CronRunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MISSED = "missed"  # the tick did not start within its grace window (reason in `error`)


class AgentStatus(StrEnum):
    ALIVE = "alive"
    STOPPED = "stopped"  # exited cleanly: never a zombie
    ZOMBIE = "zombie"  # silent past the window; marked by the zombie sweep (jobs/fleet.py)


class BulkKind(StrEnum):
    RETRY = "retry"
    RESYNC = "resync"
    ARCHIVE = "archive"
    DELETE = "delete"


class BulkState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"  # stopped by its canary; resume goes on, cancel gives up
    CANCELLING = "cancelling"  # cancel asked; deliveries in flight still finishing
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
