"""Database configuration, start-up and migrations, used by every process."""

from __future__ import annotations

from typing import Any

from tortoise import Tortoise, connections

from models.config import get_settings, normalise_database_url

MODEL_MODULES = [
    "models.endpoints",
    "models.deliveries",
    "models.dead_letters",
    "models.cron",
    "models.agents",
    "models.bulk",
    "models.users",
    "models.audit",
]


def tortoise_config(database_url: str | None = None) -> dict[str, Any]:
    """The tortoise config dict; `database_url` defaults to the settings' resolved URL."""
    settings = get_settings()
    url = normalise_database_url(database_url) if database_url else settings.resolved_database_url
    if url.startswith("sqlite://") and ":memory:" not in url:
        settings.data_dir.mkdir(parents=True, exist_ok=True) if not database_url else None
    return {
        "connections": {"default": url},
        "apps": {
            "models": {
                "models": MODEL_MODULES,
                "default_connection": "default",
                "migrations": "models.migrations",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def __getattr__(name: str) -> Any:
    # `tortoise -c models.db.TORTOISE_ORM makemigrations` reads this, from the environment.
    if name == "TORTOISE_ORM":
        return tortoise_config()
    raise AttributeError(name)


async def init_db(database_url: str | None = None) -> None:
    """Connect tortoise for this process (global context, usable from any task)."""
    await Tortoise.init(config=tortoise_config(database_url), _enable_global_fallback=True)


async def close_db() -> None:
    await connections.close_all()


async def migrate_db(database_url: str | None = None) -> None:
    """Apply every pending migration (what `observatory migrate` and `up` run)."""
    from tortoise.migrations.api import migrate

    await migrate(config=tortoise_config(database_url))
    await connections.close_all()
