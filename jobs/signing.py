"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature`."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    """A new endpoint secret, `whsec_<base64 of 24 random bytes>`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


@lru_cache(maxsize=4096)  # a worker signs with a few secrets, thousands of times each
def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(raw)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.digest(_key(secret), signed, "sha256")  # one call into OpenSSL
    return "v1," + binascii.b2a_base64(digest, newline=False).decode()


def signature_headers(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers for one request; several secrets (rotation) give space-separated signatures."""
    if len(secrets_) == 1:  # the usual case, on every delivery: no generator and join
        signature = sign(secrets_[0], msg_id, timestamp, body)
    else:
        signature = " ".join(sign(s, msg_id, timestamp, body) for s in secrets_)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature}


def signing_secrets(endpoint: Any, now: datetime | None = None) -> list[str]:
    """The endpoint's secret, plus the previous one while its rotation grace period lasts."""
    secrets_ = [endpoint.secret]
    expires = getattr(endpoint, "previous_secret_expires_at", None)
    if endpoint.previous_secret and expires and expires > (now or datetime.now(UTC)):
        secrets_.append(endpoint.previous_secret)
    return secrets_
