"""A real HTTP receiver on 127.0.0.1 for tests: records requests, plays scripted responses."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class Receiver:
    """`script(path, *replies)` queues replies for a path; the last one repeats."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.peers: set[tuple] = set()  # client (address, port) pairs: one per connection
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        self._scripts[path] = deque(replies)

    def hits(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Received(request.path, dict(request.headers), await request.read()))
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        queue = self._scripts.get(request.path) or deque([Reply()])
        reply = queue.popleft() if len(queue) > 1 else queue[0]
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
