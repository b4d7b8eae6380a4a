"""Projects and API keys for admins: an `admin` key manages its own project's keys, an
`instance` key every project (the rules are the API's, `api.key_rules`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from api import key_rules
from api.deps import SessionDep
from api.errors import Problem, answered_as, library_problem
from api.schemas import KeyOut
from core import admin
from core.db import utcnow
from core.tables import ApiKey, Project
from web import sessions
from web.auth import Admin, AdminViewer, SignedIn
from web.templating import render

router = APIRouter(include_in_schema=False)

#: A page that shows a new key must not be kept by the browser or a proxy.
_NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True)
class KeyRow:
    key: KeyOut
    state: str  # active, revoked, expired
    is_yours: bool
    may_revoke: bool


@dataclass(frozen=True)
class ProjectRow:
    project: Project
    active_keys: int
    is_yours: bool


@dataclass
class KeyForm:
    """What the create-key form was sent with, shown again beside its error."""

    name: str = ""
    scopes: tuple[str, ...] = ("read", "write")
    expires_at: str = ""
    error: str | None = None


def _key_state(row: ApiKey, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def _may_revoke(viewer: SignedIn, row: ApiKey) -> bool:
    try:
        key_rules.check_key_revocation(viewer.key, row)
    except (Problem, admin.AdminError):
        return False
    return row.revoked_at is None


def _chosen_project(session: Session, viewer: SignedIn, project_id: str | None) -> Project:
    """The project whose keys the page shows: one's own, or for an `instance` key any."""
    wanted = key_rules.listed_keys_project(viewer.key, project_id or viewer.project_id)
    project = session.get(Project, wanted or viewer.project_id)
    if project is None:
        raise Problem(404, f"project {project_id!r} was not found", type="not_found")
    return project


