"""/v1/projects and /v1/keys: projects and their API keys. An `admin` key manages the keys of
its own project; projects, and the keys of other projects, need the `instance` scope."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api import key_rules
from api.deps import AdminKey, InstanceKey, SessionDep
from api.schemas import KeyCreated, KeyOut, ProjectOut
from core import admin

router = APIRouter(tags=["keys"])


class ProjectCreate(BaseModel):
    name: str = Field(
        min_length=1, max_length=admin.PROJECT_NAME_MAX, pattern=admin.PROJECT_NAME_PATTERN
    )


class KeyCreate(BaseModel):
    project_id: str
    name: str = Field(min_length=1, max_length=admin.KEY_NAME_MAX)
    scopes: list[Literal["read", "write", "admin", "instance"]] = Field(
        ["read", "write"], min_length=1
    )
    expires_at: datetime | None = Field(
        None, description="When the key stops working; with a time zone, in the future."
    )


@router.post("/v1/projects", status_code=201, response_model=ProjectOut)
def create_project(body: ProjectCreate, key: InstanceKey, session: SessionDep) -> ProjectOut:
    project = admin.create_project(session, name=body.name)
    return ProjectOut.of(project, active_keys=0)


@router.get("/v1/projects", response_model=list[ProjectOut])
def list_projects(key: AdminKey, session: SessionDep) -> list[ProjectOut]:
    """Every project for an `instance` key; an `admin` key sees its own project only."""
    counts = admin.active_key_counts(session)
    projects = admin.list_projects(session)
    if not key_rules.is_instance(key):
        projects = [p for p in projects if p.id == key.project_id]
    return [ProjectOut.of(p, active_keys=counts.get(p.id, 0)) for p in projects]


@router.delete(
    "/v1/projects/{project_id}",
    response_model=ProjectOut,
    responses={409: {"description": "The project of the key making the request"}},
)
def revoke_project(project_id: str, key: InstanceKey, session: SessionDep) -> ProjectOut:
    """Revoke every key of the project; its models, datasets, jobs and artifacts are kept."""
    project = admin.find_project(session, project_id)
    key_rules.check_project_revocation(key, project)
    admin.revoke_project(session, project)
    return ProjectOut.of(project, active_keys=0)


@router.post("/v1/keys", status_code=201, response_model=KeyCreated)
def create_api_key(body: KeyCreate, key: AdminKey, session: SessionDep) -> KeyCreated:
    """An `admin` key creates keys for its own project, with any scope but `instance`."""
    key_rules.check_key_creation(key, project_id=body.project_id, scopes=body.scopes)
    row, plain = admin.create_key(
        session,
        project_id=body.project_id,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
    )
    return KeyCreated(**KeyOut.of(row).model_dump(), key=plain)


@router.get("/v1/keys", response_model=list[KeyOut])
def list_api_keys(
    key: AdminKey, session: SessionDep, project_id: str | None = None
) -> list[KeyOut]:
    """Every project's keys for an `instance` key; an `admin` key sees its own project's."""
    project_id = key_rules.listed_keys_project(key, project_id)
    return [KeyOut.of(k) for k in admin.list_keys(session, project_id=project_id)]


@router.delete("/v1/keys/{key_id}", response_model=KeyOut)
def revoke_api_key(key_id: str, key: AdminKey, session: SessionDep) -> KeyOut:
    row = admin.find_key(session, key_id)
    key_rules.check_key_revocation(key, row)
    return KeyOut.of(admin.revoke_key(session, row.id))
