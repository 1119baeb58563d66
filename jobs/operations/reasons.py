"""The reason an operator gives for a bulk or destructive action (kept in the audit row)."""

from __future__ import annotations

from jobs.errors import ValidationError
from models.config import get_settings

REASON_MAX = 500  # the BulkOperation.reason column


def check_reason(reason: str | None, *, destructive: bool) -> str | None:
    """The reason, trimmed (None when blank).

    Raises:
        ValidationError: naming `reason` when it is too long, or missing for a `destructive`
            action while `OBSERVATORY_REQUIRE_REASON` is set.
    """
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > REASON_MAX:
        raise ValidationError(f"reason: must be at most {REASON_MAX} characters", {"fields": [
            {"field": "reason", "rule": "string_too_long",
             "message": f"must be at most {REASON_MAX} characters"}]})
    if reason is None and destructive and get_settings().require_reason:
        raise ValidationError(
            "reason: required for this action (OBSERVATORY_REQUIRE_REASON is set)",
            {"fields": [{"field": "reason", "rule": "missing",
                         "message": "required for this action"}]})
    return reason
