"""End-to-end fixtures: the real stack (`observatory up`) on a free port, and Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from jobs.embedded_redis import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARTIFACTS.mkdir(exist_ok=True)
READY_TIMEOUT_S = 600  # a first start installs and builds the frontend


@pytest.fixture
def stack(db, tmp_path: Path) -> Iterator[str]:
    """`observatory up` (1 worker, no demo) against the test database and Redis; yields its URL."""
    port = free_port()
    log_path = tmp_path / "stack.log"
    # bulk work paced slowly enough for a browser to watch it move (and cancel it mid-way)
    env = {"OBSERVATORY_BULK_RATE_PER_ENDPOINT": "5", **os.environ,
           "OBSERVATORY_DATA_DIR": str(tmp_path / "data")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "observatory"), "up", "--port", str(port),
             "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"observatory up exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200 and \
                    httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"stack not ready in {READY_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")


@pytest_asyncio.fixture
async def browser() -> AsyncIterator:
    """Debian's Chromium driven by Playwright. Missing Chromium is a failure, never a skip."""
    from playwright.async_api import async_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        await browser.close()
