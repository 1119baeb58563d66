"""A minimal webhook sink for benchmarks: `python -m bench.receiver --port P [--aiohttp]`.

`POST /ok/{n}` answers 200 at once; `POST /slow/{n}` answers 200 after `--slow-s` seconds.

By default it is a bare HTTP/1.1 server (httptools' parser on uvloop, keep-alive, no
framework): it stands in for receivers that run on other machines, so it should take as
little of the benchmark's two cores as it can. Measured here (bench.deliveries), aiohttp's web
server spent 114–130 µs of CPU per request, a third of a core at the engine's rate, taken from
the worker, PostgreSQL and Redis that share the machine with it; `--aiohttp` still runs it.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop
from aiohttp import web

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n\r\nok"
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Length: 9\r\n\r\nnot found")
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class _Sink(asyncio.Protocol):
    """One connection: answers each complete request in order (no pipelining needed: clients
    send the next request on a connection only after its response)."""

    def __init__(self, slow_s: float) -> None:
        self.slow_s = slow_s
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(BAD_REQUEST)
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url, b""
        keep_alive = self.parser.should_keep_alive()
        if self.parser.get_method() != b"POST":
            self._answer(NOT_FOUND, keep_alive)
        elif url.startswith(b"/ok/"):
            self._answer(OK, keep_alive)
        elif url.startswith(b"/slow/"):
            asyncio.get_running_loop().call_later(self.slow_s, self._answer, OK, keep_alive)
        else:
            self._answer(NOT_FOUND, keep_alive)

    def _answer(self, response: bytes, keep_alive: bool) -> None:
        if self.transport is None:  # the client gave up meanwhile
            return
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()


async def _serve(port: int, slow_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Sink(slow_s), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def _aiohttp(port: int, slow_s: float) -> None:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(slow_s)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ok/{n}", ok)
    app.router.add_post("/slow/{n}", slow)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow-s", type=float, default=10.0)
    parser.add_argument("--aiohttp", action="store_true", help="aiohttp's web server instead")
    args = parser.parse_args()
    if args.aiohttp:
        _aiohttp(args.port, args.slow_s)
    else:
        uvloop.run(_serve(args.port, args.slow_s))


if __name__ == "__main__":
    main()
