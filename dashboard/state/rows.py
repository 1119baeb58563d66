"""Display rows: the query rows of models.queries plus the labels the components show.

Labels are computed here, on the server, so components stay free of date maths and render
the same from plain values (tests) as from state vars (the live page).
"""

from __future__ import annotations

from datetime import UTC, datetime

from models.queries import AgentRow, CronRunRow, DeadLetterRow


class DeadLetterItem(DeadLetterRow):
    failed_at: str  # when the entry entered the DLQ, e.g. "May 04 13:02:11"
    reason_label: str  # "max_attempts_exceeded" -> "Max attempts exceeded"
    attempts_label: str  # "1 attempt", "8 attempts"


class CronRunItem(CronRunRow):
    when_label: str  # scheduled time
    duration_label: str  # "—" until the run finished
    error_label: str  # "" when the run has no error


class AgentItem(AgentRow):
    where_label: str  # "host · pid 4242"
    last_seen_label: str
    age_label: str  # "12 s ago" at the time of the last refresh


def _parse(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return None


def clock_label(iso: str | None) -> str:
    """`May 04 13:02:11` (UTC) for an ISO timestamp; `—` when there is none."""
    moment = _parse(iso)
    return moment.strftime("%b %d %H:%M:%S") if moment else "—"


def age_label(seconds: float) -> str:
    """A short relative age: `4 s ago`, `3 min ago`, `2 h ago`, `5 d ago`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} d ago"


def duration_label(duration_ms: float | None) -> str:
    if duration_ms is None:
        return "—"
    if duration_ms < 1000:
        return f"{duration_ms:.0f} ms"
    return f"{duration_ms / 1000:.1f} s"


def humanize(code: str) -> str:
    """`max_attempts_exceeded` -> `Max attempts exceeded`."""
    text = code.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def dead_letter_item(row: DeadLetterRow) -> DeadLetterItem:
    attempts = row["attempts"]
    return DeadLetterItem(**row, failed_at=clock_label(row["created_at"]),
                          reason_label=humanize(row["failure_reason"]),
                          attempts_label=f"{attempts} attempt{'' if attempts == 1 else 's'}")


def cron_run_item(row: CronRunRow) -> CronRunItem:
    return CronRunItem(**row, when_label=clock_label(row["scheduled_at"]),
                       duration_label=duration_label(row["duration_ms"]),
                       error_label=row["error"] or "")


def agent_item(row: AgentRow) -> AgentItem:
    where = " · ".join(part for part in (row["host"], f"pid {row['pid']}" if row["pid"] else "")
                       if part)
    return AgentItem(**row, where_label=where or "—", last_seen_label=clock_label(row["last_seen"]),
                     age_label=age_label(row["age_s"]))