def _admin_page(
    request: Request,
    *,
    session: Session,
    viewer: SignedIn,
    project: Project,
    form: KeyForm | None = None,
    new_key: str | None = None,
    notice: str | None = None,
    project_error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    now = utcnow()
    keys = [
        KeyRow(
            key=KeyOut.of(row),
            state=_key_state(row, now),
            is_yours=row.id == viewer.key.id,
            may_revoke=_may_revoke(viewer, row),
        )
        for row in admin.list_keys(session, project_id=project.id)
    ]
    instance = key_rules.is_instance(viewer.key)
    projects: list[ProjectRow] = []
    if instance:
        counts = admin.active_key_counts(session)
        projects = [
            ProjectRow(
                project=p, active_keys=counts.get(p.id, 0), is_yours=p.id == viewer.project_id
            )
            for p in admin.list_projects(session)
        ]
    return render(
        request,
        "admin/index.html",
        viewer=viewer,
        status_code=status_code,
        headers=_NO_STORE if new_key else None,
        nav="admin",
        is_instance=instance,
        project=project,
        projects=projects,
        keys=keys,
        grantable=[s for s in admin.SCOPES if s != "instance" or instance],
        form=form or KeyForm(),
        new_key=new_key,
        notice=notice,
        project_error=project_error,
    )


@router.get("/admin", response_class=HTMLResponse)
def admin_page(
    request: Request,
    viewer: AdminViewer,
    session: SessionDep,
    project: str | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    notices = {
        "key_revoked": "The key is revoked: requests with it are refused from now on.",
        "project_created": "The project is created. Create its first key below.",
        "project_revoked": "Every key of the project is revoked; its data is kept.",
    }
    return _admin_page(
        request,
        session=session,
        viewer=viewer,
        project=_chosen_project(session, viewer, project),
        notice=notices.get(notice or ""),
    )


def _expiry(value: str) -> datetime | None:
    """The form's `datetime-local` value, read as UTC (the page says so)."""
    if not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise admin.AdminError("invalid", "the expiry is not a date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment <= utcnow():
        raise admin.AdminError("invalid", "the expiry is in the past")
    return moment


@router.post("/admin/keys", response_class=HTMLResponse)
def create_key(
    request: Request,
    viewer: Admin,
    session: SessionDep,
    project_id: Annotated[str, Form(max_length=40)],
    name: Annotated[str, Form(max_length=admin.KEY_NAME_MAX)] = "",
    scopes: Annotated[list[str] | None, Form()] = None,
    expires_at: Annotated[str, Form(max_length=40)] = "",
) -> HTMLResponse:
    project = _chosen_project(session, viewer, project_id)
    chosen = scopes or []
    form = KeyForm(name=name, scopes=tuple(chosen), expires_at=expires_at)
    try:
        if not name.strip():
            raise admin.AdminError("invalid", "give the key a name (who or what will use it)")
        if not chosen:
            raise admin.AdminError("invalid", "choose at least one scope")
        key_rules.check_key_creation(viewer.key, project_id=project.id, scopes=chosen)
        row, plain = admin.create_key(
            session,
            project_id=project.id,
            name=name.strip(),
            scopes=chosen,
            expires_at=_expiry(expires_at),
        )
    except (admin.AdminError, Problem) as exc:
        problem = exc if isinstance(exc, Problem) else library_problem(exc)
        form.error = problem.detail
        return _admin_page(
            request,
            session=session,
            viewer=viewer,
            project=project,
            form=form,
            status_code=problem.status,
        )
    return _admin_page(
        request,
        session=session,
        viewer=viewer,
        project=project,
        new_key=plain,
        notice=f"Key {row.name!r} is created.",
        status_code=201,
    )


def _revocable_key(session: Session, viewer: SignedIn, key_id: str) -> ApiKey:
    # A library error is a problem here, so that a dashboard path answers with its error page.
    with answered_as():
        row = admin.find_key(session, key_id)
        key_rules.check_key_revocation(viewer.key, row)
    return row


@router.get("/admin/keys/{key_id}/revoke", response_class=HTMLResponse)
def confirm_key_revocation(
    request: Request, key_id: str, viewer: AdminViewer, session: SessionDep
) -> HTMLResponse:
    row = _revocable_key(session, viewer, key_id)
    return render(
        request,
        "admin/revoke_key.html",
        viewer=viewer,
        nav="admin",
        key=KeyOut.of(row),
        is_yours=row.id == viewer.key.id,
    )


@router.post("/admin/keys/{key_id}/revoke")
def revoke_key(key_id: str, viewer: Admin, session: SessionDep) -> Response:
    row = _revocable_key(session, viewer, key_id)
    admin.revoke_key(session, row.id)
    if row.id == viewer.key.id:
        # The session stood for this key: it ends now rather than on the next page.
        sessions.end(session, viewer.token_hash)
        response = RedirectResponse("/signin?signed_out=1", status_code=303)
        response.delete_cookie(sessions.COOKIE, path="/")
        return response
    return RedirectResponse(f"/admin?project={row.project_id}&notice=key_revoked", status_code=303)


@router.post("/admin/projects", response_class=HTMLResponse)
def create_project(
    request: Request,
    viewer: Admin,
    session: SessionDep,
    name: Annotated[str, Form(max_length=admin.PROJECT_NAME_MAX)] = "",
) -> Response:
    if not key_rules.is_instance(viewer.key):
        raise key_rules.needs_instance("creating a project")
    try:
        project = admin.create_project(session, name=name.strip())
    except admin.AdminError as exc:
        problem = library_problem(exc)
        return _admin_page(
            request,
            session=session,
            viewer=viewer,
            project=_chosen_project(session, viewer, None),
            project_error=problem.detail,
            status_code=problem.status,
        )
    return RedirectResponse(f"/admin?project={project.id}&notice=project_created", status_code=303)


def _revocable_project(session: Session, viewer: SignedIn, project_id: str) -> Project:
    if not key_rules.is_instance(viewer.key):
        raise key_rules.needs_instance("revoking a project")
    project = session.get(Project, project_id)
    if project is None:
        raise Problem(404, f"project {project_id!r} was not found", type="not_found")
    key_rules.check_project_revocation(viewer.key, project)
    return project


@router.get("/admin/projects/{project_id}/revoke", response_class=HTMLResponse)
def confirm_project_revocation(
    request: Request, project_id: str, viewer: AdminViewer, session: SessionDep
) -> HTMLResponse:
    project = _revocable_project(session, viewer, project_id)
    active = admin.active_key_counts(session).get(project.id, 0)
    return render(
        request,
        "admin/revoke_project.html",
        viewer=viewer,
        nav="admin",
        project=project,
        active_keys=active,
    )


@router.post("/admin/projects/{project_id}/revoke")
def revoke_project(project_id: str, viewer: Admin, session: SessionDep) -> Response:
    project = _revocable_project(session, viewer, project_id)
    admin.revoke_project(session, project)
    return RedirectResponse(f"/admin?project={project.id}&notice=project_revoked", status_code=303)
