"""`observatory up`: Redis, arq workers, the web app (and the demo) on one machine, supervised."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import typer

from dashboard.cli import (CliError, apply_migrations, database, fail, report_migrations,
                           run)
from dashboard.cli.users import Credentials, demo_token, ensure_first_admin
from jobs.embedded_redis import EmbeddedRedis, free_port
from models.config import get_settings

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_SETTINGS = "jobs.worker.WorkerSettings"
BULK_WORKER_SETTINGS = "jobs.worker.BulkWorkerSettings"
#: a worker process: arq's worker on uvloop (jobs.run_worker); `--bulk` for the bulk lane
WORKER_ARGV = [sys.executable, "-m", "jobs.run_worker"]
GRACE_S = 10.0  # SIGTERM → SIGKILL
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 30.0  # a child that ran this long restarts after the shortest delay again
DEMO_ALLOWLIST = "127.0.0.0/8"

_print_lock = threading.Lock()


def log(source: str, message: str) -> None:
    """One line of `up`'s output: `HH:MM:SS source | message`."""
    with _print_lock:
        sys.stdout.write(f"{time.strftime('%H:%M:%S')} {source:>9} | {message}\n")
        sys.stdout.flush()


@dataclass
class ChildSpec:
    """How to start one supervised process (run in its own process group)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path = REPO_ROOT
    restart: bool = True  # restart (with backoff) when it exits


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive short-lived runs, drives the backoff
    restart_at: float | None = None
    exits: int = 0


class Supervisor:
    """Starts children, restarts those that exit (with backoff) and stops them all."""

    def __init__(self, *, grace_s: float = GRACE_S, base_backoff_s: float = 1.0,
                 log: Callable[[str, str], None] = log) -> None:
        self.children: dict[str, Child] = {}
        self.grace_s = grace_s
        self.base_backoff_s = base_backoff_s
        self.log = log
        self.hurry = threading.Event()  # a second Ctrl-C: skip the grace period

    def add(self, spec: ChildSpec) -> Child:
        child = self.children[spec.name] = Child(spec)
        self._start(child)
        return child

    def _start(self, child: Child) -> None:
        spec = child.spec
        child.process = subprocess.Popen(
            spec.argv, cwd=spec.cwd, env=spec.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        child.started_at, child.restart_at = time.monotonic(), None
        assert child.process.stdout is not None
        threading.Thread(target=_pump, args=(child.process.stdout, spec.name, self.log),
                         daemon=True, name=f"pump-{spec.name}").start()

    def tick(self) -> list[Child]:
        """Notice exits, schedule and perform restarts; returns children that exited for good."""
        now, finished = time.monotonic(), []
        for child in self.children.values():
            if child.process is not None and child.process.poll() is not None:
                finished += self._on_exit(child, now)
            elif child.process is None and child.restart_at is not None and now >= child.restart_at:
                self.log("observatory", f"restarting {child.spec.name}")
                self._start(child)
        return finished

    def _on_exit(self, child: Child, now: float) -> list[Child]:
        assert child.process is not None
        code, ran_s = child.process.returncode, now - child.started_at
        _kill_group(child.process.pid, signal.SIGKILL)  # leftovers of the dead leader
        child.process, child.exits = None, child.exits + 1
        if not child.spec.restart:
            self.log("observatory", f"{child.spec.name} exited ({_describe(code)})")
            return [child]
        child.failures = 0 if ran_s >= STABLE_AFTER_S else child.failures + 1
        delay = min(MAX_BACKOFF_S, self.base_backoff_s * 2 ** max(child.failures - 1, 0))
        child.restart_at = now + delay
        self.log("observatory", f"{child.spec.name} exited ({_describe(code)}) after "
                 f"{ran_s:.1f}s; restarting in {delay:.1f}s")
        return []

    def stop(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after the grace period."""
        live = [c for c in self.children.values() if c.process is not None]
        for child in live:
            assert child.process is not None
            _kill_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while live and time.monotonic() < deadline and not self.hurry.is_set():
            live = [c for c in live if _group_alive(c.process)]  # type: ignore[arg-type]
            time.sleep(0.1)
        for child in live:
            assert child.process is not None
            if _group_alive(child.process):
                self.log("observatory", f"{child.spec.name} did not stop in time: killing it")
            _kill_group(child.process.pid, signal.SIGKILL)
        for child in self.children.values():
            if child.process is not None:
                child.process.wait()
                child.process = None
            child.restart_at = None


