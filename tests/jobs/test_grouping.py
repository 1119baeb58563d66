"""jobs.grouping.GroupCommit: calls arriving during a round trip share the next one; each
caller gets its own answer; a cancelled caller is left out; a failed round trip fails its
group only."""

from __future__ import annotations

import asyncio

import pytest

from jobs.grouping import GroupCommit


class _Target:
    """Records each round trip; `gate` holds the current one until released."""

    def __init__(self) -> None:
        self.trips: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail_next = False

    async def send(self, target: _Target, group: list[tuple[int, asyncio.Future[int]]]
                   ) -> list[int | Exception]:
        self.trips.append([n for n, _ in group])
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("round trip lost")
        return [ValueError(f"odd {n}") if n % 2 else n * 10 for n, _ in group]


async def test_calls_during_a_round_trip_go_together_with_their_own_answers():
    target = _Target()
    group: GroupCommit[_Target, int, int] = GroupCommit(target.send)
    first = asyncio.create_task(group.run(target, 0))
    await asyncio.sleep(0)  # the first goes at once, alone
    later = [asyncio.create_task(group.run(target, n)) for n in (2, 3, 4)]
    cancelled = asyncio.create_task(group.run(target, 6))
    await asyncio.sleep(0)
    cancelled.cancel()  # before its turn: left out
    target.gate.set()
    answers = await asyncio.gather(first, *later, return_exceptions=True)
    assert target.trips == [[0], [2, 3, 4]]
    assert answers[:2] == [0, 20] and answers[3] == 40
    assert isinstance(answers[2], ValueError) and str(answers[2]) == "odd 3"
    assert cancelled.cancelled() and group.sender is None and group.waiting == []


async def test_a_failed_round_trip_fails_its_group_only():
    target = _Target()
    group: GroupCommit[_Target, int, int] = GroupCommit(
        target.send, error=lambda exc: LookupError(str(exc)))
    target.fail_next = True
    failed = asyncio.create_task(group.run(target, 2))
    await asyncio.sleep(0)
    after = asyncio.create_task(group.run(target, 4))
    target.gate.set()
    with pytest.raises(LookupError, match="round trip lost"):
        await failed
    assert await after == 40
    assert target.trips == [[2], [4]]
