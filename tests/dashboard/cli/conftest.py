"""Fixtures of the CLI tests: the real REST API served by uvicorn in a subprocess (same
database and Redis as the test process), a token per role, and the CLI invoked against it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from click.testing import Result
from typer.testing import CliRunner

from dashboard.api import UVICORN_ARGV
from dashboard.cli.main import app
from models.auth import create_user

REPO_ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent


def cli_env(**overrides: str) -> dict[str, str]:
    """The test session's environment (DATABASE_URL, REDIS_URL… set by pytest_configure)."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **overrides}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API server did not become healthy in {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def api_url(_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the real API (`uvicorn dashboard.api.app:api`, as the benchmarks serve it:
    uvloop, httptools) on a free 127.0.0.1 port,
    on the migrated test database; stopped by its PID at the end of the session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("api") / "uvicorn.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(VENV_BIN / UVICORN_ARGV[0]), *UVICORN_ARGV[1:], "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=REPO_ROOT, env=cli_env(), stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log, timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest_asyncio.fixture
async def tokens(db: str) -> dict[str, str]:
    """An API token per role (users named after their role)."""
    return {role: (await create_user(role, role))[2] for role in ("admin", "operator", "viewer")}


Invoke = Callable[..., Result]


@pytest.fixture
def cli(api_url: str, tokens: dict[str, str], redis: object) -> Invoke:
    """`cli("dlq", "list", token="viewer", input="y\\n")`: the CLI in-process (CliRunner)
    against the live API, the URL and token given by OBSERVATORY_URL/OBSERVATORY_TOKEN."""

    def invoke(*args: str, token: str = "admin", input: str | None = None) -> Result:
        env = {"OBSERVATORY_URL": api_url, "OBSERVATORY_TOKEN": tokens.get(token, token),
               "COLUMNS": "250"}
        return CliRunner().invoke(app, list(args), env=env, input=input)

    return invoke


OBSERVATORY = str(VENV_BIN / "observatory")  # the console script
