"""Publish an event: one Message and one Delivery per subscribed endpoint, then enqueue."""

from __future__ import annotations

from typing import Any, TypedDict

from arq.connections import ArqRedis
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from jobs.errors import NotFoundError
from jobs.events import publish_events
from jobs.queue import enqueue_batch
from models.deliveries import Delivery, Message
from models.endpoints import Application, Endpoint
from models.enums import DeliveryStatus


class DeliveryRef(TypedDict):
    id: int
    endpoint_id: int
    status: str


class PublishResult(TypedDict):
    id: int
    app_id: int
    event_type: str
    idempotent_replay: bool
    deliveries: list[DeliveryRef]


def _subscribed(endpoint: Endpoint, event_type: str) -> bool:
    # a disabled endpoint still gets its deliveries: they go straight to the DLQ
    # (`endpoint_disabled`), so nothing is silently dropped
    return not endpoint.event_types or event_type in endpoint.event_types


async def _existing(app_id: int, idempotency_key: str) -> PublishResult | None:
    message = await Message.get_or_none(app_id=app_id, idempotency_key=idempotency_key)
    if message is None:
        return None
    rows = await Delivery.filter(message_id=message.id, retry_of_id=None).order_by("id")
    return PublishResult(
        id=message.id, app_id=app_id, event_type=message.event_type, idempotent_replay=True,
        deliveries=[DeliveryRef(id=d.id, endpoint_id=d.endpoint_id,  # type: ignore[attr-defined]
                                status=d.status.value) for d in rows])


async def publish_message(app_id: int, event_type: str, payload: Any,
                          idempotency_key: str | None = None, *, redis: ArqRedis) -> PublishResult:
    """Store the message and its deliveries in one transaction and hand them to the workers.

    Publishing the same `idempotency_key` again returns the first message, delivering nothing.

    Raises:
        NotFoundError: the application does not exist.
    """
    if not await Application.exists(id=app_id):
        raise NotFoundError(f"application {app_id} does not exist")
    if idempotency_key and (first := await _existing(app_id, idempotency_key)):
        return first
    endpoints = [e for e in await Endpoint.filter(app_id=app_id) if _subscribed(e, event_type)]
    try:
        async with in_transaction():
            message = await Message.create(app_id=app_id, event_type=event_type, payload=payload,
                                           idempotency_key=idempotency_key)
            deliveries = [await Delivery.create(message=message, endpoint=e) for e in endpoints]
    except IntegrityError:
        if idempotency_key and (first := await _existing(app_id, idempotency_key)):
            return first  # a concurrent publish of the same key won
        raise
    await enqueue_batch(redis, [d.id for d in deliveries])
    await publish_events(redis, [{"type": "delivery.updated", "id": d.id, "status": "queued"}
                                 for d in deliveries])
    return PublishResult(
        id=message.id, app_id=app_id, event_type=event_type, idempotent_replay=False,
        deliveries=[DeliveryRef(id=d.id, endpoint_id=d.endpoint.id,
                                status=DeliveryStatus.QUEUED.value) for d in deliveries])
