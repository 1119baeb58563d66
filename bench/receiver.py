"""A minimal webhook sink for benchmarks: `python -m bench.receiver --port P`.

`/ok` answers 200 at once; `/slow` answers 200 after `--slow-s` seconds.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow-s", type=float, default=10.0)
    args = parser.parse_args()

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(args.slow_s)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ok/{n}", ok)
    app.router.add_post("/slow/{n}", slow)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
