"""Users, password hashing (scrypt) and API tokens (stored as sha256)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from tortoise.expressions import Q

from models.enums import Role
from models.users import ApiToken, User

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}

#: viewers read, operators act (retry, cancel, archive), admins do everything
ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

#: how stale a token's `last_used_at` may get before a request refreshes it
LAST_USED_PRECISION = timedelta(minutes=1)

#: the name of the API tokens that back dashboard sign-ins (one per signed-in browser)
SESSION_TOKEN_NAME = "dashboard-session"


def role_allows(role: Role | str, minimum: Role | str) -> bool:
    """Whether `role` may do what needs `minimum` (unknown roles may do nothing)."""
    try:
        return ROLE_RANK[Role(role)] >= ROLE_RANK[Role(minimum)]
    except ValueError:
        return False


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), dklen=32, **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(user: User, name: str = "default") -> str:
    """Create an API token for `user`; the plain token is returned once and never stored."""
    token = "obs_" + secrets.token_urlsafe(32)
    await ApiToken.create(user=user, token_hash=_token_hash(token), prefix=token[:12], name=name)
    return token


async def create_user(name: str, role: Role | str, password: str | None = None) -> tuple[User, str, str]:
    """Create a user with a password and one API token.

    Returns:
        (user, password, token): the plain password and token, shown to the operator once.
    """
    password = password or secrets.token_urlsafe(12)
    user = await User.create(name=name, role=Role(role), password_hash=hash_password(password))
    token = await issue_token(user)
    return user, password, token


async def user_for_token(token: str) -> User | None:
    """The user owning `token`, or None."""
    row = await ApiToken.get_or_none(token_hash=_token_hash(token)).select_related("user")
    if row is None:
        return None
    now = datetime.now(UTC)
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_PRECISION:
        # a write per request would serialise busy clients on one row: minute precision
        await ApiToken.filter(id=row.id).update(last_used_at=now)
    return row.user


async def authenticate(name: str, password: str) -> User | None:
    user = await User.get_or_none(name=name)
    if user is None or not verify_password(password, user.password_hash):
        return None
    return user


async def revoke_token(token: str) -> bool:
    """Delete the token (a dashboard sign-out); False when it did not exist."""
    return bool(await ApiToken.filter(token_hash=_token_hash(token)).delete())


async def set_password(user: User, password: str) -> None:
    """Replace `user`'s password (its API tokens keep working)."""
    await User.filter(id=user.id).update(password_hash=hash_password(password))


async def revoke_session_tokens(user: User) -> int:
    """Sign `user` out of every browser (the dashboard-session tokens); how many there were."""
    return await ApiToken.filter(user_id=user.id, name=SESSION_TOKEN_NAME).delete()


async def tokens_matching(value: str) -> list[ApiToken]:
    """The tokens whose shown prefix is `value`, or the one token `value` itself (full token),
    each with its user loaded."""
    match = Q(token_hash=_token_hash(value))
    if len(value) <= 16:  # the prefix column's width: a longer value can only be a whole token
        match |= Q(prefix=value)
    return await ApiToken.filter(match).select_related("user").order_by("id")
