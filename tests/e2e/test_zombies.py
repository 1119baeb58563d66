"""A killed worker turns zombie live in the Heartbeat Monitor: a real extra worker process (our
own PID, not the stack's) is killed -9; its row turns red and moves to the top of the list
without a reload, within the window plus the relay's tick."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.async_api import expect

from models.agents import Agent
from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_scheduler import sign_in

ARQ = str(Path(sys.executable).parent / "arq")
REPO = Path(__file__).resolve().parents[2]
WINDOW_S = 4  # HEARTBEAT_ZOMBIE_AFTER for the stack and the extra worker
RELAY_TICK_S = 5  # dashboard/relay.py run_relay(tick=...)


@pytest.fixture
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beat every second, zombie after 4 s. Requested before `stack` so the stack (which
    copies os.environ when it starts) runs with it too."""
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("HEARTBEAT_ZOMBIE_AFTER", str(WINDOW_S))


async def _registered(pid: int, timeout_s: float = 60) -> Agent:
    for _ in range(int(timeout_s * 10)):
        if agent := await Agent.get_or_none(pid=pid):
            return agent
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker {pid} never registered")


async def test_a_killed_worker_turns_zombie_live(fast_heartbeats, db, redis, stack, browser):
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await sign_in(page, stack)
    await expect(page.locator("#heartbeat-monitor-panel")).to_be_visible(timeout=60_000)
    await page.evaluate("window.__observatoryMarker = 'same page'")

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen([ARQ, "jobs.worker.WorkerSettings"], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        agent = await _registered(worker.pid)
        row = page.locator(f'[data-agent-id="{agent.id}"]')
        await expect(row).to_have_class(re.compile(r"\bagent-status-alive\b"),
                                        timeout=15_000)  # pushed on its first beat
        label = row.locator(".agent-last-seen")
        await expect(label).to_contain_text("s ago")
        await page.screenshot(path=str(ARTIFACTS / "heartbeats-alive.png"), full_page=True)
    finally:
        os.kill(worker.pid, signal.SIGKILL)  # our own worker, by its PID
        worker.wait(10)
    killed_at = time.monotonic()

    await expect(row).to_have_class(re.compile(r"\bagent-status-zombie\b"),
                                    timeout=(WINDOW_S + RELAY_TICK_S + 6) * 1000)
    shown_after_s = time.monotonic() - killed_at
    print(f"zombie shown {shown_after_s:.1f} s after kill -9 (window {WINDOW_S} s)")
    assert shown_after_s <= WINDOW_S + RELAY_TICK_S + 1
    await expect(page.locator(".agent-row").first).to_have_attribute("data-agent-id", agent.id)
    await expect(page.locator("#zombie-count")).to_contain_text("1 zombie")
    first = await label.text_content()
    await expect(label).not_to_have_text(first or "", timeout=(RELAY_TICK_S + 2) * 1000)
    assert await page.evaluate("window.__observatoryMarker") == "same page"  # no reload
    await page.screenshot(path=str(ARTIFACTS / "heartbeats-zombie.png"), full_page=True)
