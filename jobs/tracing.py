"""OpenTelemetry spans per delivery attempt, or nothing when OpenTelemetry is not set up.

`opentelemetry` is optional: without the package, or while no tracer provider is set
(`opentelemetry.trace.set_tracer_provider(...)` or the `opentelemetry-instrument` agent),
`attempt_span()` hands back one shared no-op span, so the hot path costs a function call.
The check is made per attempt: a provider set after this module is imported still counts.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:  # optional dependency
    from opentelemetry import trace as otel_trace
except ImportError:  # pragma: no cover - depends on the environment
    otel_trace = None  # type: ignore[assignment]

TRACER_NAME = "observatory.jobs"
SPAN_NAME = "webhook.attempt"


class NoopAttemptSpan:
    """The span used when tracing is off: every method does nothing."""

    def __enter__(self) -> NoopAttemptSpan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def set_delay(self, delay_ms: float) -> None:
        """The delay before the next try, when one is scheduled."""

    def set_status(self, status_code: int | None) -> None:
        """The receiver's HTTP status (None: no response)."""

    def set_outcome(self, kind: str, reason: str | None = None) -> None:
        """The attempt's classification (success | retryable | final) and failure reason."""

    def end(self) -> None:
        """End a span made with `end_on_exit=False` (at the time its `with` block exited)."""


NOOP_SPAN = NoopAttemptSpan()


class AttemptSpan(NoopAttemptSpan):
    """A live OpenTelemetry span (kind CLIENT), started on entering its `with` block and
    current inside it; its setters work inside or after the block, not before."""

    def __init__(self, tracer: Any, attributes: dict[str, Any], end_on_exit: bool) -> None:
        self._tracer = tracer
        self._attributes = attributes
        self._end_on_exit = end_on_exit
        self._span: Any = None
        self._cm: Any = None
        self._end_ns: int | None = None
        self._ended = False

    def __enter__(self) -> AttemptSpan:
        self._span = self._tracer.start_span(SPAN_NAME, kind=otel_trace.SpanKind.CLIENT,
                                             attributes=self._attributes)
        self._cm = otel_trace.use_span(self._span, end_on_exit=False, record_exception=True,
                                       set_status_on_exception=True)
        self._cm.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._cm.__exit__(exc_type, exc, tb)  # records an exception and sets ERROR
        self._end_ns = time.time_ns()
        if self._end_on_exit or exc_type is not None:
            self.end()

    def set_delay(self, delay_ms: float) -> None:
        self._span.set_attribute("retry.delay_ms", float(delay_ms))

    def set_status(self, status_code: int | None) -> None:
        if status_code is None:
            return
        self._span.set_attribute("http.response.status_code", status_code)
        if status_code >= 400:  # the HTTP client convention: 4xx and 5xx are errors
            self._error(str(status_code))

    def set_outcome(self, kind: str, reason: str | None = None) -> None:
        self._span.set_attribute("webhook.outcome", kind)
        if kind != "success":
            self._error(reason or kind)

    def end(self) -> None:
        if self._span is not None and not self._ended:
            self._ended = True
            self._span.end(end_time=self._end_ns)

    def _error(self, error_type: str) -> None:
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, error_type))


def tracing_enabled() -> bool:
    """Whether `opentelemetry` is importable and the process has set a real tracer provider."""
    if otel_trace is None:
        return False
    provider = otel_trace.get_tracer_provider()
    return not isinstance(provider, (otel_trace.ProxyTracerProvider, otel_trace.NoOpTracerProvider))


def attempt_span(delivery_id: int, attempt: int, endpoint_url: str, *,
                 endpoint_id: int | None = None, job_id: str | None = None,
                 end_on_exit: bool = True) -> NoopAttemptSpan:
    """A context manager spanning one attempt; a shared no-op unless tracing is enabled.

    The span starts when the `with` block is entered and is current inside it. With
    `end_on_exit=False` it stays open after the block (ending at the block's exit time when
    `end()` is called), so what is only known later, such as the retry delay decided when the
    batch is recorded, can still be set. An exception leaving the block is recorded and ends
    the span at once.

    Usage::

        span = attempt_span(delivery.id, number, endpoint.url, end_on_exit=False)
        with span:
            result = await post_once(...)
        span.set_status(result.status_code)
        span.set_outcome(result.outcome.kind, result.outcome.reason)
        ...
        span.set_delay(delay * 1000)  # when a retry is scheduled
        span.end()
    """
    if not tracing_enabled():
        return NOOP_SPAN
    attributes: dict[str, Any] = {
        "webhook.delivery_id": delivery_id,
        "retry.attempt_number": attempt,
        "url.full": redact_url(endpoint_url),
        "http.request.method": "POST",
    }
    if endpoint_id is not None:
        attributes["webhook.endpoint_id"] = endpoint_id
    if job_id is not None:
        attributes["messaging.message.id"] = job_id
    return AttemptSpan(otel_trace.get_tracer(TRACER_NAME), attributes, end_on_exit)


def redact_url(url: str) -> str:
    """`url` without credentials or query values, which may carry receivers' tokens."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            netloc = f"REDACTED:REDACTED@{netloc}"
        query = "&".join(f"{pair.partition('=')[0]}=REDACTED" for pair in parts.query.split("&")
                         if pair) if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "REDACTED"
