"""Small builders of real rows for tests."""

from __future__ import annotations

from typing import Any

from jobs.signing import generate_secret
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.endpoints import Application, Endpoint
from models.enums import DeadLetterStatus, DeliveryStatus

FAST_POLICY = {"max_retries": 2, "backoff": "fixed", "base_delay": 1, "max_delay": 1,
               "jitter": False}


async def make_endpoint(url: str, app: Application | None = None, **fields: Any) -> Endpoint:
    app = app or await Application.create(name=f"app-{url}")
    fields.setdefault("retry_config", FAST_POLICY)
    return await Endpoint.create(app=app, url=url, secret=generate_secret(), **fields)


async def make_dead_letter(endpoint: Endpoint | None, *, status: DeadLetterStatus =
                           DeadLetterStatus.ACTIVE, payload: Any = None,
                           event_type: str = "order.created",
                           last_error: str | None = None) -> DeadLetter:
    """A failed delivery of a fresh message and its DLQ entry."""
    app_id = endpoint.app_id if endpoint else (await Application.create(name="orphans")).id  # type: ignore[attr-defined]
    message = await Message.create(app_id=app_id, event_type=event_type,
                                   payload=payload if payload is not None else {"order": 1})
    delivery = await Delivery.create(message=message, endpoint=endpoint, last_error=last_error,
                                     status=DeliveryStatus.FAILED, attempts=3)
    return await DeadLetter.create(
        delivery=delivery, message=message, endpoint=endpoint,
        endpoint_url=endpoint.url if endpoint else "http://gone.invalid/",
        status=status, failure_reason="max_attempts_exceeded", attempts=3,
        event_type=event_type, last_error=last_error,
        error_history=[{"attempt": n, "status_code": 500} for n in (1, 2, 3)])
