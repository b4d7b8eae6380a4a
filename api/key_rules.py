"""Who may manage which projects and keys: an `admin` key its own project's keys, an
`instance` key every project and every key. The API's key routes and the dashboard's admin
pages both ask here, so the two can never disagree."""

from __future__ import annotations

from collections.abc import Collection

from api.deps import held_scopes
from api.errors import Problem
from core.admin import AdminError
from core.tables import ApiKey, Project


def is_instance(key: ApiKey) -> bool:
    return "instance" in held_scopes(key)


def needs_instance(what: str) -> Problem:
    return Problem(403, f"{what} needs an API key with the 'instance' scope", type="forbidden")


def check_key_creation(key: ApiKey, *, project_id: str, scopes: Collection[str]) -> None:
    """An `admin` key creates keys for its own project, with any scope but `instance`."""
    if project_id != key.project_id and not is_instance(key):
        raise needs_instance("creating a key for another project")
    if "instance" in scopes and not is_instance(key):
        raise needs_instance("granting the 'instance' scope")


def listed_keys_project(key: ApiKey, project_id: str | None) -> str | None:
    """The project whose keys `key` may list when it asks for `project_id` (None: every
    project, for an `instance` key only)."""
    if is_instance(key):
        return project_id
    if project_id not in (None, key.project_id):
        raise needs_instance("listing another project's keys")
    return key.project_id


def check_key_revocation(key: ApiKey, row: ApiKey) -> None:
    if is_instance(key):
        return
    if row.project_id != key.project_id:  # as if it did not exist, like any resource
        raise AdminError("not_found", f"key {row.id!r} was not found")
    if "instance" in row.scopes:
        raise needs_instance("revoking a key with the 'instance' scope")


def check_project_revocation(key: ApiKey, project: Project) -> None:
    if not is_instance(key):
        raise needs_instance("revoking a project")
    if project.id == key.project_id:
        # Over HTTP this would lock the caller out mid-request; the CLI can still do it.
        raise Problem(
            409,
            "this is the project of the key making the request; revoke it with another "
            "project's instance key or with `python -m core projects revoke`",
            type="own_project",
        )
