"""`observatory users …` (accounts, roles, passwords, tokens; each change audited) and the
first admin's credentials file."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from dashboard.cli.main import app
from dashboard.cli.users import (Credentials, change_role, create_account, demo_token,
                                 ensure_first_admin, parse_role, read_credentials,
                                 write_credentials)
from jobs.errors import ConflictError, ValidationError
from models.audit import AuditLog
from models.auth import SESSION_TOKEN_NAME, authenticate, issue_token, user_for_token
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


def test_cli_users_create_bad_role_is_a_usage_error_before_touching_the_database() -> None:
    result = CliRunner().invoke(app, ["users", "create", "erin", "--role", "root"],
                                env={"COLUMNS": "200"})

    assert result.exit_code == 2
    assert "role must be one of admin, operator, viewer (got 'root')" in result.output


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


# -- account management: the commands in-process (CliRunner) against the test database ------

ACTOR = f"cli:{getpass.getuser()}"


async def users(*args: str, input: str | None = None) -> Result:
    """`observatory users ARGS` through CliRunner, in a thread: the command runs its own event
    loop and database connection, as it does in a terminal."""
    return await asyncio.to_thread(CliRunner().invoke, app, ["users", *args], input=input,
                                   env={"COLUMNS": "200"})


async def audit_rows() -> list[tuple[str, str, str, str, dict]]:
    return [(r.actor, r.action, r.target_type, r.target_id, r.details)
            for r in await AuditLog.all().order_by("id")]


async def role_of(name: str) -> Role:
    return (await User.get(name=name)).role


async def test_list_shows_every_user_with_role_and_token_count(db: str) -> None:
    await create_account("zoe", Role.VIEWER)
    alice = await create_account("alice", Role.ADMIN)
    await issue_token(await User.get(name="alice"), "ci")

    table = await users("list")
    as_json = await users("list", "--format", "json")

    assert table.exit_code == 0, table.output
    lines = [line for line in table.output.splitlines() if "alice" in line or "zoe" in line]
    assert "alice" in lines[0] and "admin" in lines[0] and lines[0].rstrip(" │").endswith("2")
    assert "zoe" in lines[1] and "viewer" in lines[1]
    listed = json.loads(as_json.output)["users"]
    assert [(u["name"], u["role"], u["tokens"]) for u in listed] == [("alice", "admin", 2),
                                                                     ("zoe", "viewer", 1)]
    assert alice.token not in table.output + as_json.output
    assert await audit_rows() == []  # reads are not audited
    assert (await users("list", "--format", "yaml")).exit_code == 2


async def test_set_role_changes_the_role_and_audits_it(db: str) -> None:
    await create_account("root", Role.ADMIN)
    await create_account("bob", Role.VIEWER)

    result = await users("set-role", "bob", "Operator")

    assert result.exit_code == 0, result.output
    assert "viewer → operator" in result.output
    assert await role_of("bob") == Role.OPERATOR
    assert await audit_rows() == [(ACTOR, "user.set_role", "user", "bob",
                                   {"from": "viewer", "to": "operator"})]


async def test_set_role_refuses_bad_input_and_changes_nothing(db: str) -> None:
    await create_account("bob", Role.VIEWER)

    unknown_role = await users("set-role", "bob", "root")
    unknown_user = await users("set-role", "nobody", "admin")
    missing = await users("set-role", "bob")

    assert unknown_role.exit_code == 2 and "role must be one of" in unknown_role.output
    assert unknown_user.exit_code == 1
    assert "Error: no user named 'nobody'" in unknown_user.output
    assert missing.exit_code == 2
    assert await role_of("bob") == Role.VIEWER and await audit_rows() == []


async def test_the_last_admin_cannot_be_demoted_until_another_admin_exists(db: str) -> None:
    await create_account("root", Role.ADMIN)
    await create_account("bob", Role.OPERATOR)

    refused = await users("set-role", "root", "operator")
    assert refused.exit_code == 1
    assert "'root' is the last admin" in refused.output
    assert await role_of("root") == Role.ADMIN and await audit_rows() == []

    assert (await users("set-role", "bob", "admin")).exit_code == 0
    assert (await users("set-role", "root", "viewer")).exit_code == 0
    assert await role_of("root") == Role.VIEWER


async def test_two_concurrent_demotions_leave_one_admin(db: str) -> None:
    await create_account("a", Role.ADMIN)
    await create_account("b", Role.ADMIN)

    results = await asyncio.gather(change_role("a", Role.VIEWER, "t"),
                                   change_role("b", Role.VIEWER, "t"), return_exceptions=True)

    assert sum(isinstance(r, ConflictError) for r in results) == 1
    assert await User.filter(role=Role.ADMIN).count() == 1
    assert await AuditLog.filter(action="user.set_role").count() == 1


async def test_delete_asks_first_and_removes_the_user_and_its_tokens(db: str) -> None:
    await create_account("root", Role.ADMIN)
    bob = await create_account("bob", Role.OPERATOR)

    declined = await users("delete", "bob", input="n\n")
    assert declined.exit_code == 1 and "Delete user 'bob' (operator)" in declined.output
    assert await User.exists(name="bob") and await audit_rows() == []

    confirmed = await users("delete", "bob", input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert not await User.exists(name="bob")
    assert await user_for_token(bob.token) is None
    assert await audit_rows() == [(ACTOR, "user.delete", "user", "bob",
                                   {"role": "operator", "tokens_revoked": 1})]


async def test_delete_force_does_not_ask_but_the_last_admin_stays(db: str) -> None:
    await create_account("root", Role.ADMIN)
    await create_account("carol", Role.VIEWER)

    assert (await users("delete", "carol", "--force")).exit_code == 0
    refused = await users("delete", "root", "--force")
    gone = await users("delete", "carol", "--force")

    assert refused.exit_code == 1 and "'root' is the last admin" in refused.output
    assert gone.exit_code == 1 and "no user named 'carol'" in gone.output
    assert await User.exists(name="root")
    assert [row[1] for row in await audit_rows()] == ["user.delete"]


async def test_passwd_prompts_twice_hidden_and_signs_out_dashboard_sessions(db: str) -> None:
    bob = await create_account("bob", Role.OPERATOR)
    session = await issue_token(await User.get(name="bob"), SESSION_TOKEN_NAME)

    result = await users("passwd", "bob", input="s3cret-horse\ns3cret-horse\n")

    assert result.exit_code == 0, result.output
    assert "s3cret-horse" not in result.output  # hidden input is not echoed
    assert await authenticate("bob", "s3cret-horse") is not None
    assert await authenticate("bob", bob.password) is None
    assert await user_for_token(session) is None  # browsers signed out
    assert await user_for_token(bob.token) is not None  # API tokens keep working
    assert await audit_rows() == [(ACTOR, "user.set_password", "user", "bob",
                                   {"sessions_revoked": 1})]


async def test_passwd_refuses_a_mismatch_or_a_short_password(db: str) -> None:
    bob = await create_account("bob", Role.OPERATOR)

    mismatch = await users("passwd", "bob", input="s3cret-horse\ns3cret-house\n")
    short = await users("passwd", "bob", "--password-stdin", input="short\n")

    assert mismatch.exit_code == 1 and "the two passwords differ" in mismatch.output
    assert short.exit_code == 1 and "password must be 8 to 1024 characters" in short.output
    assert await authenticate("bob", bob.password) is not None and await audit_rows() == []


async def test_passwd_reads_one_line_of_stdin(db: str) -> None:
    await create_account("bob", Role.OPERATOR)

    result = await users("passwd", "bob", "--password-stdin", input="from a pipe\nignored\n")

    assert result.exit_code == 0, result.output
    assert await authenticate("bob", "from a pipe") is not None


async def test_token_issue_prints_a_working_token_once_and_tokens_lists_it(db: str) -> None:
    await create_account("bob", Role.OPERATOR)

    issued = await users("token-issue", "bob", "--name", "deploy bot")

    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip()
    user = await user_for_token(token)  # also stamps its last use
    assert user is not None and user.name == "bob"
    listed = json.loads((await users("tokens", "bob", "--format", "json")).stdout)["tokens"]
    assert [(t["prefix"], t["name"]) for t in listed][1] == (token[:12], "deploy bot")
    assert listed[0]["last_used_at"] is None and listed[1]["last_used_at"] is not None
    table = (await users("tokens", "bob")).output
    assert token[:12] in table and "deploy bot" in table and "never" in table
    assert token not in table
    assert await audit_rows() == [(ACTOR, "token.issue", "api_token", token[:12],
                                   {"user": "bob", "name": "deploy bot"})]
    assert (await users("token-issue", "nobody")).exit_code == 1
    assert (await users("tokens", "nobody")).exit_code == 1


async def test_token_revoke_by_prefix_stops_the_token_at_once(db: str) -> None:
    bob = await create_account("bob", Role.OPERATOR)

    result = await users("token-revoke", bob.token[:12])

    assert result.exit_code == 0, result.output
    assert f"Revoked token {bob.token[:12]} ('default') of 'bob'" in result.output
    assert await user_for_token(bob.token) is None
    assert await audit_rows() == [(ACTOR, "token.revoke", "api_token", bob.token[:12],
                                   {"user": "bob", "name": "default"})]
    again = await users("token-revoke", bob.token[:12])
    assert again.exit_code == 1 and "no API token with prefix" in again.output


async def test_token_revoke_of_a_shared_prefix_needs_the_whole_token(db: str) -> None:
    bob = await create_account("bob", Role.OPERATOR)
    carol = await create_account("carol", Role.VIEWER)
    await ApiToken.filter(prefix=carol.token[:12]).update(prefix=bob.token[:12])

    ambiguous = await users("token-revoke", bob.token[:12])
    assert ambiguous.exit_code == 1 and "2 tokens share the prefix" in ambiguous.output
    assert await user_for_token(bob.token) and await user_for_token(carol.token)

    assert (await users("token-revoke", carol.token)).exit_code == 0
    assert await user_for_token(carol.token) is None
    assert await user_for_token(bob.token) is not None


async def test_users_create_is_audited(db: str) -> None:
    result = await users("create", "dora", "--role", "operator", "--format", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["role"] == "operator"
    assert await audit_rows() == [(ACTOR, "user.create", "user", "dora", {"role": "operator"})]
