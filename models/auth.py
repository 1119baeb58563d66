"""Users, password hashing (scrypt) and API tokens (stored as sha256).

A token check costs a database round trip; the REST API, which checks one per request, lets
a check made at most TOKEN_CACHE_S ago stand (`user_for_token(..., max_age_s=...)`): a token
revoked or deleted, or a role changed, by another process (the CLI, another backend) takes
effect there within TOKEN_CACHE_S; through `revoke_token` or `revoke_session_tokens` in the
same process at once. Every other caller (dashboard sessions, the CLI) checks each time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from datetime import UTC, datetime, timedelta

from tortoise.expressions import Q

from models.enums import Role
from models.users import ApiToken, User

logger = logging.getLogger(__name__)

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}

#: viewers read, operators act (retry, cancel, archive), admins do everything
ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

#: how stale a token's `last_used_at` may get before a request refreshes it
LAST_USED_PRECISION = timedelta(minutes=1)

#: the name of the API tokens that back dashboard sign-ins (one per signed-in browser)
SESSION_TOKEN_NAME = "dashboard-session"

#: how long the REST API trusts a token check (see the module's docstring)
TOKEN_CACHE_S = 1.0
_CACHE_MAX = 10_000  # tokens remembered at most (the cache is emptied beyond that)

_clock = time.monotonic  # when a check was made (replaced by a fake clock in tests)
#: sha256 of a token → (when it was checked, _clock(); its user)
_checked: dict[str, tuple[float, User]] = {}
#: sha256 of a token → its check under way (for max_age_s callers to share)
_pending: dict[str, asyncio.Task[User | None]] = {}
_forgotten = [0]  # bumped by every revocation here: a check begun before one is not kept


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


async def user_for_token(token: str, *, max_age_s: float = 0.0) -> User | None:
    """The user owning `token`, or None.

    Args:
        max_age_s: when > 0, a check of this token made in this process at most that many
            seconds ago answers without a database round trip (the REST API passes
            TOKEN_CACHE_S). Once such a check is half that old, the request it answers starts
            one re-check in the background, so that a busy token never waits for one; requests
            arriving while a check of the token is under way share it. A token not found is
            never remembered.
    """
    digest = _token_hash(token)
    if max_age_s > 0:
        if (hit := _checked.get(digest)) is not None:
            age = _clock() - hit[0]
            if age < max_age_s:
                if age >= max_age_s / 2 and digest not in _pending:
                    _start_check(digest)
                return hit[1]
        # shielded: a caller that goes away does not cancel the check the others share
        return await asyncio.shield(_pending.get(digest) or _start_check(digest))
    return await _check(digest)


def _start_check(digest: str) -> asyncio.Task[User | None]:
    """A check of `digest` as a task that requests may share (until it ends or a revocation
    here drops it)."""
    task = asyncio.get_running_loop().create_task(_check(digest))
    _pending[digest] = task

    def done(_: asyncio.Task[User | None]) -> None:
        if _pending.get(digest) is task:
            del _pending[digest]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # its requests got the error too; a background re-check's one is only seen here
            # (the remembered check then ages out)
            logger.warning("API token check failed: %r", exc)

    task.add_done_callback(done)
    return task


async def _check(digest: str) -> User | None:
    """Look the token up, refresh its `last_used_at` (minute precision), remember the check."""
    checked_at, generation = _clock(), _forgotten[0]
    row = await ApiToken.get_or_none(token_hash=digest).select_related("user")
    if row is None:
        _checked.pop(digest, None)
        return None
    now = datetime.now(UTC)
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_PRECISION:
        # a write per request would serialise busy clients on one row: minute precision
        await ApiToken.filter(id=row.id).update(last_used_at=now)
    if len(_checked) >= _CACHE_MAX:
        _checked.clear()
    if generation == _forgotten[0]:
        _checked[digest] = (checked_at, row.user)
    return row.user


def _forget(digests: set[str]) -> None:
    """Drop the remembered checks of these token hashes (and keep none begun before, nor let
    a later request share one under way)."""
    _forgotten[0] += 1
    for digest in digests:
        _checked.pop(digest, None)
        _pending.pop(digest, None)


async def authenticate(name: str, password: str) -> User | None:
    user = await User.get_or_none(name=name)
    if user is None or not verify_password(password, user.password_hash):
        return None
    return user


async def revoke_token(token: str) -> bool:
    """Delete the token (a dashboard sign-out); False when it did not exist."""
    digest = _token_hash(token)
    _forget({digest})
    deleted = await ApiToken.filter(token_hash=digest).delete()
    _forget({digest})  # and what a check racing the delete may have kept
    return bool(deleted)


async def set_password(user: User, password: str) -> None:
    """Replace `user`'s password (its API tokens keep working)."""
    await User.filter(id=user.id).update(password_hash=hash_password(password))


async def revoke_session_tokens(user: User) -> int:
    """Sign `user` out of every browser (the dashboard-session tokens); how many there were."""
    sessions = ApiToken.filter(user_id=user.id, name=SESSION_TOKEN_NAME)
    digests = set(await sessions.values_list("token_hash", flat=True))
    _forget(digests)
    deleted = await sessions.delete()
    _forget(digests)  # and what a check racing the delete may have kept
    return deleted


async def tokens_matching(value: str) -> list[ApiToken]:
    """The tokens whose shown prefix is `value`, or the one token `value` itself (full token),
    each with its user loaded."""
    match = Q(token_hash=_token_hash(value))
    if len(value) <= 16:  # the prefix column's width: a longer value can only be a whole token
        match |= Q(prefix=value)
    return await ApiToken.filter(match).select_related("user").order_by("id")
