"""Bearer-token authentication and role checks for the REST API.

A token's check is trusted for models.auth.TOKEN_CACHE_S (1 s) in this process: a token
revoked or deleted, or a role changed, by another process takes effect within that bound
(at once when revoked through models.auth in this process). A token in use is re-checked in
the background once its check is half that old, and concurrent requests share one check.
"""

from __future__ import annotations

from starlette.requests import Request

from dashboard.api.errors import ApiError
from models.auth import TOKEN_CACHE_S, role_allows, user_for_token
from models.enums import Role
from models.users import User


async def require_user(request: Request, minimum: Role = Role.VIEWER) -> User:
    """The token's user, if its role is at least `minimum`; 401/403 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Missing bearer token: send 'Authorization: Bearer <token>'")
    user = await user_for_token(token.strip(), max_age_s=TOKEN_CACHE_S)
    if user is None:
        raise ApiError(401, "unauthorized", "Invalid or revoked API token")
    if not role_allows(user.role, minimum):
        raise ApiError(403, "forbidden",
                       f"Role '{user.role.value}' may not do this; it needs '{minimum.value}' or higher")
    return user
