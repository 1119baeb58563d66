"""The REST API (`/v1`), a Starlette app mounted into the Reflex backend."""

#: how to serve the API alone under uvicorn (the benchmarks, the CLI tests): uvloop and the
#: httptools parser, named explicitly (uvicorn's fallbacks, asyncio and h11, cost several times
#: the CPU per request). `observatory up` serves it inside Reflex under granian instead, whose
#: own HTTP server needs no parser and whose loop "auto" is uvloop when installed.
#: Idle keep-alive connections are kept 75 s (uvicorn's default is 5 s): longer than clients
#: keep theirs (httpx: 5 s), so a client never reuses one the server is closing at that moment
#: (bench.bulk_retry's cancel, 5 s after its retry-all on the same connection, got a ReadError).
UVICORN_ARGV = ["uvicorn", "dashboard.api.app:api", "--loop", "uvloop", "--http", "httptools",
                "--timeout-keep-alive", "75"]
