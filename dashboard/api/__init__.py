"""The REST API (`/v1`), a Starlette app mounted into the Reflex backend."""

#: how to serve the API alone under uvicorn (the benchmarks, the CLI tests): uvloop and the
#: httptools parser, named explicitly (uvicorn's fallbacks, asyncio and h11, cost several times
#: the CPU per request). `observatory up` serves it inside Reflex under granian instead, whose
#: own HTTP server needs no parser and whose loop "auto" is uvloop when installed.
UVICORN_ARGV = ["uvicorn", "dashboard.api.app:api", "--loop", "uvloop", "--http", "httptools"]
