"""The Cron Job Dashboard in a real browser: every run state shows with its class, and a failed
run retried from the page runs on the stack's worker and appears succeeded, pushed live. Then,
on the same stack, every page in narrow windows (tests/e2e/layout.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from playwright.async_api import expect

from jobs.cron import register_cron_jobs
from models.cron import CronRun
from models.enums import CronRunStatus
from tests.e2e.conftest import ARTIFACTS
from tests.e2e.layout import (PHONE, WIDTHS, assert_fits, assert_header_usable, assert_usable,
                              go_to)
from tests.e2e.test_scheduler import sign_in
from tests.factories import make_dead_letter, make_endpoint

#: long enough to need cutting or wrapping on a phone
LONG_URL = "https://hooks.example.com/observatory/webhooks/orders/v2/receive?tenant=acme-industries"
LONG_ERROR = ("ConnectError: [Errno 111] Connection refused while connecting to "
              "hooks.example.com:443 (after 3 attempts, the last 5 minutes ago)")


def _cls(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^|\s){name}(\s|$)")


#: the cron panel and each scroll container in it that is wider inside than it shows
_SIDEWAYS = """() => {
  const panel = document.querySelector('#cron-dashboard-panel');
  const boxes = [panel, ...panel.querySelectorAll('*')].filter(el =>
    el === panel || ['auto', 'scroll'].includes(getComputedStyle(el).overflowX));
  return boxes.filter(el => el.scrollWidth > el.clientWidth)
    .map(el => `${el.id || el.className}: ${el.scrollWidth} > ${el.clientWidth}`);
}"""


async def _sideways(page) -> list[str]:
    """What in the cron panel would need horizontal scrolling (nothing, at any width)."""
    return await page.evaluate(_SIDEWAYS)


async def _pause_and_resume(page, job: str) -> None:
    """Pause `job` from the panel, see it paused, resume it, see it pending again."""
    await page.get_by_role("button", name=f"Pause {job}").click()
    await expect(page.locator(f"#cron-job-{job}")).to_have_class(
        _cls("cron-status-paused"), timeout=10_000)
    await page.get_by_role("button", name=f"Resume {job}").click()
    await expect(page.locator(f"#cron-job-{job}")).to_have_class(
        _cls("cron-status-pending"), timeout=10_000)


async def _retry_of(run_id: int, timeout_s: float = 30.0) -> CronRun:
    """The retry of `run_id` once a worker has finished it."""
    for _ in range(int(timeout_s * 10)):
        retry = await CronRun.get_or_none(retry_of_id=run_id)
        if retry is not None and retry.status in (CronRunStatus.SUCCEEDED, CronRunStatus.FAILED):
            return retry
        await asyncio.sleep(0.1)
    raise AssertionError(f"the retry of cron run {run_id} did not finish in {timeout_s}s")


async def test_cron_states_show_and_a_failed_run_is_retried_from_the_page(db, redis, stack,
                                                                         browser):
    await register_cron_jobs()
    now = datetime.now(UTC).replace(microsecond=0)
    # the daily retention job carries the long-lived states: the every-minute ones keep ticking
    done = await CronRun.create(job_id="retention", scheduled_at=now - timedelta(days=1),
                                status="succeeded", started_at=now - timedelta(days=1),
                                finished_at=now - timedelta(days=1), duration_ms=12)
    running = await CronRun.create(job_id="retention", scheduled_at=now - timedelta(seconds=20),
                                   status="running", started_at=now - timedelta(seconds=17),
                                   drift_ms=3000)
    missed = await CronRun.create(job_id="scaling_evaluation",
                                  scheduled_at=now - timedelta(minutes=30), status="missed",
                                  error="no worker alive at the tick")
    failed = await CronRun.create(job_id="reconcile_deliveries",
                                  scheduled_at=now - timedelta(minutes=20), status="failed",
                                  started_at=now - timedelta(minutes=20), duration_ms=40,
                                  error="RuntimeError: database is locked")
    endpoint = await make_endpoint(LONG_URL)
    entry = await make_dead_letter(endpoint, event_type="customer.subscription.updated",
                                   last_error=LONG_ERROR)

    page = await browser.new_page(viewport={"width": 1500, "height": 1200})
    # the login page fits every width, and works on a phone
    await page.goto(f"{stack}/login")
    await expect(page.locator("#login-submit")).to_be_visible(timeout=60_000)
    await assert_fits(page, "login")
    await assert_usable(page.locator("#login-name"), page.locator("#login-password"),
                        page.locator("#login-submit"))
    await sign_in(page, stack)  # at phone width
    await page.set_viewport_size({"width": 1500, "height": 1200})
    panel = page.locator("#cron-dashboard-panel")
    await expect(panel).to_be_visible(timeout=60_000)
    for run, status in ((done, "succeeded"), (running, "running"), (missed, "missed"),
                        (failed, "failed")):
        row = page.locator(f"#cron-run-{run.id}")
        await expect(row).to_have_class(_cls(f"cron-status-{status}"), timeout=10_000)
    await expect(page.locator("#cron-run-" + str(missed.id))).to_contain_text(
        "no worker alive at the tick")
    await expect(page.locator(f"#cron-run-{running.id} .cron-drift")).to_have_text("+3.0 s")
    await expect(page.locator("#cron-job-reconcile_deliveries")).to_have_class(
        _cls("cron-status-pending"))
    await expect(page.get_by_role("button", name=f"Retry cron run {done.id}")).to_have_count(0)
    await page.evaluate("window.__observatoryMarker = 'same page'")
    await page.screenshot(path=str(ARTIFACTS / "cron-panel.png"), full_page=True)

    await page.get_by_role("button", name=f"Retry cron run {failed.id}").click()
    retry = await _retry_of(failed.id)
    assert retry.status == CronRunStatus.SUCCEEDED and retry.actor == "e2e-operator"
    await expect(page.locator(f"#cron-run-{retry.id}")).to_have_class(
        _cls("cron-status-succeeded"), timeout=10_000)  # pushed, not reloaded
    # the failed run is kept, without its Retry button now that it was retried
    await expect(page.locator(f"#cron-run-{failed.id}")).to_have_class(_cls("cron-status-failed"))
    await expect(page.get_by_role("button", name=f"Retry cron run {failed.id}")).to_have_count(0)
    assert await page.evaluate("window.__observatoryMarker") == "same page"
    await page.screenshot(path=str(ARTIFACTS / "cron-panel-retried.png"), full_page=True)
    # beside the heartbeats (3 : 2 of the row) the panel fits without sideways scrolling,
    # the retried run's row included; then on its own row (narrow screens), as cards on phones
    for width in (1500, 1280, 1024, 1000, 768, PHONE):
        await page.set_viewport_size({"width": width, "height": 1200})
        await expect(page.locator(f"#cron-run-{retry.id}")).to_be_visible()
        assert await _sideways(page) == [], f"viewport {width}px"
    await page.set_viewport_size({"width": 1500, "height": 1200})

    await _pause_and_resume(page, "scaling_evaluation")

    # narrow windows: no page scrolls sideways (nor any table in its box) at any of WIDTHS;
    # on a phone the header, the cron and DLQ actions and each page's controls work
    await expect(page.locator(f"#dlq-entry-{entry.id}")).to_be_visible()
    await assert_fits(page, "Scheduler", WIDTHS)
    await assert_header_usable(page)
    await expect(page.locator(f"#cron-run-{missed.id}")).to_have_class(_cls("cron-status-missed"))
    await assert_usable(page.locator("#retry-all-button"),
                        page.get_by_role("button", name=f"Retry delivery {entry.id}"),
                        page.get_by_role("button", name="Run retention now"),
                        page.get_by_role("button", name=f"Retry cron run {missed.id}"))
    await _pause_and_resume(page, "zombie_sweep")
    await page.screenshot(path=str(ARTIFACTS / "scheduler-phone.png"), full_page=True)

    await go_to(page, "Dead letters")
    await expect(page.locator(f"#dlq-page-entry-{entry.id}")).to_be_visible(timeout=10_000)
    await assert_fits(page, "Dead letters", WIDTHS)
    await assert_usable(page.locator("#dlq-filter-event_type"), page.locator("#dlq-filter-apply"),
                        page.locator("#dlq-export"), page.locator("#dlq-retry-all-matching"),
                        *(page.get_by_role("button", name=f"{action} DLQ entry {entry.id}")
                          for action in ("Details", "Retry", "Archive")))
    await page.get_by_role("button", name=f"Details DLQ entry {entry.id}").click()
    await expect(page.locator("#dlq-detail-payload")).to_be_visible()
    await assert_fits(page, "the DLQ entry's detail", (PHONE,))
    await assert_usable(page.locator("#dlq-detail-retry"), page.locator("#dlq-detail-close"))
    await page.screenshot(path=str(ARTIFACTS / "dlq-detail-phone.png"))
    await page.locator("#dlq-detail-close").click()
    await expect(page.locator("#dlq-detail")).to_have_count(0)

    await go_to(page, "Endpoints")
    await expect(page.locator(f"#endpoint-{endpoint.id}")).to_be_visible(timeout=10_000)
    await assert_fits(page, "Endpoints", WIDTHS)
    await assert_usable(page.get_by_role("button", name="Refresh endpoints"))

    await go_to(page, "Audit log")
    await expect(page.locator(".audit-row").first).to_be_visible(timeout=10_000)
    await assert_fits(page, "Audit log", WIDTHS)
    await assert_usable(page.locator("#audit-filter-action"), page.locator("#audit-filter-apply"),
                        page.get_by_role("link", name="cron.retry").first)
    await page.screenshot(path=str(ARTIFACTS / "audit-phone.png"), full_page=True)
