"""The one way to select DLQ entries: REST `GET /v1/dlq`, stats, export and bulk scopes.

A filter is validated once (pydantic: bad input → 422 naming the field and the rule) and turned
into a tortoise query. `max_id` freezes a selection: a bulk operation confirmed over N entries
acts on those N (entries created afterwards have higher ids and are not swept in).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import Q
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from models.dead_letters import DeadLetter
from models.enums import DeadLetterStatus

#: what `GET /v1/dlq` shows when no status is asked for: the entries an operator acts on
DEFAULT_STATUSES = (DeadLetterStatus.ACTIVE, DeadLetterStatus.RETRYING)
#: the planner's cost of a page read out of order, for the DLQ reads that set it (PostgreSQL's
#: own advice for data in memory or on SSD; the server's default of 4 assumes spinning disks)
RANDOM_PAGE_COST = 1.1
#: on SQLite, a `q` that the trigram index (migration 0015) finds in at most this many entries
#: is read by id (bench.dlq_queries, 1,000,000 entries, a term no entry has: p95 0.8 ms, not
#: 820–960 ms); one found in more is read in id order and matched as it goes, as before (a
#: term that common fills a page from the newest entries). Looking up more costs more for
#: every common term: with 5,000, `endpoint_id` + `q=timeout` took p95 60–75 ms, not 12 ms
SEARCH_HINT_MAX = 1000


class DlqFilter(BaseModel):
    """Which DLQ entries. Every field narrows the selection; an empty filter is everything
    (with `status` left out: every status)."""

    model_config = ConfigDict(extra="forbid")

    status: list[DeadLetterStatus] | None = Field(
        None, description="entry statuses (a list, or comma-separated in a query string)")
    event_type: str | None = Field(None, min_length=1, max_length=200)
    endpoint_id: int | None = Field(None, ge=1)
    app_id: int | None = Field(None, ge=1)
    since: datetime | None = Field(None, description="entries created at or after (ISO 8601)")
    until: datetime | None = Field(None, description="entries created before (ISO 8601)")
    q: str | None = Field(None, min_length=1, max_length=200,
                          description="text in the failure reason, last error or endpoint URL")
    max_id: int | None = Field(None, ge=1, description="snapshot bound: entries with id <= this")

    @field_validator("status", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # a naive time is read as UTC
        return value

    @model_validator(mode="after")
    def _ordered(self) -> DlqFilter:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("until: must be later than since")
        return self

    @classmethod
    def from_query(cls, params: Any) -> DlqFilter:
        """From a query string (`status=active,retrying&endpoint_id=3`); unknown keys other
        than paging ones are refused like unknown body fields."""
        paging = {"limit", "cursor", "format"}
        return cls.model_validate({k: v for k, v in params.items() if k not in paging and v != ""})

    def described(self) -> dict[str, Any]:
        """JSON of the fields set (for audit rows and the BulkOperation scope)."""
        return self.model_dump(mode="json", exclude_none=True)


def select(f: DlqFilter, *, default_statuses: bool = False) -> QuerySet[DeadLetter]:
    """The entries matching `f`; `default_statuses` applies DEFAULT_STATUSES when `f.status`
    is unset (the listing), otherwise an unset status means every status."""
    query = DeadLetter.all()
    statuses = f.status or (list(DEFAULT_STATUSES) if default_statuses else None)
    if statuses:
        query = query.filter(status__in=statuses)
    if f.event_type:
        query = query.filter(event_type=f.event_type)  # the entry's copy: no join
    if f.endpoint_id:
        query = query.filter(endpoint_id=f.endpoint_id)
    if f.app_id:
        query = query.filter(message__app_id=f.app_id)
    if f.since:
        query = query.filter(created_at__gte=f.since)
    if f.until:
        query = query.filter(created_at__lt=f.until)
    if f.q:
        query = query.filter(_search(f.q))
    if f.max_id:
        query = query.filter(id__lte=f.max_id)
    return query


def _search(q: str) -> Q:
    """`q` in the failure reason, last error (the entry's copy of its delivery's) or endpoint
    URL. On PostgreSQL in the entry's search row (models.dead_letters.DeadLetterSearch, kept
    by the database), where each of the three expressions has a trigram index (migration
    0012) that the entries' status changes never rewrite; on SQLite, no trigram indexes: in
    the entry's own columns."""
    if connections.get("default").capabilities.dialect == "postgres":
        return (Q(search__failure_reason__icontains=q) | Q(search__endpoint_url__icontains=q)
                | Q(search__last_error__icontains=q))
    return (Q(failure_reason__icontains=q) | Q(endpoint_url__icontains=q)
            | Q(last_error__icontains=q))


