"""`modelpress --help` and each group's help: every command says what it does."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from modelpress.cli import app


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every command under a group, by its full name (typer's click groups and commands)."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        found[prefix + name] = command
        if hasattr(command, "commands"):
            found |= _commands(command, prefix + name + " ")
    return found


def test_every_command_has_a_help_line_in_its_groups_listing() -> None:
    commands = _commands(typer.main.get_command(app))
    assert {"batches list", "jobs list", "models show", "keys revoke"} <= commands.keys()
    assert [name for name, command in commands.items() if not (command.help or "").strip()] == []

    # A docstring's line breaks do not break the listing's sentences.
    listing = CliRunner().invoke(app, ["jobs", "--help"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0
    assert "Refused (exit 5) while it is unfinished: cancel it first." in listing.output
