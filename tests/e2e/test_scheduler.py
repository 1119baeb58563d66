"""The operator's use case in a real browser: a failure appears live, Retry queues and resolves."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import expect

from jobs.operations.publish import publish_message
from models.auth import create_user
from models.dead_letters import DeadLetter
from models.enums import DeadLetterStatus
from tests.e2e.conftest import ARTIFACTS
from tests.factories import make_endpoint
from tests.receiver import Reply

NO_RETRIES = {"max_retries": 0, "backoff": "fixed", "base_delay": 1, "max_delay": 1,
              "jitter": False}


async def _dead_letter_of(delivery_id: int, timeout_s: float = 20.0) -> DeadLetter:
    for _ in range(int(timeout_s * 10)):
        if entry := await DeadLetter.get_or_none(delivery_id=delivery_id):
            return entry
        await asyncio.sleep(0.1)
    raise AssertionError(f"delivery {delivery_id} never reached the DLQ")


async def sign_in(page, stack: str, role: str = "operator") -> None:
    """Open the Scheduler: the login page comes first, then back to where we were going."""
    await create_user(f"e2e-{role}", role, password="a long passphrase")
    await page.goto(f"{stack}/scheduler")
    await expect(page).to_have_url(re.compile(r"/login\?next=/scheduler"), timeout=60_000)
    await page.get_by_label("User name").fill(f"e2e-{role}")
    await page.get_by_label("Password").fill("wrong")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("wrong password")
    await page.screenshot(path=str(ARTIFACTS / "login-refused.png"))
    await page.get_by_label("Password").fill("a long passphrase")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/scheduler/?$"), timeout=10_000)
    await expect(page.locator("#current-user")).to_have_text(f"e2e-{role}")


async def test_dlq_entry_appears_live_then_retry_queues_and_resolves(
        db, redis, receiver, stack, browser):
    receiver.script("/hook", Reply(500, "receiver down"))
    endpoint = await make_endpoint(receiver.url("/hook"), retry_config=NO_RETRIES)
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await sign_in(page, stack)
    await expect(page.get_by_text("No failed deliveries.")).to_be_visible(timeout=60_000)
    await expect(page.locator("#heartbeat-monitor-panel")).to_be_visible()
    await page.evaluate("window.__observatoryMarker = 'same page'")

    published = await publish_message(endpoint.app_id, "order.created", {"order": 42}, redis=redis)
    entry = await _dead_letter_of(published["deliveries"][0]["id"])
    row = page.locator(f"#dlq-entry-{entry.id}")
    await expect(row).to_be_visible(timeout=5_000)  # pushed, not reloaded
    await expect(row).to_contain_text("order.created")

    receiver.script("/hook", Reply(200, "thanks", delay_s=2.0))  # the receiver recovered
    button = page.get_by_role("button", name=f"Retry delivery {entry.id}")
    await button.focus()
    await page.keyboard.press("Enter")  # keyboard operable
    await expect(row).to_contain_text("Queued", timeout=2_000)
    await page.screenshot(path=str(ARTIFACTS / "scheduler-queued.png"), full_page=True)

    await expect(row).to_have_count(0, timeout=15_000)  # resolved entries leave the panel
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.RESOLVED
    assert await page.evaluate("window.__observatoryMarker") == "same page"
    await page.screenshot(path=str(ARTIFACTS / "scheduler.png"), full_page=True)
