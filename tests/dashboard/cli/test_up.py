"""`observatory up`: the supervisor, the children's command lines and environment."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from dashboard.cli import CliError
from dashboard.cli.up import (REPO_ROOT, VENV_BIN, ChildSpec, RedisKeeper, Supervisor,
                              _check_port_free, _lock_data_dir, base_env, bulk_worker_spec,
                              demo_spec,
                              wait_until_ready, web_spec, worker_specs)
from jobs.embedded_redis import EmbeddedRedis


class Lines:
    """A thread-safe log sink for the supervisor."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, source: str, message: str) -> None:
        with self.lock:
            self.lines.append(f"{source} | {message}")

    def has(self, text: str) -> bool:
        with self.lock:
            return any(text in line for line in self.lines)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def supervisor() -> Iterator[tuple[Supervisor, Lines]]:
    lines = Lines()
    sup = Supervisor(grace_s=1.0, base_backoff_s=0.2, log=lines)
    yield sup, lines
    sup.stop()


def test_child_output_is_prefixed_with_its_name(supervisor: tuple[Supervisor, Lines]) -> None:
    sup, lines = supervisor
    sup.add(ChildSpec("echo", python("print('hello'); import time; time.sleep(30)"),
                      dict(os.environ)))
    wait_for(lambda: lines.has("echo | hello"))


def test_exited_child_is_restarted_with_growing_backoff(
        supervisor: tuple[Supervisor, Lines]) -> None:
    sup, lines = supervisor
    child = sup.add(ChildSpec("worker-1", python("import sys; sys.exit(3)"), dict(os.environ)))

    def restarted_twice() -> bool:
        sup.tick()
        return child.exits >= 3

    wait_for(restarted_twice)
    assert lines.has("worker-1 exited (exit code 3) after")
    assert lines.has("restarting in 0.2s") and lines.has("restarting in 0.4s")
    assert child.failures >= 3  # short runs keep growing the delay


def test_non_restartable_child_is_reported_once(supervisor: tuple[Supervisor, Lines]) -> None:
    sup, lines = supervisor
    sup.add(ChildSpec("web", python("raise SystemExit(2)"), dict(os.environ), restart=False))

    finished: list[str] = []
    wait_for(lambda: bool(finished.extend(c.spec.name for c in sup.tick())) or finished == ["web"])
    time.sleep(0.3)
    assert sup.tick() == []
    assert lines.has("web exited (exit code 2)")


def test_stop_terminates_the_whole_process_group(supervisor: tuple[Supervisor, Lines]) -> None:
    sup, lines = supervisor
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(p.pid, flush=True); time.sleep(60)")
    child = sup.add(ChildSpec("parent", python(code), dict(os.environ)))
    wait_for(lambda: any(line.startswith("parent | ") for line in lines.lines))
    grandchild = int(next(line for line in lines.lines if line.startswith("parent |"))
                     .split("|")[1])
    leader = child.process.pid  # type: ignore[union-attr]

    sup.stop()

    assert not alive(leader) and not alive(grandchild)


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace_period(
        supervisor: tuple[Supervisor, Lines]) -> None:
    sup, lines = supervisor
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    child = sup.add(ChildSpec("stubborn", python(code), dict(os.environ)))
    wait_for(lambda: lines.has("stubborn | ready"))
    pid = child.process.pid  # type: ignore[union-attr]

    started = time.monotonic()
    sup.stop()

    assert 0.9 <= time.monotonic() - started < 5
    assert not alive(pid)
    assert lines.has("stubborn did not stop in time: killing it")


