"""The status-code classification matrix."""

from __future__ import annotations

import pytest

from jobs.classify import classify_error, classify_status


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    assert classify_status(status).kind == "success"


@pytest.mark.parametrize(("status", "reason"), [
    (408, "timeout"), (429, "rate_limited"), (500, "server_error"), (502, "server_error"),
    (503, "server_error"), (504, "server_error"), (599, "server_error"),
])
def test_408_429_and_5xx_are_retryable(status: int, reason: str) -> None:
    outcome = classify_status(status)
    assert (outcome.kind, outcome.reason) == ("retryable", reason)


@pytest.mark.parametrize(("status", "reason"), [
    (400, "non_retryable_status"), (401, "non_retryable_status"), (403, "non_retryable_status"),
    (404, "non_retryable_status"), (409, "non_retryable_status"), (422, "non_retryable_status"),
    (410, "endpoint_gone"), (301, "redirect_not_followed"), (302, "redirect_not_followed"),
    (307, "redirect_not_followed"),
])
def test_other_4xx_and_3xx_are_final(status: int, reason: str) -> None:
    outcome = classify_status(status)
    assert (outcome.kind, outcome.reason) == ("final", reason)


@pytest.mark.parametrize("error", ["timeout", "connection_error", "network_error"])
def test_network_errors_are_retryable(error: str) -> None:
    assert classify_error(error).kind == "retryable"


def test_invalid_url_is_final() -> None:
    assert classify_error("invalid_url").kind == "final"
