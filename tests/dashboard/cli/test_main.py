"""`observatory migrate` and the command tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from dashboard.cli.main import app

REPO_ROOT = Path(__file__).resolve().parents[3]


def cli_env(**overrides: str) -> dict[str, str]:
    """The test session's environment (read now: the session fixture sets it after import).

    PYTHONPATH lets the console script import the packages whatever the install mode.
    """
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **overrides}


OBSERVATORY = str(Path(sys.executable).parent / "observatory")


def test_migrate_applies_pending_migrations_then_reports_up_to_date(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=f"sqlite://{tmp_path / 'fresh.db'}")

    first = subprocess.run([OBSERVATORY, "migrate"], capture_output=True, text=True, env=env,
                           timeout=60)
    second = subprocess.run([OBSERVATORY, "migrate"], capture_output=True, text=True, env=env,
                            timeout=60)

    assert first.returncode == 0, first.stderr
    assert "Applied migration models.0001_initial" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


def test_migrate_on_an_unreachable_database_is_a_one_line_error(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL="postgres://nobody:x@127.0.0.1:1/none")

    result = subprocess.run([OBSERVATORY, "migrate"], capture_output=True, text=True, env=env,
                            timeout=60)

    assert result.returncode == 1
    assert result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr


def test_help_lists_up_migrate_and_users() -> None:
    result = CliRunner().invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in ("up", "migrate", "users"):
        assert command in result.output
