"""The DLQ page's Export: the entries of `jobs.operations.dlq.export_rows` (the operation REST
`GET /v1/dlq/export` and `observatory dlq export` use), as the same CSV / JSON Lines file.

The browser has no bearer token, so the file travels back over the session's websocket as a
`data:` URL (`rx.download`): the whole file sits in memory a few times over on its way (text,
bytes, base64, the event). The dashboard therefore stops at `MAX_ROWS` entries or `MAX_BYTES`
of file, whichever comes first, and says so; the CLI and REST stream any size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

# one file format for every surface: the REST route's serializers
from dashboard.api.dlq import csv_lines, jsonl_lines
from jobs.operations import dlq as ops
from models.dlq_filter import DlqFilter

#: the dashboard's export limits (rows, and bytes of UTF-8 file text)
MAX_ROWS = 100_000
MAX_BYTES = 32 * 1024 * 1024
#: format → (label, MIME type of the data: URL)
FORMATS = {"csv": ("CSV", "text/csv"), "jsonl": ("JSON Lines", "application/x-ndjson")}
FOR_MORE = ("use `observatory dlq export` or GET /v1/dlq/export (same filters) for all of them")


@dataclass(frozen=True)
class ExportFile:
    """A finished export: the file text and what it holds."""

    text: str
    count: int  # entries in the file
    truncated: bool  # more entries matched than the limits let in
    filename: str
    mime_type: str


def limit_label() -> str:
    return f"{MAX_ROWS:,} entries or {MAX_BYTES // (1024 * 1024)} MB"


async def export_file(f: DlqFilter, fmt: str) -> ExportFile:
    """The entries matching `f` (status unset: active and retrying, like the page), oldest
    first, as `fmt` ("csv" or "jsonl"), within MAX_ROWS and MAX_BYTES.

    Raises:
        ValueError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}")
    rows = ops.export_rows(f)
    count, truncated, size = 0, False, 0

    async def capped() -> AsyncIterator[ops.ExportRow]:
        nonlocal count, truncated
        async for row in rows:
            if count >= MAX_ROWS or size >= MAX_BYTES:
                truncated = True  # one row past a limit: there was more
                return
            count += 1
            yield row

    chunks: list[str] = []
    try:
        async for chunk in (csv_lines if fmt == "csv" else jsonl_lines)(capped()):
            chunks.append(chunk)
            size += len(chunk.encode())
    finally:
        await rows.aclose()  # stop the paged query when a limit cut it short
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return ExportFile(text="".join(chunks), count=count, truncated=truncated,
                      filename=f"dlq-export-{stamp}.{fmt}", mime_type=FORMATS[fmt][1])
