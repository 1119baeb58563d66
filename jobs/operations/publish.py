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


class BatchItemResult(TypedDict, total=False):
    index: int
    ok: bool
    message: PublishResult
    error: dict[str, Any]


async def publish_messages(items: list[dict[str, Any]], *, redis: ArqRedis) -> list[BatchItemResult]:
    """Publish many messages (already validated): one transaction, few statements, batched jobs.

    Items name `app_id`, `event_type`, `payload` and optionally `idempotency_key`. Results are
    per item, in order; an unknown application fails that item only.
    """
    app_ids = {item["app_id"] for item in items}
    known_apps = set(await Application.filter(id__in=app_ids).values_list("id", flat=True))
    endpoints: dict[int, list[Endpoint]] = {app_id: [] for app_id in known_apps}
    for endpoint in await Endpoint.filter(app_id__in=known_apps):
        endpoints[endpoint.app_id].append(endpoint)  # type: ignore[attr-defined]
    results: list[BatchItemResult] = []
    created: list[tuple[int, Message, list[Endpoint]]] = []
    async with in_transaction():
        for index, item in enumerate(items):
            app_id, key = item["app_id"], item.get("idempotency_key")
            if app_id not in known_apps:
                results.append(BatchItemResult(index=index, ok=False, error={
                    "code": "not_found", "message": f"application {app_id} does not exist"}))
                continue
            if key and (first := await _existing(app_id, key)):
                results.append(BatchItemResult(index=index, ok=True, message=first))
                continue
            message = await Message.create(app_id=app_id, event_type=item["event_type"],
                                           payload=item["payload"], idempotency_key=key)
            targets = [e for e in endpoints[app_id] if _subscribed(e, item["event_type"])]
            created.append((index, message, targets))
            results.append(BatchItemResult(index=index, ok=True))
        await Delivery.bulk_create([Delivery(message_id=m.id, endpoint_id=e.id)
                                    for _, m, targets in created for e in targets])
    rows = await Delivery.filter(message_id__in=[m.id for _, m, _ in created]
                                 ).order_by("id").values_list("id", "message_id", "endpoint_id")
    by_message: dict[int, list[DeliveryRef]] = {}
    for delivery_id, message_id, endpoint_id in rows:
        by_message.setdefault(message_id, []).append(
            DeliveryRef(id=delivery_id, endpoint_id=endpoint_id, status=DeliveryStatus.QUEUED.value))
    for index, message, _ in created:
        results[index]["message"] = PublishResult(
            id=message.id, app_id=message.app_id, event_type=message.event_type,  # type: ignore[attr-defined]
            idempotent_replay=False, deliveries=by_message.get(message.id, []))
    await enqueue_batch(redis, [row[0] for row in rows])
    await publish_events(redis, [{"type": "deliveries.queued", "count": len(rows)}])
    return results
