"""Bearer-token authentication and role checks for the REST API."""

from __future__ import annotations

from starlette.requests import Request

from dashboard.api.errors import ApiError
from models.auth import role_allows, user_for_token
from models.enums import Role
from models.users import User


async def require_user(request: Request, minimum: Role = Role.VIEWER) -> User:
    """The token's user, if its role is at least `minimum`; 401/403 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Missing bearer token: send 'Authorization: Bearer <token>'")
    user = await user_for_token(token.strip())
    if user is None:
        raise ApiError(401, "unauthorized", "Invalid or revoked API token")
    if not role_allows(user.role, minimum):
        raise ApiError(403, "forbidden",
                       f"Role '{user.role.value}' may not do this; it needs '{minimum.value}' or higher")
    return user
