"""`python -m core`: migrate the database; create, list and revoke projects and API keys;
remove expired artifacts and orphans (sweep)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from core import admin
from core.db import session_scope, utcnow
from core.settings import get_settings
from core.tables import ApiKey


def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(scopes) - set(admin.SCOPES))
    if not scopes or unknown:
        raise argparse.ArgumentTypeError(
            f"use a comma-separated list of {', '.join(admin.SCOPES)}, e.g. read,write"
        )
    return scopes


def _positive_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if days < 1:
        raise argparse.ArgumentTypeError("a whole number of days, at least 1")
    return days


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="bring the database schema up to date")
    sweep = commands.add_parser(
        "sweep",
        help="remove expired artifacts (MODELPRESS_RETENTION_DAYS), stored objects no row "
        "points to, and this machine's scratch folders of jobs that are not running; prints "
        "what it removed",
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="print what would be removed, remove nothing"
    )

    projects = commands.add_parser("projects", help="create, list and revoke projects")
    project_commands = projects.add_subparsers(dest="action", required=True)
    create_project = project_commands.add_parser("create", help="create a project")
    create_project.add_argument("name")
    project_commands.add_parser("list", help="list projects and their active keys")
    revoke_project = project_commands.add_parser(
        "revoke", help="revoke every key of a project (its data is kept)"
    )
    revoke_project.add_argument("project", metavar="NAME_OR_ID")

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="action", required=True)
    create_key = key_commands.add_parser(
        "create", help="create a key; the key is printed on stdout, this once only"
    )
    create_key.add_argument("--project", required=True, metavar="NAME_OR_ID")
    create_key.add_argument(
        "--scopes",
        type=_scopes,
        default=["read", "write"],
        help="comma-separated, default read,write. admin: manages its own project's keys; "
        "instance: manages projects and every project's keys (give it to operators only)",
    )
    create_key.add_argument("--expires-in-days", type=_positive_days, metavar="N")
    create_key.add_argument("--name", default="cli")
    list_keys = key_commands.add_parser("list", help="list keys (never the secrets)")
    list_keys.add_argument("--project", metavar="NAME_OR_ID")
    revoke_key = key_commands.add_parser("revoke", help="revoke a key")
    revoke_key.add_argument("key_id", metavar="KEY_ID")
    return parser


def _key_state(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
    if key.expires_at is not None:
        verb = "expired" if key.expires_at <= utcnow() else "expires"
        return f"{verb} {key.expires_at:%Y-%m-%d %H:%M}"
    return "active"


def _run(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """Does the command and returns what to print, (text, to stderr), once it is committed:
    nothing says a change happened (or prints a key) that the database did not keep."""
    out: list[tuple[str, bool]] = []
    with session_scope() as session:
        if args.command == "projects" and args.action == "create":
            project = admin.create_project(session, name=args.name)
            out.append((f"{project.id}\t{project.name}", False))
        elif args.command == "projects" and args.action == "list":
            counts = admin.active_key_counts(session)
            for project in admin.list_projects(session):
                active = counts.get(project.id, 0)
                out.append((f"{project.id}\t{project.name}\t{active} active key(s)", False))
        elif args.command == "projects" and args.action == "revoke":
            project = admin.find_project(session, args.project)
            revoked = admin.revoke_project(session, project)
            out.append((f"revoked {revoked} key(s) of project {project.name!r}", True))
        elif args.command == "keys" and args.action == "create":
            project = admin.find_project(session, args.project)
            expires_at = None
            if args.expires_in_days:
                expires_at = utcnow() + timedelta(days=args.expires_in_days)
            row, plain = admin.create_key(
                session,
                project_id=project.id,
                name=args.name,
                scopes=args.scopes,
                expires_at=expires_at,
            )
            out.append(
                (
                    f"created key {row.id} for project {project.name!r} "
                    f"(scopes {','.join(row.scopes)}, {_key_state(row)}); "
                    "it is shown only now:",
                    True,
                )
            )
            out.append((plain, False))
        elif args.command == "keys" and args.action == "list":
            project_id = admin.find_project(session, args.project).id if args.project else None
            for key in admin.list_keys(session, project_id=project_id):
                out.append(
                    (
                        f"{key.id}\t{key.project_id}\t{key.name}\t{key.display_prefix}…\t"
                        f"{','.join(key.scopes)}\t{_key_state(key)}",
                        False,
                    )
                )
        elif args.command == "keys" and args.action == "revoke":
            row = admin.revoke_key(session, args.key_id)
            out.append((f"key {row.id} revoked", True))
    return out


def _sweep(*, dry_run: bool) -> int:
    from core.maintenance import run_maintenance
    from core.storage import StorageError, get_storage

    try:
        report = run_maintenance(settings=get_settings(), storage=get_storage(), dry_run=dry_run)
    except (SQLAlchemyError, StorageError) as exc:
        print(f"error: the sweep stopped: {exc}", file=sys.stderr)
        return 1
    lines = report.lines(dry_run=dry_run)
    for line in lines:
        print(line)
    print(f"{len(lines)} item(s) {'to remove' if dry_run else 'removed'}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "migrate":
        from core.migrate import upgrade  # Alembic is loaded only for this command

        upgrade(get_settings().resolved_database_url)
        print("database is up to date", file=sys.stderr)
        return 0
    if args.command == "sweep":
        return _sweep(dry_run=args.dry_run)
    try:
        output = _run(args)
    except admin.AdminError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        print(f"error: the database did not save the change: {reason}", file=sys.stderr)
        return 1
    for text, to_stderr in output:
        print(text, file=sys.stderr if to_stderr else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
