"""API tokens: lookups stamp `last_used_at`, at most once a minute (no write per request)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from models.auth import LAST_USED_PRECISION, create_user, user_for_token
from models.users import ApiToken


async def test_last_used_is_stamped_then_refreshed_only_when_stale(db):
    user, _, token = await create_user("ops", "operator")

    assert (await user_for_token(token)).id == user.id
    first = (await ApiToken.get(user_id=user.id)).last_used_at
    assert first is not None
    await user_for_token(token)
    assert (await ApiToken.get(user_id=user.id)).last_used_at == first  # no second write

    stale = datetime.now(UTC) - LAST_USED_PRECISION - timedelta(seconds=1)
    await ApiToken.filter(user_id=user.id).update(last_used_at=stale)
    await user_for_token(token)
    assert (await ApiToken.get(user_id=user.id)).last_used_at > stale
    assert await user_for_token("obs_not-a-token") is None
