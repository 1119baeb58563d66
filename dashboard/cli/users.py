"""`observatory users`: operator accounts and their API tokens, and the first admin's
credentials file.

These commands act on the database directly (not through the REST API): they are how the
first admin gets in, and how a locked-out installation is repaired. Every change writes an
audit row whose actor is `cli:<os user>`; reads (`list`, `tokens`) do not.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict, TypeVar

import typer
from rich.table import Table
from tortoise.context import TortoiseContext
from tortoise.exceptions import IntegrityError
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from dashboard.cli import fail, run
from dashboard.cli.client import FormatOption, Output, out, short_time
from jobs import audit
from jobs.errors import ConflictError, NotFoundError, ValidationError
from models.auth import (create_user, issue_token, revoke_session_tokens, set_password,
                         tokens_matching, user_for_token)
from models.config import get_settings
from models.db import tortoise_config
from models.enums import Role
from models.users import ApiToken, User

T = TypeVar("T")

users_app = typer.Typer(help="Manage operators and their API tokens.", no_args_is_help=True)

FIRST_ADMIN = "admin"
_CREDENTIAL_KEYS = {"OBSERVATORY_USER": "name", "OBSERVATORY_PASSWORD": "password",
                    "OBSERVATORY_TOKEN": "token"}


@dataclass(frozen=True)
class Credentials:
    """A user's name with the plain password and API token (shown once, never stored hashed)."""

    name: str
    password: str
    token: str


def parse_role(value: str) -> Role:
    """The role named `value`, or a ValidationError naming the allowed ones."""
    try:
        return Role(value.strip().lower())
    except ValueError:
        allowed = ", ".join(role.value for role in Role)
        raise ValidationError(f"role must be one of {allowed} (got {value!r})",
                              details={"field": "role"}) from None


async def create_account(name: str, role: Role | str) -> Credentials:
    """Create a user with a password and one API token.

    Raises:
        ValidationError: empty name or unknown role.
        ConflictError: a user with this name already exists.
    """
    name = name.strip()
    if not name:
        raise ValidationError("name must not be empty", details={"field": "name"})
    role = parse_role(role) if isinstance(role, str) else role
    if await User.exists(name=name):
        raise ConflictError(f"a user named {name!r} already exists", details={"field": "name"})
    try:
        _, password, token = await create_user(name, role)
    except IntegrityError as exc:  # created concurrently between the check and the insert
        raise ConflictError(f"a user named {name!r} already exists") from exc
    return Credentials(name=name, password=password, token=token)


def credentials_path() -> Path:
    """`$OBSERVATORY_DATA_DIR/credentials`."""
    return get_settings().data_dir / "credentials"


