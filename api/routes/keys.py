"""/v1/projects and /v1/keys: admin-only management of projects and their API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.deps import AdminKey, SessionDep
from api.errors import Problem, not_found
from api.schemas import KeyCreated, KeyOut, ProjectOut
from core.bootstrap import create_key
from core.db import new_id, utcnow
from core.models import ApiKey, Project

router = APIRouter(tags=["keys"])


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$")


class KeyCreate(BaseModel):
    project_id: str
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Literal["read", "write", "admin"]] = Field(["read", "write"], min_length=1)
    expires_at: datetime | None = None


@router.post("/v1/projects", status_code=201, response_model=ProjectOut)
def create_project(body: ProjectCreate, key: AdminKey, session: SessionDep) -> ProjectOut:
    project = Project(id=new_id("prj"), name=body.name)
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        raise Problem(409, f"a project named {body.name!r} exists", type="project-exists") from None
    return ProjectOut.of(project)


@router.get("/v1/projects", response_model=list[ProjectOut])
def list_projects(key: AdminKey, session: SessionDep) -> list[ProjectOut]:
    return [ProjectOut.of(p) for p in session.scalars(select(Project).order_by(Project.name))]


@router.post("/v1/keys", status_code=201, response_model=KeyCreated)
def create_api_key(body: KeyCreate, key: AdminKey, session: SessionDep) -> KeyCreated:
    if session.get(Project, body.project_id) is None:
        raise not_found("project", body.project_id)
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise Problem(
            422, "expires_at needs a time zone (e.g. a trailing Z)", type="invalid-request"
        )
    row, plain = create_key(
        session, project_id=body.project_id, name=body.name, scopes=list(body.scopes)
    )
    row.expires_at = body.expires_at
    session.flush()
    return KeyCreated(**KeyOut.of(row).model_dump(), key=plain)


@router.get("/v1/keys", response_model=list[KeyOut])
def list_api_keys(key: AdminKey, session: SessionDep) -> list[KeyOut]:
    return [KeyOut.of(k) for k in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]


@router.delete("/v1/keys/{key_id}", response_model=KeyOut)
def revoke_api_key(key_id: str, key: AdminKey, session: SessionDep) -> KeyOut:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise not_found("key", key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return KeyOut.of(row)
