"""Settings read from the environment, shared by every process (see README's table)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


_TRUTHY = {"1", "true", "yes", "on"}


def _float_env(name: str, default: float) -> float:
    """A non-negative number, or `default` when unset or not a number."""
    try:
        return max(float(_env(name) or default), 0.0)
    except ValueError:
        return default


def _int_env(name: str, default: int, low: int, high: int) -> int:
    """An integer from `low` to `high`, `default` when unset; anything else is an error that
    names the variable and the rule (a worker must not start on a mistyped setting)."""
    raw = _env(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ValueError(f"{name}: must be a whole number from {low} to {high}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Observatory's configuration; every field comes from one environment variable."""

    data_dir: Path = field(default_factory=lambda: Path(_env("OBSERVATORY_DATA_DIR", ".observatory")))
    database_url: str = field(default_factory=lambda: _env("DATABASE_URL"))
    redis_url: str = field(default_factory=lambda: _env("REDIS_URL"))
    # comma-separated CIDRs exempt from the SSRF guard
    destination_allowlist: str = field(
        default_factory=lambda: _env("OBSERVATORY_DESTINATION_ALLOWLIST")
    )
    # prefix of Redis keys and pub/sub channels (channels are not scoped by DB number)
    namespace: str = field(default_factory=lambda: _env("OBSERVATORY_NAMESPACE", "observatory"))
    # truthy (1/true/yes/on): bulk and destructive actions need a reason (kept in the audit log)
    require_reason: bool = field(
        default_factory=lambda: _env("OBSERVATORY_REQUIRE_REASON").lower() in _TRUTHY)
    # bulk retries per second and endpoint (0 = unpaced), so a replay never floods a receiver
    bulk_rate_per_endpoint: float = field(
        default_factory=lambda: _float_env("OBSERVATORY_BULK_RATE_PER_ENDPOINT", 50.0))
    # deliveries per fast-lane job: bigger batches spend less of arq's per-job cost
    batch_size: int = field(
        default_factory=lambda: _int_env("OBSERVATORY_BATCH_SIZE", 50, 1, 1000))
    # DLQ entries (or deliveries) per bulk-lane job, unpaced: each job costs the bulk worker a
    # few round trips to the database whatever its size (see jobs.operations.bulk_walk)
    bulk_batch_size: int = field(
        default_factory=lambda: _int_env("OBSERVATORY_BULK_BATCH_SIZE", 200, 1, 1000))

    @property
    def resolved_database_url(self) -> str:
        """`DATABASE_URL`, or a SQLite file in the data directory."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite://{self.data_dir.resolve() / 'observatory.db'}"

    @property
    def events_channel(self) -> str:
        return f"{self.namespace}:events"


#: PRAGMAs a SQLite URL gets unless it sets them itself (tortoise applies a URL's parameters
#: as PRAGMAs, and already sets journal_mode=WAL): a busy timeout, and synchronous=NORMAL, the
#: setting SQLite recommends with WAL — a commit no longer waits for an fsync of the WAL
#: (the write lock was held through one per commit, serialising API and workers); the
#: database stays consistent after any crash, and only a power loss or OS crash can undo the
#: last commits. `?synchronous=FULL` in DATABASE_URL restores the fsync per commit.
SQLITE_PRAGMAS = {"busy_timeout": "10000", "synchronous": "NORMAL"}


def normalise_database_url(url: str) -> str:
    """Accept `postgresql://` as well as tortoise's `postgres://`; give SQLite SQLITE_PRAGMAS."""
    if url.startswith("postgresql://"):
        url = "postgres://" + url[len("postgresql://") :]
    if url.startswith("sqlite://"):
        for name, value in SQLITE_PRAGMAS.items():
            if name not in url:
                url += ("&" if "?" in url else "?") + f"{name}={value}"
    return url


def get_settings() -> Settings:
    """Fresh settings from the current environment (cheap; not cached so tests can change env)."""
    return Settings()