def write_credentials(path: Path, creds: Credentials) -> None:
    """Write `creds` as `KEY=value` lines (shell-sourceable), the file created with mode 600.

    The file is created under a temporary name with O_EXCL and mode 0600 (never chmod-ed
    after the secrets are in it), then renamed over `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# Observatory: the first admin, created by `observatory up`. Keep it secret.\n")
        for key, attr in _CREDENTIAL_KEYS.items():
            out.write(f"{key}={getattr(creds, attr)}\n")
    os.replace(tmp, path)


def read_credentials(path: Path | None = None) -> Credentials | None:
    """The credentials in `path` (default: the data dir's file), or None when absent/incomplete."""
    path = path or credentials_path()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    values: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() in _CREDENTIAL_KEYS:
            values[_CREDENTIAL_KEYS[key.strip()]] = value.strip()
    if set(values) != set(_CREDENTIAL_KEYS.values()):
        return None
    return Credentials(**values)


async def ensure_first_admin(path: Path) -> Credentials | None:
    """On a database without users, create `admin` and write its credentials to `path`.

    Returns the new credentials, or None when users already exist (the file is left alone).
    A credentials file left over from a wiped database is replaced: its token is dead anyway.
    """
    if await User.exists():
        return None
    creds = await create_account(FIRST_ADMIN, Role.ADMIN)
    write_credentials(path, creds)
    return creds


async def demo_token(path: Path) -> str | None:
    """A token for the demo producer: the credentials file's, else a fresh `demo` admin token."""
    creds = read_credentials(path)
    if creds and await user_for_token(creds.token):
        return creds.token
    admin = await User.filter(role=Role.ADMIN).order_by("id").first()
    if admin is None:
        return None
    await ApiToken.filter(user=admin, name="demo").delete()  # one live demo token, not one per run
    return await issue_token(admin, name="demo")


# -- account operations (each change audited, actor `cli:<os user>`) --------------------------

MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class UserRow(TypedDict):
    name: str
    role: str
    created_at: str
    tokens: int


class TokenRow(TypedDict):
    prefix: str
    name: str
    user: str
    created_at: str
    last_used_at: str | None


def cli_actor() -> str:
    """`cli:<os user>`: who ran the command, for audit rows."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return f"cli:uid-{os.getuid()}"


@asynccontextmanager
async def connected() -> AsyncIterator[None]:
    """Tortoise connected for one command, in a context of its own (not the process-global
    one): it works whether or not the process already has a connection (in-process callers,
    the tests), and closes only what it opened."""
    async with TortoiseContext() as ctx:
        await ctx.init(config=tortoise_config())
        yield


def check_password(password: str) -> str:
    """`password` if it is acceptable; a ValidationError naming the rule otherwise."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters "
                              f"long (got {len(password)})", details={"field": "password"})
    return password


async def _user(name: str) -> User:
    user = await User.get_or_none(name=name.strip())
    if user is None:
        raise NotFoundError(f"no user named {name.strip()!r} (see `observatory users list`)",
                            details={"field": "name"})
    return user


async def _refuse_last_admin(user: User, change: str) -> None:
    """Refuse `change` when `user` is the only admin left: nobody could manage users after.

    Call inside the transaction of the change: the admins are locked (FOR UPDATE on
    PostgreSQL; SQLite serialises writers), so two concurrent demotions cannot both pass.
    """
    admins = await User.filter(role=Role.ADMIN).select_for_update()
    if [a.id for a in admins] == [user.id]:
        raise ConflictError(f"{user.name!r} is the last admin: {change} would leave nobody "
                            "able to manage users; make another user admin first",
                            details={"field": "name"})


async def list_accounts() -> list[UserRow]:
    """Every user by name, with how many API tokens (dashboard sessions included) it holds."""
    users = await User.annotate(token_count=Count("tokens")).order_by("name")
    return [UserRow(name=u.name, role=u.role.value, created_at=u.created_at.isoformat(),
                    tokens=int(u.token_count)) for u in users]  # type: ignore[attr-defined]


async def change_role(name: str, role: Role, actor: str) -> Role:
    """Give the user `name` the role `role`; returns the role it had.

    Raises:
        NotFoundError: no such user.
        ConflictError: it is the last admin and `role` is not admin.
    """
    async with in_transaction():
        user = await _user(name)
        before = user.role
        if before == Role.ADMIN and role != Role.ADMIN:
            await _refuse_last_admin(user, f"making it {role.value}")
        if before != role:
            await User.filter(id=user.id).update(role=role)
            await audit.record(actor, "user.set_role", "user", user.name,
                               **{"from": before.value, "to": role.value})
    return before


async def delete_account(name: str, actor: str) -> int:
    """Delete the user `name` and its tokens (the audit rows it wrote stay); returns how many
    tokens went with it.

    Raises:
        NotFoundError: no such user.
        ConflictError: it is the last admin.
    """
    async with in_transaction():
        user = await _user(name)
        if user.role == Role.ADMIN:
            await _refuse_last_admin(user, "deleting it")
        tokens = await ApiToken.filter(user_id=user.id).count()
        await User.filter(id=user.id).delete()  # tokens cascade
        await audit.record(actor, "user.delete", "user", user.name, role=user.role.value,
                           tokens_revoked=tokens)
    return tokens


