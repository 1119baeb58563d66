"""What the CLI's HTTP commands share: the REST client (where the API is, which token), what a
refusal prints, and the `--format` option with the stdout/stderr consoles.

Every `observatory dlq|ops …` command builds one `Api` from its `--url`/`--token` options and
wraps its body in `handled()`, the one place a failure becomes `Error: message` and exit 1:

ApiError (CliError)     base: a failure printed as `Error: message`, exit 1, no traceback;
                        raised as is when a success is not JSON (--url is not the API)
├── RefusedError        the server answered with an error (its `error.message`, field errors)
└── UnreachableError    no answer at all (connection refused, bad host, timeout)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from dashboard.cli import CliError, fail

DEFAULT_URL = "http://127.0.0.1:3000"
TIMEOUT_S = 30.0

UrlOption = Annotated[str, typer.Option(
    "--url", envvar="OBSERVATORY_URL", help="Base URL of the Observatory API.")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar="OBSERVATORY_TOKEN", show_default=False,
    help="API token (default: the credentials file `observatory up` writes).")]


def short_time(value: str | None) -> str:
    """`2025-01-02 10:11:12` of an ISO timestamp (UTC, as the API answers)."""
    return (value or "")[:19].replace("T", " ")


def out() -> Console:
    """The stdout console (made per call: the test runner swaps sys.stdout)."""
    return Console(highlight=False)


def err() -> Console:
    """The stderr console: progress bars and spinners go there, so stdout stays data."""
    return Console(stderr=True, highlight=False)


class Output(StrEnum):
    """How a command prints what the server answered."""

    table = "table"
    json = "json"  # the server's JSON as is, for scripts


FormatOption = Annotated[Output, typer.Option(
    "--format", help="table, or json: the server's JSON as is.")]


class ApiError(CliError):
    """A REST call that did not succeed."""


class RefusedError(ApiError):
    """The server answered with an HTTP error; `lines` are the field errors of a 422."""

    def __init__(self, status: int, code: str, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.status, self.code, self.lines = status, code, lines


class UnreachableError(ApiError):
    """The request got no HTTP answer."""


def resolve_token(token: str | None) -> str | None:
    """`--token`/OBSERVATORY_TOKEN, else the first admin's token from the data directory's
    credentials file (so `observatory up` then `observatory dlq list` just works)."""
    if token:
        return token.strip()
    from dashboard.cli.users import read_credentials  # the one reader of that file's format

    creds = read_credentials()
    return creds.token if creds else None


class Api:
    """A synchronous client of `/v1` on `url`, authenticated with `token`."""

    def __init__(self, url: str, token: str | None, timeout: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.token = resolve_token(token)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                body: Any = None) -> httpx.Response:
        """The answer to one call; RefusedError/UnreachableError unless it is a 2xx."""
        try:
            response = self._http.request(method, path, params=_clean(params), json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            raise self._refused(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.json(self.request("GET", path, params=params))

    def post(self, path: str, body: Any = None) -> Any:
        return self.json(self.request("POST", path, body=body))

    def put(self, path: str, body: Any = None) -> Any:
        return self.json(self.request("PUT", path, body=body))

    def delete(self, path: str, body: Any = None) -> Any:
        return self.json(self.request("DELETE", path, body=body))

    def read(self, path: str, output: Output, **params: Any) -> Any | None:
        """GET `path` for a listing: under `--format json` the server's answer is printed as
        is (for scripts) and None returned; otherwise its JSON is returned for a table."""
        response = self.request("GET", path, params=params)
        data = self.json(response)
        if output is Output.json:
            typer.echo(response.text)
            return None
        return data

    def json(self, response: httpx.Response) -> Any:
        """The answer's JSON; a non-JSON success means --url points at something else."""
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(f"{response.request.url} did not answer JSON (is {self.url} the "
                           "Observatory API? set --url or OBSERVATORY_URL)") from exc

    @contextmanager
    def stream(self, path: str, **params: Any) -> Iterator[httpx.Response]:
        """A streamed GET (the body is read chunk by chunk by the caller)."""
        try:
            with self._http.stream("GET", path, params=_clean(params)) as response:
                if response.is_error:
                    response.read()
                    raise self._refused(response)
                yield response
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: httpx.HTTPError) -> UnreachableError:
        reason = str(exc) or type(exc).__name__
        return UnreachableError(f"cannot reach the Observatory API at {self.url}: {reason} "
                                "(is it running? set --url or OBSERVATORY_URL)")

    def _refused(self, response: httpx.Response) -> RefusedError:
        code, message, details = _error_of(response)
        if response.status_code == 401 and not self.token:
            message += (" (no token: pass --token, set OBSERVATORY_TOKEN, or start "
                        "`observatory up` which writes the credentials file)")
        lines = [_field_line(f) for f in details.get("fields") or [] if isinstance(f, dict)]
        # a summary message often names the fields already: print only what it does not say
        lines = [line for line in lines if line.strip().rsplit(" (", 1)[0] not in message]
        return RefusedError(response.status_code, code, message, lines)


def _clean(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """Query parameters without the options left unset."""
    if not params:
        return None
    return {k: v for k, v in params.items() if v is not None and v != "" and v is not False}


def _error_of(response: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    """(code, message, details) of an error answer, JSON or not."""
    try:
        error = response.json().get("error")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        details = error.get("details")
        return (str(error.get("code", "error")), str(error["message"]),
                details if isinstance(details, dict) else {})
    text = response.text.strip()[:200] or response.reason_phrase
    return "http_error", f"HTTP {response.status_code}: {text}", {}


def _field_line(field: dict[str, Any]) -> str:
    rule = f" ({field['rule']})" if field.get("rule") else ""
    return f"  {field.get('field', 'body')}: {field.get('message') or 'invalid'}{rule}"


@contextmanager
def handled() -> Iterator[None]:
    """Run a command body: an ApiError becomes `Error: message` (+ field errors) on stderr,
    exit 1."""
    try:
        yield
    except RefusedError as exc:
        exit_ = fail(str(exc))
        for line in exc.lines:
            typer.echo(line, err=True)
        raise exit_ from exc
    except ApiError as exc:
        raise fail(str(exc)) from exc
