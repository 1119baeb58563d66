"""How far ahead of its endpoint a bulk-lane worker claims deliveries.

A bulk-lane job carries the deliveries of one endpoint. Without a bound, a worker claimed far
more than the endpoint takes: 32 jobs of 50 while the endpoint allows 64 in flight, and as the
waiting deliveries outlived `DETACH_AFTER_S` their jobs detached them and returned, so arq
started more jobs, which claimed more (measured with bench/bulk_retry.py, 20,000 entries: 4,000
to 5,000 deliveries `running` while 64 were in flight). Every one of them was then detached and
recorded on its own, a cancel had to find them all waiting, and a worker killed meanwhile left
them all to the zombie sweep.

A `ClaimGate` per endpoint and worker process admits a job's deliveries before its claim while
fewer than `limit` of that endpoint's deliveries are claimed and not finished (one job is always
admitted when none are); a job that is not admitted within its wait goes back to the queue, so
a slow endpoint's jobs never hold the lane's job slots.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ClaimGate:
    """Admission of claims for one endpoint, first come first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0  # deliveries admitted and not given back
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        return self.taken == 0 or self.taken + n <= self.limit

    async def take(self, n: int, timeout_s: float) -> bool:
        """Admit `n` deliveries, waiting at most `timeout_s`; False (nothing taken) when the
        wait ran out."""
        if not self._waiters and self._fits(n):
            self.taken += n
            return True
        admitted = asyncio.get_running_loop().create_future()
        self._waiters.append((n, admitted))
        try:
            await asyncio.wait_for(asyncio.shield(admitted), timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if admitted.done() and not admitted.cancelled():
                self.give(n)  # admitted just as the wait ended: hand it on
            else:
                admitted.cancel()
                self._wake()  # a smaller one behind it may fit now
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False
        return True

    def give(self, n: int) -> None:
        """`n` admitted deliveries are finished (or were not claimed after all)."""
        self.taken = max(self.taken - n, 0)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, admitted = self._waiters[0]
            if admitted.done():  # gave up waiting
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self.taken += n
            admitted.set_result(None)
