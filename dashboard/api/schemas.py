"""Request bodies of the REST API, validated with pydantic (errors name field and rule)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.policy import RetryPolicy


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AppIn(_Body):
    name: str = Field(min_length=1, max_length=200)


class EndpointIn(_Body):
    app_id: int
    url: str = Field(min_length=1, max_length=2048)
    description: str = Field("", max_length=500)
    event_types: list[str] | None = None
    retry_config: RetryPolicy | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value


class MessageIn(_Body):
    app_id: int
    event_type: str = Field(min_length=1, max_length=200)
    payload: Any
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)


class MessageBatchIn(_Body):
    messages: list[MessageIn] = Field(min_length=1, max_length=1000)
