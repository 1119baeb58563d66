"""The `observatory` command line: `up`, `migrate`, `users` (see main.py for the app)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import typer
from tortoise.exceptions import DBConnectionError

from jobs.errors import OperationError

T = TypeVar("T")


class CliError(Exception):
    """A failure the command reports as `Error: message` (exit 1) without a traceback."""


def fail(message: str) -> typer.Exit:
    """Print `Error: message` on stderr; return the exit to raise."""
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async core; domain and CLI errors become `Error: message`, exit 1.

    This is the one place the CLI maps errors (every command body calls it).
    """
    try:
        return asyncio.run(coro)
    except OperationError as exc:
        raise fail(exc.message) from exc
    except CliError as exc:
        raise fail(str(exc)) from exc
    except (OSError, DBConnectionError) as exc:  # database or Redis unreachable, disk full...
        raise fail(f"{type(exc).__name__}: {exc}") from exc


@asynccontextmanager
async def database() -> AsyncIterator[None]:
    """Tortoise connected for the duration of one command."""
    from models.db import close_db, init_db

    await init_db()
    try:
        yield
    finally:
        await close_db()


async def pending_migrations(database_url: str | None = None) -> list[str]:
    """Names (`app.migration`) of the migrations not yet applied, in order."""
    from tortoise import Tortoise, connections
    from tortoise.migrations.executor import MigrationExecutor

    from models.db import tortoise_config

    config = tortoise_config(database_url)
    await Tortoise.init(config=config, init_connections=False)
    try:
        executor = MigrationExecutor(connections.get("default"), config["apps"])
        return [f"{step.migration.app_label}.{step.migration.name}"
                for step in await executor.plan() if not step.backward]
    finally:
        await connections.close_all()


async def apply_migrations(database_url: str | None = None) -> list[str]:
    """Apply every pending migration; returns the names of those applied."""
    from models.db import migrate_db

    pending = await pending_migrations(database_url)
    if pending:
        await migrate_db(database_url)
    return pending


def report_migrations(applied: list[str]) -> None:
    if not applied:
        typer.echo("Database schema is up to date (no migrations to apply).")
    for name in applied:
        typer.echo(f"Applied migration {name}")