async def change_password(name: str, password: str, actor: str) -> int:
    """Set the user's password and sign it out of every browser; returns how many dashboard
    sessions ended (its API tokens keep working)."""
    check_password(password)
    async with in_transaction():
        user = await _user(name)
        await set_password(user, password)
        sessions = await revoke_session_tokens(user)
        await audit.record(actor, "user.set_password", "user", user.name,
                           sessions_revoked=sessions)
    return sessions


async def _describe(name: str) -> tuple[Role, int]:
    """The user's role and token count (what `delete` asks about)."""
    user = await _user(name)
    return user.role, await ApiToken.filter(user_id=user.id).count()


async def account_tokens(name: str) -> list[TokenRow]:
    """The user's API tokens, oldest first (the plain tokens are never stored)."""
    user = await _user(name)
    return [_token_row(t, user.name)
            for t in await ApiToken.filter(user_id=user.id).order_by("id")]


def _token_row(token: ApiToken, user: str) -> TokenRow:
    used = token.last_used_at.isoformat() if token.last_used_at else None
    return TokenRow(prefix=token.prefix, name=token.name, user=user,
                    created_at=token.created_at.isoformat(), last_used_at=used)


async def issue_account_token(name: str, token_name: str, actor: str) -> str:
    """A new API token for the user `name`, returned once (only its hash is stored)."""
    token_name = token_name.strip()
    if not token_name or len(token_name) > 100:
        raise ValidationError("token name must be 1 to 100 characters",
                              details={"field": "name"})
    async with in_transaction():
        user = await _user(name)
        token = await issue_token(user, name=token_name)
        await audit.record(actor, "token.issue", "api_token", token[:12], user=user.name,
                           name=token_name)
    return token


async def revoke_account_token(value: str, actor: str) -> TokenRow:
    """Revoke the token whose prefix (as `users tokens` shows it) or full value is `value`.

    Raises:
        NotFoundError: no token matches.
        ConflictError: several tokens share the prefix (revoke by the full token then).
    """
    value = value.strip()
    async with in_transaction():
        matches = await tokens_matching(value) if value else []
        if not matches:
            raise NotFoundError(f"no API token with prefix {value!r} (see `observatory users "
                                "tokens NAME`)", details={"field": "prefix"})
        if len(matches) > 1:
            owners = ", ".join(sorted({t.user.name for t in matches}))
            raise ConflictError(f"{len(matches)} tokens share the prefix {value!r} (users: "
                                f"{owners}); revoke with the full token",
                                details={"field": "prefix"})
        token = matches[0]
        row = _token_row(token, token.user.name)
        await ApiToken.filter(id=token.id).delete()
        await audit.record(actor, "token.revoke", "api_token", token.prefix,
                           user=token.user.name, name=token.name)
    return row


# -- the commands ---------------------------------------------------------------------------

Name = Annotated[str, typer.Argument(help="The user's name.", metavar="NAME", show_default=False)]


def role_option(value: str) -> Role:
    """A role argument: unknown ones are a usage error (exit 2) naming the allowed ones."""
    try:
        return parse_role(value)
    except ValidationError as exc:
        raise typer.BadParameter(exc.message) from exc


RoleArg = Annotated[Role, typer.Argument(parser=role_option, metavar="ROLE",
                                         help="admin | operator | viewer", show_default=False)]


@users_app.command("create")
def create_command(
    name: Name,
    role: Annotated[Role, typer.Option("--role", "-r", parser=role_option,
                                       help="admin | operator | viewer")] = Role.VIEWER,
    output: Annotated[str, typer.Option("--format", help="text | json")] = "text",
) -> None:
    """Create a user and print its password and API token (shown only once)."""
    if output not in ("text", "json"):
        raise typer.BadParameter(f"must be text or json (got {output!r})",
                                 param_hint="--format")
    creds = run(_create(name, role))
    if output == "json":
        typer.echo(json.dumps({**asdict(creds), "role": role.value}))
        return
    typer.echo(f"Created user {creds.name!r} with role {role.value}.")
    typer.echo(f"  password:  {creds.password}")
    typer.echo(f"  API token: {creds.token}")
    typer.echo("Store them now: neither is shown again.")


