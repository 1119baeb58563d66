"""The DLQ page in a real browser: filter, open an entry, archive one with its confirmation,
send a sandbox retry, then Retry all matching with the count confirmed and progress pushed
live to the end."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from models.audit import AuditLog
from models.dead_letters import DeadLetter
from models.enums import DeadLetterStatus
from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_scheduler import sign_in
from tests.factories import make_dead_letter, make_endpoint
from tests.receiver import Reply

RETRIED = 24  # entries of the endpoint retried all at once
RATE = 4  # bulk deliveries per second and endpoint: the walk takes a few seconds to watch


@pytest.fixture
def slow_bulk_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pace the bulk lane so the progress is seen moving (read by the stack's workers)."""
    monkeypatch.setenv("OBSERVATORY_BULK_RATE_PER_ENDPOINT", str(RATE))


@pytest.fixture
def stack(slow_bulk_lane: None, stack: str) -> Iterator[str]:
    """The conftest stack, started with the slow bulk lane set."""
    yield stack


async def _done_counts(page) -> list[int]:
    """"N of M" of the progress card(s), as N."""
    texts = await page.locator(".bulk-done").all_inner_texts()
    return [int(t.split(" of ")[0]) for t in texts if " of " in t]


async def test_filter_inspect_archive_and_retry_all_with_live_progress(
        db, redis, receiver, stack, browser):
    receiver.script("/hook", Reply(200, "thanks", delay_s=0.05))
    shop = await make_endpoint(receiver.url("/hook"))
    blog = await make_endpoint(receiver.url("/blog"))
    retried = [await make_dead_letter(shop, payload={"order": n}) for n in range(RETRIED)]
    others = [await make_dead_letter(blog, payload={"post": n}) for n in range(3)]

    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await sign_in(page, stack, "operator")
    await page.get_by_role("link", name="Dead letters").click()
    await expect(page).to_have_url(re.compile(r"/dlq/?$"))
    rows = page.locator(".dlq-page-row")
    await expect(rows).to_have_count(RETRIED + 3, timeout=20_000)
    await expect(page.locator("#dlq-stat-active")).to_contain_text(str(RETRIED + 3))

    # a bad filter is named and loads nothing; a good one narrows the table
    await page.locator("#dlq-filter-endpoint_id").fill("blog")
    await page.locator("#dlq-filter-apply").click()
    await expect(page.locator("#dlq-filter-error-endpoint_id")).to_have_text(
        "Endpoint id: must be a whole number")
    await expect(rows).to_have_count(RETRIED + 3)
    await page.locator("#dlq-filter-endpoint_id").fill(str(blog.id))
    # editing the field clears its error once the (debounced) change reached the server; only
    # then apply, as a person would: the field's earlier value is no longer in flight
    await expect(page.locator("#dlq-filter-error-endpoint_id")).to_have_count(0, timeout=20_000)
    await page.locator("#dlq-filter-apply").click()
    await expect(rows).to_have_count(3, timeout=20_000)  # as the first load: a busy machine

    # Export of the filtered entries: a CSV download of exactly those, and a toast counting them
    await page.locator("#dlq-export").click()
    async with page.expect_download() as downloading:
        await page.locator("#dlq-export-csv").click()
    download = await downloading.value
    assert re.fullmatch(r"dlq-export-\d{8}T\d{6}Z\.csv", download.suggested_filename)
    exported = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text())))
    assert [int(r["id"]) for r in exported] == [e.id for e in others]  # oldest first
    assert {r["endpoint_id"] for r in exported} == {str(blog.id)}
    await expect(page.get_by_text("3 entries exported as CSV")).to_be_visible()
    await expect(page.locator("#dlq-export")).to_be_enabled()  # no longer busy

    # the detail: payload, headers (never the secret), attempts, error history
    target = others[0]
    await page.get_by_role("button", name=f"Details DLQ entry {target.id}").click()
    dialog = page.locator("#dlq-detail")
    await expect(dialog).to_contain_text(f"DLQ entry #{target.id}")
    await expect(page.locator("#dlq-detail-payload")).to_contain_text('"post": 0')
    await expect(page.locator("#dlq-detail-headers")).to_contain_text(
        f"msg_{target.message_id}")  # type: ignore[attr-defined]
    await expect(page.locator("#dlq-detail-history")).to_contain_text("500")
    assert blog.secret not in await dialog.inner_text()
    await page.screenshot(path=str(ARTIFACTS / "dlq-detail.png"))
    await page.locator("#dlq-detail-close").click()
    await expect(dialog).to_have_count(0)

    # archive, confirmed with a reason: the row leaves the open list
    await page.get_by_role("button", name=f"Archive DLQ entry {target.id}").click()
    await expect(page.locator("#dlq-archive-dialog")).to_contain_text(f"#{target.id}")
    await page.locator("#dlq-archive-reason").fill("blog retired")
    await page.locator("#dlq-archive-confirm").click()
    await expect(page.locator(f"#dlq-page-entry-{target.id}")).to_have_count(0)
    await expect(rows).to_have_count(2)
    assert (await DeadLetter.get(id=target.id)).status == DeadLetterStatus.ARCHIVED
    assert (await AuditLog.get(action="dlq.archive")).details["reason"] == "blog retired"

    # sandbox retry from the detail: another URL, an extra header; the entry stays as it is
    sandboxed = others[1]
    await page.get_by_role("button", name=f"Details DLQ entry {sandboxed.id}").click()
    await page.locator("#dlq-detail-sandbox").click()
    await page.locator("#dlq-sandbox-url").fill(receiver.url("/sandbox"))
    await page.locator("#dlq-sandbox-headers").fill("X-Debug: e2e")
    await page.locator("#dlq-sandbox-confirm").click()
    await expect(page.get_by_text("Sandbox retry queued")).to_be_visible()
    for _ in range(100):
        if receiver.hits("/sandbox"):
            break
        await asyncio.sleep(0.1)
    [hit] = receiver.hits("/sandbox")
    assert hit.headers.get("X-Debug") == "e2e" and b'"post":1' in hit.body.replace(b" ", b"")
    assert (await DeadLetter.get(id=sandboxed.id)).status == DeadLetterStatus.ACTIVE

    # Retry all matching: the count is confirmed, then the card moves live to the end
    await page.locator("#dlq-filter-endpoint_id").fill(str(shop.id))
    await page.locator("#dlq-filter-apply").click()
    await expect(rows).to_have_count(RETRIED)
    await page.locator("#dlq-retry-all-matching").click()
    await expect(page.get_by_role("alertdialog")).to_contain_text(
        f"Retry {RETRIED} failed deliveries?")
    await page.locator("#retry-all-confirm").click()
    card = page.locator(".bulk-operation").first
    await expect(card).to_contain_text(f"of {RETRIED}", timeout=10_000)

    seen: set[int] = set()
    for _ in range(300):  # the figures are pushed: nothing here reloads or polls the server
        counts = await _done_counts(page)
        if any(0 < n < RETRIED for n in counts) and not any(0 < n < RETRIED for n in seen):
            await page.screenshot(path=str(ARTIFACTS / "dlq-page.png"), full_page=True)
        seen.update(counts)
        if RETRIED in seen:
            break
        await asyncio.sleep(0.05)
    assert any(0 < n < RETRIED for n in seen), f"progress never seen moving: {sorted(seen)}"
    await expect(card.locator(".bulk-done")).to_have_text(f"{RETRIED} of {RETRIED}",
                                                          timeout=30_000)
    await expect(card).to_contain_text("Completed", timeout=10_000)
    await expect(page.get_by_text(f"{RETRIED} succeeded, 0 failed")).to_be_visible(
        timeout=10_000)  # the summary toast
    await expect(rows).to_have_count(0, timeout=10_000)  # resolved: re-read at the end
    await page.screenshot(path=str(ARTIFACTS / "dlq-page-done.png"), full_page=True)

    statuses = {e.status for e in await DeadLetter.filter(id__in=[r.id for r in retried])}
    assert statuses == {DeadLetterStatus.RESOLVED}
    assert len(receiver.hits("/hook")) == RETRIED