def _pump(stream: IO[bytes], name: str, write: Callable[[str, str], None]) -> None:
    """Copy a child's output line by line, prefixed with its name."""
    with stream:
        for raw in iter(stream.readline, b""):
            write(name, raw.decode(errors="replace").rstrip())


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    """Whether the leader or anything else in its process group still runs."""
    process.poll()  # reap the leader, or it counts as alive (a zombie) forever
    try:
        os.killpg(process.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


# --- what `up` starts -------------------------------------------------------------------------

@dataclass(frozen=True)
class UpOptions:
    port: int = 3000
    workers: int = 1
    demo: bool = False
    ready_timeout_s: float = 600.0


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        raise CliError(f"{path} not found: install the project into this venv (`make venv`)")
    return str(path)


def base_env(redis_url: str, data_dir: Path, *, demo: bool) -> dict[str, str]:
    """The environment every child inherits."""
    env = dict(os.environ)
    env.update(REDIS_URL=redis_url, OBSERVATORY_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])))
    if demo:
        allow = [c.strip() for c in env.get("OBSERVATORY_DESTINATION_ALLOWLIST", "").split(",")]
        if DEMO_ALLOWLIST not in allow:
            allow.append(DEMO_ALLOWLIST)
        env["OBSERVATORY_DESTINATION_ALLOWLIST"] = ",".join(c for c in allow if c)
    env.pop("OBSERVATORY_DEMO_TOKEN", None)
    return env


def worker_specs(count: int, env: dict[str, str]) -> list[ChildSpec]:
    return [ChildSpec(f"worker-{i}", WORKER_ARGV, env) for i in range(1, count + 1)]


def bulk_worker_spec(env: dict[str, str]) -> ChildSpec:
    """One worker on the bulk lane (Retry All walkers and their deliveries)."""
    return ChildSpec("bulk", [*WORKER_ARGV, "--bulk"], env)


def web_spec(port: int, env: dict[str, str]) -> ChildSpec:
    """Reflex in production mode, UI + websocket + /v1 API on one port, one backend worker."""
    env = {**env, "REFLEX_USE_NPM": "1"}
    env.setdefault("REFLEX_TELEMETRY_ENABLED", "false")
    env.setdefault("REFLEX_CHECK_LATEST_VERSION", "false")
    if "REFLEX_REDIS_URL" not in env:
        # In-memory state manager: state lives in one process, and SQLite wants one writer.
        env["GRANIAN_WORKERS"] = "1"
    argv = [_tool("reflex"), "run", "--env", "prod", "--single-port",
            "--backend-port", str(port), "--backend-host", "127.0.0.1"]
    return ChildSpec("web", argv, env, restart=False)  # restartable once it was ready


def demo_spec(demo_port: int, api_url: str, env: dict[str, str], token: str | None) -> ChildSpec:
    env = {**env, **({"OBSERVATORY_DEMO_TOKEN": token} if token else {})}
    argv = [sys.executable, "-m", "dashboard.demo", "--port", str(demo_port), "--api-url", api_url]
    return ChildSpec("demo", argv, env)