async def search_hint(f: DlqFilter, conn: BaseDBAsyncClient | None = None) -> list[int] | None:
    """On SQLite, the ids of the entries whose searched text may contain `f.q`, from the trigram
    index (migration 0015), when there are at most SEARCH_HINT_MAX: a page is then read among
    those, still matched by `select` (the index only narrows: it folds case beyond ASCII, and
    keeps deleted entries). None — no narrowing — without `q`, on PostgreSQL (its trigram
    indexes serve `select` itself), for a `q` the index cannot look up (shorter than three
    characters, or with a LIKE wildcard or escape, which `select` matches as tortoise does),
    or when more entries match."""
    client = conn or connections.get("default")
    q = f.q
    if not q or client.capabilities.dialect != "sqlite" or len(q) < 3 or set(q) & set("%_\\"):
        return None
    phrase = '"' + q.replace('"', '""') + '"'  # an FTS5 string: the text as it is
    _, rows = await client.execute_query(
        "SELECT rowid FROM dead_letter_fts WHERE dead_letter_fts MATCH ? LIMIT ?",
        [phrase, SEARCH_HINT_MAX + 1])
    if len(rows) > SEARCH_HINT_MAX:
        return None
    return [row[0] for row in rows]


async def prune_search_index(step: int = 20_000) -> int:
    """SQLite: drop the trigram index rows of deleted entries (migration 0015 leaves them), a
    range of `step` ids at a time (each a short write, with at most `step` parameters: SQLite
    takes 32,766); returns how many. The retention job runs it daily after its purge
    (1,000,000 entries, 10,000 of them deleted: 1.1 s; none deleted: 0.6 s). PostgreSQL's
    search rows go with their entries: 0."""
    conn = connections.get("default")
    if conn.capabilities.dialect != "sqlite":
        return 0
    _, top = await conn.execute_query("SELECT max(rowid) FROM dead_letter_fts")
    pruned, low, high = 0, 0, top[0][0] or 0
    while low < high:
        span = [low, low + step, low, low + step]
        _, rows = await conn.execute_query(
            "SELECT rowid FROM dead_letter_fts WHERE rowid > ? AND rowid <= ? AND rowid NOT IN "
            "(SELECT id FROM dead_letter WHERE id > ? AND id <= ?)", span)
        if rows:  # (tortoise's count of this DELETE would include the index's own writes)
            await conn.execute_query(
                f"DELETE FROM dead_letter_fts WHERE rowid IN ({', '.join('?' * len(rows))})",
                [row[0] for row in rows])
            pruned += len(rows)
        low += step
    return pruned


@asynccontextmanager
async def reading(f: DlqFilter) -> AsyncIterator[BaseDBAsyncClient | None]:
    """The connection to read a page of `f`'s entries on (None: the default one).

    On PostgreSQL with `q`, a transaction that prices out-of-order page reads at
    RANDOM_PAGE_COST: the search rows are a table of their own, and with the server's default
    the planner merges the two tables in id order, reading the search rows from the newest down
    to the first entries the other filters keep (1,000,000 entries, `endpoint_id` + `q`: 1.5 s)
    rather than looking up the search row of each entry those filters keep (3 ms)."""
    if not f.q or connections.get("default").capabilities.dialect != "postgres":
        yield None
        return
    async with in_transaction() as tx:
        await tx.execute_script(f"SET LOCAL random_page_cost = {RANDOM_PAGE_COST}")
        yield tx
