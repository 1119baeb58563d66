"""Process-wide resources of the backend (database, Redis pool), opened lazily once."""

from __future__ import annotations

import asyncio

from arq.connections import ArqRedis
from tortoise import Tortoise

from jobs.queue import connect
from models.db import init_db

_lock = asyncio.Lock()
_redis: ArqRedis | None = None


async def ensure_db() -> None:
    """Initialise tortoise for this process unless something already did."""
    if Tortoise._inited:
        return
    async with _lock:
        if not Tortoise._inited:
            await init_db()


async def get_redis() -> ArqRedis:
    """The process's arq Redis pool on REDIS_URL."""
    global _redis
    if _redis is None:
        async with _lock:
            if _redis is None:
                _redis = await connect()
    return _redis


async def close() -> None:
    global _redis
    if _redis is not None:
        await _redis.aclose()
        _redis = None
