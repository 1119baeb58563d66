"""Classification of an attempt's outcome into success, retryable or final, with a reason code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["success", "retryable", "final"]

RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    reason: str | None  # stable failure_reason code; None on success

    @property
    def ok(self) -> bool:
        return self.kind == "success"


def classify_status(status: int) -> Outcome:
    """2xx success; 408, 429 and 5xx retryable; 3xx (not followed) and other 4xx final."""
    if 200 <= status < 300:
        return Outcome("success", None)
    if status in RETRYABLE_STATUSES:
        return Outcome("retryable", "rate_limited" if status == 429 else "timeout")
    if status >= 500:
        return Outcome("retryable", "server_error")
    if 300 <= status < 400:
        return Outcome("final", "redirect_not_followed")
    if status == 410:
        return Outcome("final", "endpoint_gone")
    return Outcome("final", "non_retryable_status")


def classify_error(error_class: str) -> Outcome:
    """Network-level failures (timeouts, refused connections, DNS) are retryable."""
    if error_class == "destination_blocked" or error_class == "invalid_url":
        return Outcome("final", error_class)
    return Outcome("retryable", error_class)
