"""Retry policy: pure backoff maths and its validated configuration.

Delay before retry n (n = 1 for the first retry):
    fixed       = base_delay
    linear      = base_delay * n
    exponential = base_delay * 2**(n-1)
each capped at max_delay. With jitter the delay is drawn uniformly from
[0.8 * d, min(1.2 * d, max_delay)] (±20 %, like Svix), so it never exceeds the cap.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JITTER = 0.2


class RetryPolicy(BaseModel):
    """How often and how far apart a failed delivery is retried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(5, ge=0, le=10, description="retries after the first attempt")
    backoff: Literal["fixed", "linear", "exponential"] = "exponential"
    base_delay: float = Field(5.0, ge=1.0, description="seconds")
    max_delay: float = Field(3600.0, description="seconds, >= base_delay")
    jitter: bool = True

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> RetryPolicy:
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay must be >= base_delay")
        return self

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry `retry_number` (1-based)."""
        if retry_number < 1:
            raise ValueError("retry_number starts at 1")
        if self.backoff == "fixed":
            raw = self.base_delay
        elif self.backoff == "linear":
            raw = self.base_delay * retry_number
        else:
            raw = self.base_delay * 2 ** min(retry_number - 1, 62)
        capped = min(raw, self.max_delay)
        if not self.jitter:
            return capped
        rng = rng or random
        return rng.uniform(capped * (1 - JITTER), min(capped * (1 + JITTER), self.max_delay))


DEFAULT_POLICY = RetryPolicy()


def policy_for(retry_config: dict | None) -> RetryPolicy:
    """An endpoint's policy: its `retry_config`, or the default policy when null."""
    return RetryPolicy.model_validate(retry_config) if retry_config else DEFAULT_POLICY