def start_redis(redis_url: str, data_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """REDIS_URL when set; otherwise an embedded redis-server (arq on DB 1)."""
    if redis_url:
        return redis_url, None
    try:
        embedded = EmbeddedRedis(data_dir / "redis").start()
    except RuntimeError as exc:  # it says where its log is
        raise CliError(f"could not start the embedded Redis: {exc}") from exc
    return f"{embedded.url}/1", embedded


def wait_until_ready(url: str, supervisor: Supervisor, stop: threading.Event,
                     timeout_s: float) -> bool:
    """Poll `url` until 200 while supervising; False on timeout, stop, or the web app exiting."""
    deadline = time.monotonic() + timeout_s
    log("observatory", f"waiting for {url} (a first start builds the frontend: ~30 s or more)")
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            if any(c.spec.name == "web" for c in supervisor.tick()):
                return False
            try:
                if client.get(url).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            stop.wait(0.5)
    if not stop.is_set():
        log("observatory", f"{url} did not answer 200 within {timeout_s:.0f}s")
    return False


class RedisKeeper:
    """Restarts the embedded redis-server (same port) if it dies; workers reconnect."""

    def __init__(self, embedded: EmbeddedRedis | None) -> None:
        self.embedded = embedded
        self.retry_at = 0.0
        self.failures = 0

    def tick(self) -> None:
        redis = self.embedded
        if redis is None or (redis.process is not None and redis.process.poll() is None):
            return
        if time.monotonic() < self.retry_at:
            return
        log("observatory", f"embedded redis-server on port {redis.port} is gone: restarting it")
        try:
            redis.start()
            self.failures = 0
        except RuntimeError as exc:
            self.failures += 1
            delay = min(MAX_BACKOFF_S, 2.0 ** self.failures)
            self.retry_at = time.monotonic() + delay
            log("observatory", f"{exc}; next try in {delay:.0f}s")


async def prepare(path: Path, *, demo: bool) -> tuple[list[str], Credentials | None, str | None]:
    """Migrations, the first admin (on an empty database) and the demo's token."""
    applied = await apply_migrations()
    async with database():
        creds = await ensure_first_admin(path)
        token = await demo_token(path) if demo else None
    return applied, creds, token


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise CliError(f"port {port} is already in use; stop what uses it or pass "
                           "--port") from exc


def _demo_port(port: int) -> int:
    """PORT+1 when free, so retries queued by an earlier run still find the receiver."""
    try:
        _check_port_free(port + 1)
    except CliError:
        return free_port()
    return port + 1


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold `up.lock` so two launchers never share one data directory (and SQLite file)."""
    handle = open(data_dir / "up.lock", "w")  # noqa: SIM115 - held until `up` ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CliError(f"another `observatory up` is running on {data_dir}") from None
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _install_signal_handlers(stop: threading.Event, hurry: threading.Event) -> dict[int, object]:
    """SIGINT/SIGTERM/SIGHUP stop everything; a second one skips the grace period.

    The handler only sets events: it runs between bytecodes of the main thread, which may
    hold the print lock at that moment.
    """
    def handler(signum: int, frame: object) -> None:
        (hurry if stop.is_set() else stop).set()

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    return {sig: signal.signal(sig, handler) for sig in signals}


def _print_first_admin(creds: Credentials, path: Path) -> None:
    typer.secho("First start: created the admin user. Its password and API token are shown "
                "only now:", bold=True)
    typer.echo(f"  user       {creds.name}\n  password   {creds.password}\n"
               f"  API token  {creds.token}\n  saved in   {path} (mode 600)")


def _print_banner(url: str, took_s: float, facts: dict[str, str]) -> None:
    rule = "=" * 72
    with _print_lock:  # not cut by the children's lines
        typer.echo(rule)
        typer.secho(f"Observatory is ready at {url} (in {took_s:.1f} s)", bold=True, fg="green")
        for key, value in facts.items():
            typer.echo(f"  {key:<12} {value}")
        typer.echo("Press Ctrl-C to stop.")
        typer.echo(rule)


def _facts(options: UpOptions, url: str, data_dir: Path, redis_url: str,
           embedded: EmbeddedRedis | None, demo_port: int | None) -> dict[str, str]:
    settings = get_settings()
    creds = data_dir / "credentials"
    facts = {
        "dashboard": url,
        "REST API": f"{url}/v1  (OpenAPI: {url}/v1/openapi.json)",
        "credentials": str(creds) if creds.exists() else "(none: users were created by hand)",
        "redis": (f"embedded {redis_url} (log: {data_dir / 'redis' / 'redis.log'})"
                  if embedded else "REDIS_URL"),
        "database": ("DATABASE_URL (" + settings.database_url.split(":", 1)[0] + ")"
                     if settings.database_url else f"SQLite {data_dir / 'observatory.db'}"),
        "workers": f"{options.workers} x arq {WORKER_SETTINGS}"
                   + (f", 1 x arq {BULK_WORKER_SETTINGS}" if options.workers else "")
                   + " (python -m jobs.run_worker, on uvloop)",
    }
    if demo_port:
        facts["demo"] = (f"receiver http://127.0.0.1:{demo_port} (/ok /flaky /gone /slow), "
                         "~1 message/s")
    return facts


def serve(options: UpOptions) -> int:
    """Run everything until SIGINT/SIGTERM; returns the exit code."""
    started = time.monotonic()
    data_dir = get_settings().data_dir.resolve()
    os.environ["OBSERVATORY_DATA_DIR"] = str(data_dir)  # children run from the repo root
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (REPO_ROOT / "rxconfig.py").exists():
        raise CliError(f"{REPO_ROOT / 'rxconfig.py'} not found: run from a source checkout")
    _check_port_free(options.port)
    lock = _lock_data_dir(data_dir)
    applied, creds, token = run(prepare(data_dir / "credentials", demo=options.demo))
    report_migrations(applied)
    if creds:
        _print_first_admin(creds, data_dir / "credentials")
    stop, supervisor, embedded = threading.Event(), Supervisor(), None
    previous = _install_signal_handlers(stop, supervisor.hurry)
    try:
        redis_url, embedded = start_redis(get_settings().redis_url, data_dir)
        env = base_env(redis_url, data_dir, demo=options.demo)
        for spec in worker_specs(options.workers, env):
            supervisor.add(spec)
        if options.workers:
            supervisor.add(bulk_worker_spec(env))
        web = supervisor.add(web_spec(options.port, env))
        url = f"http://127.0.0.1:{options.port}"
        if not wait_until_ready(f"{url}/v1/health", supervisor, stop, options.ready_timeout_s):
            if stop.is_set():
                return 0
            raise CliError("the web app did not become ready; see its output above")
        web.spec.restart = True
        demo_port = _demo_port(options.port) if options.demo else None
        if demo_port:
            supervisor.add(demo_spec(demo_port, url, env, token))
        _print_banner(url, time.monotonic() - started,
                      _facts(options, url, data_dir, redis_url, embedded, demo_port))
        keeper = RedisKeeper(embedded)
        while not stop.wait(0.25):
            supervisor.tick()
            keeper.tick()
        return 0
    finally:
        log("observatory", "stopping everything...")
        supervisor.stop()
        if embedded:
            embedded.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        lock.close()
        log("observatory", "stopped")


def up_command(
    demo: bool = typer.Option(False, "--demo", help="Also run a demo receiver and producer."),
    port: int = typer.Option(3000, "--port", "-p", min=1, max=65535, help="Web/API port."),
    workers: int = typer.Option(1, "--workers", "-w", min=0, help="arq worker processes."),
    ready_timeout: float = typer.Option(600.0, "--ready-timeout",
                                        help="Seconds to wait for the web app's first start."),
) -> None:
    """Run Observatory on this machine: Redis, workers and the dashboard, supervised."""
    try:
        code = serve(UpOptions(port=port, workers=workers, demo=demo,
                               ready_timeout_s=ready_timeout))
    except CliError as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt:  # Ctrl-C before the supervisor's handlers were installed
        raise typer.Exit(130) from None
    raise typer.Exit(code)
