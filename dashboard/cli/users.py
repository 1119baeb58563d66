"""`observatory users`: operator accounts, and the first admin's credentials file."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import typer
from tortoise.exceptions import IntegrityError

from dashboard.cli import database, fail, run
from jobs.errors import ConflictError, ValidationError
from models.auth import create_user, issue_token, user_for_token
from models.config import get_settings
from models.enums import Role
from models.users import ApiToken, User

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


@users_app.command("create")
def create_command(
    name: str = typer.Argument(..., help="Unique user name."),
    role: str = typer.Option("viewer", "--role", "-r", help="admin | operator | viewer"),
    output: str = typer.Option("text", "--format", help="text | json"),
) -> None:
    """Create a user and print its password and API token (shown only once)."""
    if output not in ("text", "json"):
        raise fail(f"--format must be text or json (got {output!r})")
    creds = run(_create(name, role))
    if output == "json":
        typer.echo(json.dumps({**asdict(creds), "role": parse_role(role).value}))
        return
    typer.echo(f"Created user {creds.name!r} with role {parse_role(role).value}.")
    typer.echo(f"  password:  {creds.password}")
    typer.echo(f"  API token: {creds.token}")
    typer.echo("Store them now: neither is shown again.")


async def _create(name: str, role: str) -> Credentials:
    parsed = parse_role(role)  # before touching the database
    async with database():
        return await create_account(name, parsed)