async def _create(name: str, role: Role) -> Credentials:
    async with connected():
        creds = await create_account(name, role)
        await audit.record(cli_actor(), "user.create", "user", creds.name, role=role.value)
        return creds


@users_app.command("list")
def list_command(output: FormatOption = Output.table) -> None:
    """List the users: name, role, created, how many API tokens."""
    rows = run(_with_db(list_accounts()))
    if output == Output.json:
        typer.echo(json.dumps({"users": rows}))
        return
    table = Table(title=f"Users ({len(rows)})")
    for column in ("Name", "Role", "Created (UTC)", "Tokens"):
        table.add_column(column, justify="right" if column == "Tokens" else "left")
    for row in rows:
        table.add_row(row["name"], row["role"], short_time(row["created_at"]), str(row["tokens"]))
    out().print(table)


@users_app.command("set-role")
def set_role_command(name: Name, role: RoleArg) -> None:
    """Change a user's role (the last admin cannot be demoted)."""
    before = run(_with_db(change_role(name, role, cli_actor())))
    if before == role:
        typer.echo(f"{name.strip()!r} already has role {role.value}; nothing changed.")
    else:
        typer.echo(f"{name.strip()!r}: role {before.value} → {role.value}.")


@users_app.command("delete")
def delete_command(
    name: Name,
    force: Annotated[bool, typer.Option("--force", "-f", help="Do not ask.")] = False,
) -> None:
    """Delete a user and its API tokens (the last admin cannot be deleted)."""
    if not force:
        role, count = run(_with_db(_describe(name)))
        typer.confirm(f"Delete user {name.strip()!r} ({role.value}) and its {count} API "
                      "token(s)?", abort=True)
    tokens = run(_with_db(delete_account(name, cli_actor())))
    typer.echo(f"Deleted user {name.strip()!r} and {tokens} API token(s).")


@users_app.command("passwd")
def passwd_command(
    name: Name,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the new password from the first line of stdin.")] = False,
) -> None:
    """Set a user's password (asked twice, hidden) and sign it out of the dashboard."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("New password", hide_input=True)
        if typer.prompt("Repeat it", hide_input=True) != password:
            raise fail("the two passwords differ; nothing changed")
    sessions = run(_with_db(change_password(name, password, cli_actor())))
    typer.echo(f"Password of {name.strip()!r} changed; {sessions} dashboard session(s) "
               "signed out.")


@users_app.command("tokens")
def tokens_command(name: Name, output: FormatOption = Output.table) -> None:
    """List a user's API tokens: prefix, name, created, last used."""
    rows = run(_with_db(account_tokens(name)))
    if output == Output.json:
        typer.echo(json.dumps({"tokens": rows}))
        return
    table = Table(title=f"API tokens of {name.strip()!r} ({len(rows)})")
    for column in ("Prefix", "Name", "Created (UTC)", "Last used (UTC)"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["prefix"], row["name"], short_time(row["created_at"]),
                      short_time(row["last_used_at"]) or "never")
    out().print(table)


@users_app.command("token-issue")
def token_issue_command(
    name: Name,
    token_name: Annotated[str, typer.Option("--name", help="What the token is for.")] = "cli",
) -> None:
    """Issue a new API token for a user and print it (shown only once)."""
    token = run(_with_db(issue_account_token(name, token_name, cli_actor())))
    typer.echo(token)
    typer.secho("Store it now: it is not shown again.", err=True)


@users_app.command("token-revoke")
def token_revoke_command(
    prefix: Annotated[str, typer.Argument(help="The token's prefix (`users tokens`) or the "
                                               "whole token.", metavar="PREFIX",
                                          show_default=False)],
) -> None:
    """Revoke one API token (it stops working at once)."""
    row = run(_with_db(revoke_account_token(prefix, cli_actor())))
    typer.echo(f"Revoked token {row['prefix']} ({row['name']!r}) of {row['user']!r}.")


async def _with_db(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` (an account operation) connected to the database."""
    async with connected():
        return await work
