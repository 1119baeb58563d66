"""The `observatory` typer app; `main()` is the console script."""

from __future__ import annotations

import importlib

import typer

from dashboard.cli import apply_migrations, report_migrations, run
from dashboard.cli.up import up_command
from dashboard.cli.users import users_app

app = typer.Typer(
    name="observatory",
    help="Observatory: webhook deliveries, background jobs and their operator dashboard.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would print tokens and passwords
)
app.add_typer(users_app, name="users")
app.command("up")(up_command)

# REST-client command groups written alongside this module (e.g. dashboard/cli/dlq.py with a
# `app` typer), registered when present so each can land on its own.
for _group in ("dlq", "ops", "endpoints", "cron", "agents"):
    try:
        _module = importlib.import_module(f"dashboard.cli.{_group}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"dashboard.cli.{_group}":
            raise
    else:
        app.add_typer(_module.app, name=_group)


@app.command("migrate")
def migrate_command() -> None:
    """Apply pending database migrations (DATABASE_URL, or SQLite in OBSERVATORY_DATA_DIR)."""
    report_migrations(run(apply_migrations()))


def main() -> None:
    """Entry point of the `observatory` console script."""
    app()


if __name__ == "__main__":
    main()
