"""The dead-letter queue: deliveries that exhausted their retries or failed for good."""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model

from models.deliveries import Delivery, Message
from models.enums import DeadLetterStatus


class DeadLetter(Model):
    id = fields.IntField(primary_key=True)
    # the failed delivery; one entry per failed delivery
    delivery: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Delivery", related_name="dead_letters", on_delete=fields.CASCADE, unique=True
    )
    message: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Message", related_name="dead_letters", on_delete=fields.CASCADE
    )
    endpoint: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.Endpoint", related_name="dead_letters", null=True, on_delete=fields.SET_NULL
    )
    endpoint_url = fields.CharField(max_length=2048)  # snapshot, kept if the endpoint goes
    status = fields.CharEnumField(DeadLetterStatus, default=DeadLetterStatus.ACTIVE, max_length=16)
    failure_reason = fields.CharField(max_length=64)
    #: copy of message.event_type, so the DLQ filters and stats need no join
    event_type = fields.CharField(max_length=200, default="", db_default="")
    #: copy of the failed delivery's last_error (what `q` searches), so the DLQ needs no join
    last_error = fields.TextField(null=True)
    error_history = fields.JSONField(default=list)  # one item per attempt
    attempts = fields.IntField(default=0)
    policy = fields.JSONField(default=dict)  # the retry policy in force when it failed
    metadata = fields.JSONField(default=dict)  # event type, tags, priority
    retry_count = fields.IntField(default=0)
    # the delivery of the retry in flight or last made (on PostgreSQL no foreign key checks
    # it: migration 0013; its writers create that delivery, a trigger does ON DELETE SET NULL)
    last_retry_delivery: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.Delivery", related_name="retried_dead_letters", null=True,
        on_delete=fields.SET_NULL,
    )
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    resolved_at = fields.DatetimeField(null=True)

    class Meta:
        table = "dead_letter"
        # more in migrations 0009: (event_type, id); 0010: (status, event_type, endpoint_id,
        # created_at) for the stats. What `q` searches is DeadLetterSearch's (0012).
        indexes = (("status", "created_at"),)

    async def save(self, using_db: BaseDBAsyncClient | None = None, *args: Any,
                   **kwargs: Any) -> None:
        """Save; a new entry whose creator left out the copies (`event_type`, `last_error`)
        gets them from its message and delivery, so no way of creating one leaves them blank."""
        if not self._saved_in_db:
            await self._fill_copies(using_db)
        await super().save(using_db, *args, **kwargs)

    async def _fill_copies(self, using_db: BaseDBAsyncClient | None) -> None:
        if not self.event_type:
            message = self._related("message")
            found = [message.event_type] if message is not None else await Message.filter(
                id=self.message_id).using_db(using_db).values_list(  # type: ignore[attr-defined]
                "event_type", flat=True)
            self.event_type = found[0] if found else ""
        if self.last_error is None:
            delivery = self._related("delivery")
            errors = [delivery.last_error] if delivery is not None else await Delivery.filter(
                id=self.delivery_id).using_db(using_db).values_list(  # type: ignore[attr-defined]
                "last_error", flat=True)
            self.last_error = errors[0] if errors else None

    def _related(self, name: str) -> Any:
        """The related object given to the constructor (or fetched), None if only its id is."""
        value = self.__dict__.get(f"_{name}")
        return value if isinstance(value, Model) else None



class DeadLetterSearch(Model):
    # The text `q` searches of a DLQ entry, in a table of its own (migration 0012).
    #
    # Copies of the entry's three searched columns, apart so that a status change (a retry
    # claims and resolves thousands of entries a second) never rewrites the search indexes (on
    # PostgreSQL, trigram GIN indexes).
    #
    # Written only by the database: triggers (migration 0012) add the row when the entry is
    # inserted (however: ORM, raw SQL, COPY) and copy the columns again when one of them changes
    # (a failed retry's `failure_reason`); the row goes with its entry (ON DELETE CASCADE).

    # (the entry is not the primary key: tortoise 1.1's migration state then disagrees with
    # the model about `pk_attr`, and makemigrations never settles)
    id = fields.IntField(primary_key=True)
    entry: fields.OneToOneRelation[DeadLetter] = fields.OneToOneField(
        "models.DeadLetter", related_name="search", on_delete=fields.CASCADE)
    failure_reason = fields.CharField(max_length=64)
    endpoint_url = fields.CharField(max_length=2048)
    last_error = fields.TextField(null=True)

    class Meta:
        table = "dead_letter_search"