def test_base_env_exports_redis_and_absolute_data_dir(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFLEX_REDIS_URL", raising=False)
    monkeypatch.setenv("OBSERVATORY_DESTINATION_ALLOWLIST", "10.0.0.0/8")
    env = base_env("redis://127.0.0.1:7000/1", tmp_path, demo=False)

    assert env["REDIS_URL"] == "redis://127.0.0.1:7000/1"
    assert env["OBSERVATORY_DATA_DIR"] == str(tmp_path)
    assert env["PATH"].split(os.pathsep)[0] == str(VENV_BIN)
    assert env["OBSERVATORY_DESTINATION_ALLOWLIST"] == "10.0.0.0/8"
    assert "REFLEX_REDIS_URL" not in env


def test_demo_mode_adds_loopback_to_the_allowlist(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSERVATORY_DESTINATION_ALLOWLIST", "10.0.0.0/8")
    env = base_env("redis://x/1", tmp_path, demo=True)
    assert env["OBSERVATORY_DESTINATION_ALLOWLIST"] == "10.0.0.0/8,127.0.0.0/8"

    monkeypatch.delenv("OBSERVATORY_DESTINATION_ALLOWLIST")
    env = base_env("redis://x/1", tmp_path, demo=True)
    assert env["OBSERVATORY_DESTINATION_ALLOWLIST"] == "127.0.0.0/8"


def test_children_command_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFLEX_REDIS_URL", raising=False)
    env = base_env("redis://x/1", tmp_path, demo=True)

    workers = worker_specs(2, env)
    web = web_spec(3123, env)
    demo = demo_spec(4555, "http://127.0.0.1:3123", env, "obs_tok")

    assert [w.name for w in workers] == ["worker-1", "worker-2"]
    assert workers[0].argv == [sys.executable, "-m", "jobs.run_worker"]
    assert bulk_worker_spec(env).argv == [sys.executable, "-m", "jobs.run_worker", "--bulk"]
    assert web.argv == [str(VENV_BIN / "reflex"), "run", "--env", "prod", "--single-port",
                        "--backend-port", "3123", "--backend-host", "127.0.0.1"]
    assert web.cwd == REPO_ROOT and web.env["REFLEX_USE_NPM"] == "1"
    assert web.env["GRANIAN_WORKERS"] == "1" and "REFLEX_REDIS_URL" not in web.env
    assert demo.argv[1:] == ["-m", "dashboard.demo", "--port", "4555",
                             "--api-url", "http://127.0.0.1:3123"]
    assert demo.env["OBSERVATORY_DEMO_TOKEN"] == "obs_tok"
    assert "OBSERVATORY_DEMO_TOKEN" not in web.env


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path == "/v1/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_wait_until_ready_polls_until_health_answers_200(
        supervisor: tuple[Supervisor, Lines]) -> None:
    sup, _ = supervisor
    server = HTTPServer(("127.0.0.1", 0), _Health)
    url = f"http://127.0.0.1:{server.server_port}/v1/health"
    threading.Timer(0.6, server.serve_forever).start()
    try:
        started = time.monotonic()
        assert wait_until_ready(url, sup, threading.Event(), timeout_s=10)
        assert time.monotonic() - started >= 0.5
    finally:
        server.shutdown()
        server.server_close()


def test_wait_until_ready_gives_up_when_the_web_app_exits(
        supervisor: tuple[Supervisor, Lines]) -> None:
    sup, _ = supervisor
    sup.add(ChildSpec("web", python("raise SystemExit(1)"), dict(os.environ), restart=False))
    url = "http://127.0.0.1:9/v1/health"

    assert not wait_until_ready(url, sup, threading.Event(), timeout_s=10)


def test_redis_keeper_restarts_a_dead_embedded_redis_on_its_port(tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis").start()
    try:
        port = redis.port
        redis.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        redis.process.wait()  # type: ignore[union-attr]

        RedisKeeper(redis).tick()

        assert redis.process is not None and redis.process.poll() is None
        assert redis.port == port
    finally:
        redis.stop()


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(CliError, match="already in use"):
            _check_port_free(busy.getsockname()[1])


def test_second_launcher_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    first = _lock_data_dir(tmp_path)
    try:
        with pytest.raises(CliError, match="another `observatory up`"):
            _lock_data_dir(tmp_path)
    finally:
        first.close()
    _lock_data_dir(tmp_path).close()


_FAKE_UP = '''
import sys
import dashboard.cli.up as up
from dashboard.cli.up import ChildSpec

HEALTH = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v1/health" else 404); self.end_headers()
    def do_POST(self):  # no /v1/messages here: the demo falls back to the direct operation
        self.send_response(404); self.end_headers()
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
WORKER = "import os, time; print('REDIS_URL=' + os.environ['REDIS_URL'], flush=True); time.sleep(600)"
up.web_spec = lambda port, env: ChildSpec("web", [sys.executable, "-c", HEALTH, str(port)], env,
                                          restart=False)
up.worker_specs = lambda n, env: [ChildSpec(f"worker-{i}", [sys.executable, "-c", WORKER], env)
                                  for i in range(1, n + 1)]
up.bulk_worker_spec = lambda env: ChildSpec("bulk", [sys.executable, "-c", WORKER], env)
from dashboard.cli.main import main
sys.argv = ["observatory", *sys.argv[1:]]
main()
'''


def test_up_prepares_everything_prints_the_banner_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The real `serve()` with a stand-in web app and workers; embedded Redis, SQLite, demo."""
    import sqlite3
    import subprocess

    from jobs.embedded_redis import free_port

    script = tmp_path / "fake_up.py"
    script.write_text(_FAKE_UP)
    data_dir, port = tmp_path / "data", free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(OBSERVATORY_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO_ROOT))
    out = tmp_path / "up.log"
    with out.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, str(script), "up", "--demo", "--port",
                                    str(port), "--workers", "2"], cwd=tmp_path, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "Observatory is ready at" in out.read_text(), timeout=60)
            db = sqlite3.connect(data_dir / "observatory.db")
            wait_for(lambda: db.execute("SELECT count(*) FROM message").fetchone()[0] >= 2,
                     timeout=30)
            db.close()
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(30)
    text = out.read_text()

    assert code == 0, text
    assert f"Observatory is ready at http://127.0.0.1:{port} (in " in text
    assert "password" in text and "API token" in text
    assert stat_mode(data_dir / "credentials") == 0o600
    redis_urls = {line.split("REDIS_URL=")[1] for line in text.splitlines() if "REDIS_URL=" in line}
    assert len(redis_urls) == 1 and redis_urls.pop().endswith("/1")
    assert "worker-1 | REDIS_URL=" in text and "worker-2 | REDIS_URL=" in text
    assert "demo | " in text and "stopped" in text
    assert not _listening(port)
    redis_port = int(re.search(r"embedded redis://127.0.0.1:(\d+)/1", text).group(1))  # type: ignore[union-attr]
    assert not _listening(redis_port)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_receiver_prefers_the_port_after_the_web_port() -> None:
    import socket

    from dashboard.cli.up import _demo_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert _demo_port(taken - 1) != taken
    assert _demo_port(taken - 1) == taken
