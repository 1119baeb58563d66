"""Retry All in a real browser: the confirmation states the count, the progress bar moves as
deliveries finish (pushed, not polled), and Cancel really stops the rest."""

from __future__ import annotations

import asyncio

from playwright.async_api import expect

from models.bulk import BulkOperation
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.enums import BulkState, DeadLetterStatus, DeliveryStatus
from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_scheduler import sign_in
from tests.factories import make_dead_letter, make_endpoint
from tests.receiver import Reply

ENTRIES = 60  # 12 s at the e2e stack's pace (5/s): room to see the bar move, then cancel




async def test_retry_all_confirms_the_count_shows_progress_and_cancel_stops_the_rest(
        db, redis, receiver, stack, browser):
    receiver.script("/hook", Reply(200, "ok", delay_s=0.2))
    endpoint = await make_endpoint(receiver.url("/hook"))
    entries = [await make_dead_letter(endpoint) for _ in range(ENTRIES)]
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await sign_in(page, stack)
    await page.evaluate("window.__observatoryMarker = 'same page'")

    await page.get_by_role("button", name="Retry all failed deliveries").click()
    dialog = page.get_by_role("alertdialog")
    await expect(dialog).to_contain_text(f"Retry {ENTRIES} failed deliveries?")
    await page.get_by_label("Reason (kept in the audit log)").fill("receiver is back")
    await page.screenshot(path=str(ARTIFACTS / "retry-all-confirm.png"))
    await dialog.get_by_role("button", name=f"Retry {ENTRIES}").click()

    for _ in range(100):  # the click reaches the server asynchronously
        if op := await BulkOperation.first():
            break
        await asyncio.sleep(0.1)
    assert op is not None, "Retry all did not start"
    card = page.locator(f"#bulk-operation-{op.id}")
    await expect(card).to_be_visible(timeout=5_000)
    done = card.locator(".bulk-done")
    await expect(done).to_contain_text(f"of {ENTRIES}")
    # the bar moves: a first figure, then a larger one, each pushed by the server
    await expect(done).not_to_have_text(f"0 of {ENTRIES}", timeout=15_000)
    first = int((await done.inner_text()).split(" of ")[0])
    await expect(done).not_to_have_text(f"{first} of {ENTRIES}", timeout=15_000)
    await page.screenshot(path=str(ARTIFACTS / "retry-all-progress.png"), full_page=True)

    await card.get_by_role("button", name=f"Cancel operation {op.id}").click()
    await expect(card.locator(".bulk-state")).to_contain_text("Cancel", timeout=10_000)
    # once cancelled, nothing more starts: the figures stop moving
    for _ in range(100):
        op = await BulkOperation.get(id=op.id)
        if op.state == BulkState.CANCELLED:
            break
        await asyncio.sleep(0.1)
    assert op.state == BulkState.CANCELLED
    settled = await Delivery.filter(bulk_operation_id=op.id,
                                    status=DeliveryStatus.SUCCEEDED).count()
    await asyncio.sleep(2)
    assert await Delivery.filter(bulk_operation_id=op.id,
                                 status=DeliveryStatus.SUCCEEDED).count() == settled
    assert 0 < settled < ENTRIES

    # no entry lost or stuck: retried ones resolved, the rest active again
    statuses = [(await DeadLetter.get(id=e.id)).status for e in entries]
    assert statuses.count(DeadLetterStatus.RESOLVED) == settled
    assert statuses.count(DeadLetterStatus.ACTIVE) == ENTRIES - settled
    await expect(page.get_by_text("Bulk retry #", exact=False).first).to_be_visible(timeout=5_000)
    assert await page.evaluate("window.__observatoryMarker") == "same page"
    await page.screenshot(path=str(ARTIFACTS / "retry-all-cancelled.png"), full_page=True)
