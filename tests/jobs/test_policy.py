"""Backoff maths: each strategy's delays, the cap, the jitter range and validation."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from jobs.policy import DEFAULT_POLICY, JITTER, RetryPolicy, policy_for


@pytest.mark.parametrize(("backoff", "expected"), [
    ("fixed", [10, 10, 10, 10, 10]),
    ("linear", [10, 20, 30, 40, 50]),
    ("exponential", [10, 20, 40, 80, 160]),
])
def test_delays_follow_strategy_without_jitter(backoff: str, expected: list[float]) -> None:
    policy = RetryPolicy(backoff=backoff, base_delay=10, max_delay=1000, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == expected


def test_delays_are_capped_at_max_delay() -> None:
    policy = RetryPolicy(backoff="exponential", base_delay=10, max_delay=60, jitter=False)
    assert [policy.delay(n) for n in range(1, 8)] == [10, 20, 40, 60, 60, 60, 60]


def test_huge_retry_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=100, jitter=False)
    assert policy.delay(10_000) == 100


def test_jitter_stays_within_twenty_percent_and_under_the_cap() -> None:
    rng = random.Random(7)
    policy = RetryPolicy(backoff="exponential", base_delay=10, max_delay=60, jitter=True)
    for n in range(1, 8):
        exact = min(10 * 2 ** (n - 1), 60)
        samples = [policy.delay(n, rng) for _ in range(500)]
        assert min(samples) >= exact * (1 - JITTER)
        assert max(samples) <= min(exact * (1 + JITTER), 60)
        assert max(samples) - min(samples) > exact * 0.1  # it really spreads


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        DEFAULT_POLICY.delay(0)


@pytest.mark.parametrize(("config", "field"), [
    ({"max_retries": 11}, "max_retries"),
    ({"max_retries": -1}, "max_retries"),
    ({"base_delay": 0.5}, "base_delay"),
    ({"backoff": "random"}, "backoff"),
    ({"base_delay": 10, "max_delay": 5}, "max_delay"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_configs_name_the_field(config: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy.model_validate(config)
    assert field in str(info.value)


def test_null_config_falls_back_to_default_policy() -> None:
    assert policy_for(None) is DEFAULT_POLICY
    assert policy_for({"max_retries": 2}).max_attempts == 3
