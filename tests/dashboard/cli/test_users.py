"""`observatory users create` and the first admin's credentials file."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dashboard.cli.main import app
from dashboard.cli.users import (Credentials, create_account, demo_token, ensure_first_admin,
                                 parse_role, read_credentials, write_credentials)
from jobs.errors import ConflictError, ValidationError
from models.auth import authenticate, user_for_token
from models.enums import Role
from models.users import ApiToken, User

REPO_ROOT = Path(__file__).resolve().parents[3]


def cli_env(**overrides: str) -> dict[str, str]:
    """The test session's environment (read now: the session fixture sets it after import).

    PYTHONPATH lets the console script import the packages whatever the install mode.
    """
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **overrides}


OBSERVATORY = [str(Path(sys.executable).parent / "observatory")]  # the console script


def observatory(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (it runs asyncio.run and opens the test DB itself)."""
    return subprocess.run([*OBSERVATORY, *args], capture_output=True, text=True, timeout=60,
                          env=cli_env())


async def test_create_account_returns_a_working_token_and_password(db: str) -> None:
    creds = await create_account("alice", "operator")

    user = await user_for_token(creds.token)
    assert user is not None and user.name == "alice" and user.role == Role.OPERATOR
    assert await authenticate("alice", creds.password) is not None


async def test_create_account_refuses_a_duplicate_name(db: str) -> None:
    await create_account("alice", Role.VIEWER)
    with pytest.raises(ConflictError, match="already exists"):
        await create_account("alice", Role.ADMIN)
    assert await User.filter(name="alice").count() == 1


async def test_create_account_refuses_an_unknown_role(db: str) -> None:
    with pytest.raises(ValidationError, match="admin, operator, viewer"):
        await create_account("bob", "superuser")
    assert not await User.exists(name="bob")


def test_parse_role_accepts_any_case() -> None:
    assert parse_role(" Admin ") is Role.ADMIN


async def test_cli_users_create_prints_the_token_of_a_user_in_the_database(db: str) -> None:
    result = await asyncio.to_thread(observatory, "users", "create", "carol", "--role", "admin")

    assert result.returncode == 0, result.stderr
    token = next(line.split(":", 1)[1].strip() for line in result.stdout.splitlines()
                 if "API token:" in line)
    user = await user_for_token(token)
    assert user is not None and user.name == "carol" and user.role == Role.ADMIN


async def test_cli_users_create_duplicate_exits_1_with_error_message(db: str) -> None:
    await create_account("dave", Role.VIEWER)

    result = await asyncio.to_thread(observatory, "users", "create", "dave", "--role", "viewer")

    assert result.returncode == 1
    assert result.stderr.strip() == "Error: a user named 'dave' already exists"
    assert "Traceback" not in result.stderr


def test_cli_users_create_bad_role_exits_1_before_touching_the_database() -> None:
    result = CliRunner().invoke(app, ["users", "create", "erin", "--role", "root"])

    assert result.exit_code == 1
    assert "Error: role must be one of admin, operator, viewer (got 'root')" in result.output


async def test_first_start_creates_admin_and_a_mode_600_credentials_file(
        db: str, tmp_path: Path) -> None:
    path = tmp_path / "data" / "credentials"

    creds = await ensure_first_admin(path)

    assert creds is not None and creds.name == "admin"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_credentials(path) == creds
    admin = await user_for_token(creds.token)
    assert admin is not None and admin.role == Role.ADMIN


async def test_second_start_leaves_the_credentials_file_alone(db: str, tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    await ensure_first_admin(path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    assert await ensure_first_admin(path) is None

    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert await User.all().count() == 1


async def test_no_admin_is_created_when_users_exist(db: str, tmp_path: Path) -> None:
    await create_account("frank", Role.OPERATOR)

    assert await ensure_first_admin(tmp_path / "credentials") is None
    assert not (tmp_path / "credentials").exists()


def test_credentials_file_is_created_600_without_chmod(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file must be created with its mode, not chmod-ed")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old_umask = os.umask(0o022)
    try:
        write_credentials(tmp_path / "credentials", Credentials("admin", "pw", "obs_tok"))
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE((tmp_path / "credentials").stat().st_mode) == 0o600
    assert read_credentials(tmp_path / "credentials") == Credentials("admin", "pw", "obs_tok")


async def test_demo_token_is_the_credentials_files_token(db: str, tmp_path: Path) -> None:
    creds = await ensure_first_admin(tmp_path / "credentials")
    assert creds is not None
    assert await demo_token(tmp_path / "credentials") == creds.token


async def test_demo_token_without_credentials_file_reuses_one_demo_token(
        db: str, tmp_path: Path) -> None:
    await create_account("root", Role.ADMIN)

    first = await demo_token(tmp_path / "missing")
    second = await demo_token(tmp_path / "missing")

    assert first and second and first != second
    assert await user_for_token(first) is None  # the previous demo token is revoked
    assert (await user_for_token(second)).name == "root"  # type: ignore[union-attr]
    assert await ApiToken.filter(name="demo").count() == 1
