"""Retry one dead-letter entry: the rule shared by the dashboard, REST and CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypedDict

from arq.connections import ArqRedis
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from jobs import audit
from jobs.errors import (AlreadyInFlightError, ConfigurationGoneError, NotFoundError,
                         NotRetryableError)
from jobs.events import publish_events
from jobs.queue import enqueue_delivery
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.endpoints import Endpoint
from models.enums import DeadLetterStatus, DeliveryStatus


class RetryResult(TypedDict):
    dead_letter_id: int
    original_delivery_id: int
    delivery_id: int
    status: str


async def retry_dead_letter(entry_id: int, actor: str, *, redis: ArqRedis) -> RetryResult:
    """Re-deliver a DLQ entry's message as a NEW delivery and mark the entry `retrying`.

    The failed delivery keeps its status and timestamps; the new one has `retry_of` set.

    Raises:
        NotFoundError: no such entry.
        AlreadyInFlightError: a retry of this entry is already queued or running.
        NotRetryableError: the entry is resolved or archived.
        ConfigurationGoneError: its endpoint was deleted.
    """
    entry = await DeadLetter.get_or_none(id=entry_id)
    if entry is None:
        raise NotFoundError(f"DLQ entry {entry_id} does not exist")
    if entry.status == DeadLetterStatus.RETRYING:
        raise AlreadyInFlightError(f"A retry of DLQ entry {entry_id} is already in flight")
    if entry.status != DeadLetterStatus.ACTIVE:
        raise NotRetryableError(
            f"DLQ entry {entry_id} is {entry.status.value}; only active entries can be retried")
    endpoint_id = entry.endpoint_id  # type: ignore[attr-defined]
    endpoint = await Endpoint.get_or_none(id=endpoint_id) if endpoint_id else None
    if endpoint is None:
        raise ConfigurationGoneError(
            f"DLQ entry {entry_id}: the original configuration could not be found "
            "(its endpoint was deleted)")

    original_id: int = entry.delivery_id  # type: ignore[attr-defined]
    async with in_transaction():
        # Compare-and-set: of two concurrent clicks exactly one sees a row count of 1.
        claimed = await DeadLetter.filter(id=entry_id, status=DeadLetterStatus.ACTIVE).update(
            status=DeadLetterStatus.RETRYING, retry_count=F("retry_count") + 1,
            updated_at=datetime.now(UTC))
        if not claimed:
            raise AlreadyInFlightError(f"A retry of DLQ entry {entry_id} is already in flight")
        delivery = await Delivery.create(
            message_id=entry.message_id,  # type: ignore[attr-defined]
            endpoint=endpoint, status=DeliveryStatus.QUEUED, retry_of_id=original_id,
            metadata={"__retry_metadata": {"original_delivery_id": original_id,
                                           "dead_letter_id": entry_id,
                                           "retry_count": entry.retry_count + 1,
                                           "sandbox": False}},
        )
        await DeadLetter.filter(id=entry_id).update(last_retry_delivery_id=delivery.id)
        await audit.record(actor, "dlq.retry", "dead_letter", entry_id,
                           original_delivery_id=original_id, new_delivery_id=delivery.id)
    await enqueue_delivery(redis, delivery.id)
    await publish_events(redis, [
        {"type": "dlq.changed", "id": entry_id, "status": DeadLetterStatus.RETRYING.value},
        {"type": "delivery.updated", "id": delivery.id, "status": DeliveryStatus.QUEUED.value},
    ])
    return RetryResult(dead_letter_id=entry_id, original_delivery_id=original_id,
                       delivery_id=delivery.id, status=DeliveryStatus.QUEUED.value)
