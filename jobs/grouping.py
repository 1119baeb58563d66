"""Group commit: concurrent callers of one slow resource (a database write, a Redis round trip)
share its round trips.

A call arriving while none is in flight goes at once (no added wait); those arriving meanwhile
wait for it, then go together in the next round trip, in arrival order. Each caller gets its
own answer: `send` answers per item (a result, or an exception for that item alone); an
exception from `send` itself reaches every caller of that group. A caller cancelled before its
group is sent is left out.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

Target = TypeVar("Target")  # what the round trips go to (a database client, a Redis pool)
Payload = TypeVar("Payload")
Result = TypeVar("Result")

#: one waiting call: its payload and the caller's future
Waiting = tuple[Payload, "asyncio.Future[Result]"]
#: `send(target, group)`: one answer per item, in order (a result, or that item's exception)
Sender = Callable[[Target, list[tuple[Payload, "asyncio.Future[Result]"]]],
                  Awaitable[Sequence[Any]]]


class GroupCommit(Generic[Target, Payload, Result]):
    """Calls on one target (see the module). `error` turns an exception into the one a
    caller gets (a new one per caller when several share it, e.g. a driver's error mapped
    to the ORM's). The target is passed per call, not held: it is often the key of the
    weak dictionary that keeps its group (`for_target`)."""

    def __init__(self, send: Sender[Target, Payload, Result],
                 error: Callable[[Exception], Exception] = lambda exc: exc) -> None:
        self.send = send
        self.error = error
        self.waiting: list[tuple[Payload, asyncio.Future[Result]]] = []
        self.sender: asyncio.Task[None] | None = None

    async def run(self, target: Target, payload: Payload) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self.waiting.append((payload, future))
        if self.sender is None:
            self.sender = loop.create_task(self._drain(target))
        return await future

    async def _drain(self, target: Target) -> None:
        try:
            while self.waiting:
                group = [item for item in self.waiting if not item[1].done()]
                self.waiting = []
                if group:
                    await self._send_group(target, group)
        finally:
            self.sender = None
            for _, future in self.waiting:  # only when this task itself was cancelled
                future.cancel()
            self.waiting = []

    async def _send_group(self, target: Target,
                          group: list[tuple[Payload, asyncio.Future[Result]]]) -> None:
        try:
            answers = await self.send(target, group)
        except BaseException as exc:  # the round trip as a whole: every caller gets it
            for _, future in group:
                if not future.done():
                    if isinstance(exc, Exception):
                        future.set_exception(self.error(exc))
                    else:
                        future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), answer in zip(group, answers, strict=True):
            if not future.done():
                if isinstance(answer, Exception):
                    future.set_exception(self.error(answer))
                else:
                    future.set_result(answer)


def for_target(groups: weakref.WeakKeyDictionary[Any, GroupCommit[Any, Any, Any]], target: Any,
               make: Callable[[], GroupCommit[Any, Any, Any]]) -> GroupCommit[Any, Any, Any]:
    """The group of `target` in `groups` (made by `make` the first time)."""
    group = groups.get(target)
    if group is None:
        group = groups[target] = make()
    return group
