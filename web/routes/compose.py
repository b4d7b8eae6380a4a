"""Compose a job (`/jobs/new`): the form generated from the JobSpec's schema, the same spec
as JSON, and a sweep. What is submitted is checked by the API's own code (`JobSpec`,
`BatchSpec`, `api.submit.new_job` / `new_batch`) and its messages are shown next to the
fields they name.

The form works without script: adding, removing, moving a pass or changing its kind are
submit buttons that come back to this page with everything typed so far."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep
from api.errors import Problem
from api.submit import commit_or_find_winner, new_batch, new_job, request_hash, send_committed
from core.jobspec import BatchSpec, JobSpec
from core.tables import Batch, Dataset, Job, StoredModel
from web.auth import CSRF_FIELD, SignedIn, Writer, WriteViewer
from web.compose_form import (
    DEFAULT_VARIANT,
    VARIANT,
    Choices,
    FieldError,
    Values,
    build_form,
    change_chain,
    from_spec,
    place_errors,
    to_spec,
)
from web.templating import render

router = APIRouter(include_in_schema=False)

#: Form fields that are not part of the spec.
_CONTROL_FIELDS = {CSRF_FIELD, "action", "spec_json", "sweep_matrix", "sweep_name", "submission"}
#: Each rendering of the page has its own submission token; with the spec's hash it is the
#: Idempotency-Key of what the page submits, so a double click or a resent form makes one
#: job (or batch), not two, while the same page with another spec makes another.
_SUBMISSION_PREFIX = "dashboard-"
#: Most models and datasets a picker lists (the newest).
_PICKER_LIMIT = 500
Loc = list[str | int]
Found = TypeVar("Found", Job, Batch)


@dataclass
class Draft:
    """What the page shows: the values, the JSON text, the sweep, and what went wrong."""

    values: Values
    spec_json: str | None = None
    sweep_matrix: str = ""
    sweep_name: str = ""
    errors: list[tuple[Loc, str]] = field(default_factory=list)
    #: Errors (by control name) of text that is not even JSON.
    local_errors: dict[str, str] = field(default_factory=dict)
    json_error: str | None = None
    sweep_error: str | None = None
    notice: str | None = None
    focus: str | None = None
    #: Which part was submitted, so the page opens it: "form", "json" or "sweep".
    mode: str = "form"
    #: Errors about the sweep's jobs are prefixed with the job's place.
    error_prefix: str = ""
    #: The token of the page that was submitted (see `_SUBMISSION_PREFIX`).
    submission: str = ""


def _choices(session: Session, project_id: str) -> Choices:
    def listed(table: type[StoredModel] | type[Dataset]) -> list[tuple[str, str]]:
        rows = session.execute(
            select(table.id, table.name)
            .where(table.project_id == project_id)
            .order_by(table.created_at.desc(), table.id.desc())
            .limit(_PICKER_LIMIT)
        ).all()
        return [(row_id, f"{name} ({row_id})") for row_id, name in rows]

    return Choices(models=listed(StoredModel), datasets=listed(Dataset))


def _show(
    request: Request, viewer: SignedIn, session: Session, draft: Draft, *, status_code: int = 200
) -> HTMLResponse:
    choices = _choices(session, viewer.project_id)
    form = build_form(draft.values, choices)
    for name, message in draft.local_errors.items():
        loc: Loc = [*name.split(".")]
        draft.errors.append((loc, message))
    placed: list[FieldError] = place_errors(form, draft.errors, prefix=draft.error_prefix)
    converted = to_spec(draft.values)
    spec_json = draft.spec_json
    if spec_json is None:
        spec_json = json.dumps(converted.spec, indent=2)
    return render(
        request,
        "compose/new.html",
        viewer=viewer,
        status_code=status_code,
        nav="compose",
        form=form,
        placed=placed,
        draft=draft,
        spec_json=spec_json,
        variant_field=VARIANT,
        has_models=bool(choices.models),
        submission=_SUBMISSION_PREFIX + secrets.token_urlsafe(16),
    )


def _validation_errors(exc: ValidationError) -> list[tuple[Loc, str]]:
    return [(list(err["loc"]), err["msg"]) for err in exc.errors()]


def _problem_errors(exc: Problem) -> list[tuple[Loc, str]]:
    if exc.errors:
        return [(list(e.get("loc", [])), str(e.get("msg", exc.detail))) for e in exc.errors]
    return [([], exc.detail)]


@router.get("/jobs/new", response_class=HTMLResponse)
def compose_page(
    request: Request,
    viewer: WriteViewer,
    session: SessionDep,
    spec: str | None = None,
    model_id: str | None = None,
) -> HTMLResponse:
    draft = Draft(values={f"passes.0.{VARIANT}": DEFAULT_VARIANT})
    if spec:
        try:
            loaded = from_spec(json.loads(spec))
        except json.JSONDecodeError as exc:
            draft.json_error = f"The spec in the link is not valid JSON: {exc.msg}."
            draft.spec_json = spec
            draft.mode = "json"
        else:
            draft.values = loaded.values or draft.values
            if f"passes.0.{VARIANT}" not in draft.values:
                draft.values[f"passes.0.{VARIANT}"] = DEFAULT_VARIANT
            draft.notice = "The form is filled in from the link; check it and submit."
            _note_left_out(draft, loaded.left_out)
    if model_id:
        draft.values["model_id"] = model_id
    return _show(request, viewer, session, draft)


def _note_left_out(draft: Draft, left_out: list[str]) -> None:
    if left_out:
        draft.notice = (
            "These parts of the spec have no field in the form and were left out: "
            + ", ".join(left_out[:20])
            + ". Submit the JSON to have the API check them as written."
        )


@router.post("/jobs/new")
async def compose_submit(
    request: Request, viewer: Writer, session: SessionDep, settings: SettingsDep
) -> Response:
    posted = await request.form()
    values = {k: v for k, v in posted.items() if isinstance(v, str) and k not in _CONTROL_FIELDS}
    action = str(posted.get("action") or "submit")
    submission = str(posted.get("submission") or "")
    draft = Draft(
        values=values,
        sweep_matrix=str(posted.get("sweep_matrix") or ""),
        sweep_name=str(posted.get("sweep_name") or ""),
        submission=submission if submission.startswith(_SUBMISSION_PREFIX) else "",
    )
    spec_text = str(posted.get("spec_json") or "")
    if action == "submit":
        return _submit_form(request, viewer, session, settings, draft)
    if action in ("submit_json", "load_json"):
        return _from_json(request, viewer, session, settings, draft, spec_text, action)
    if action == "sweep":
        return _submit_sweep(request, viewer, session, settings, draft)
    draft.values, draft.focus = change_chain(values, action)
    return _show(request, viewer, session, draft)


def _submit_form(
    request: Request, viewer: SignedIn, session: Session, settings: Any, draft: Draft
) -> Response:
    converted = to_spec(draft.values)
    if converted.errors:
        draft.local_errors = converted.errors
        # The rest of the form is checked too, so every mistake shows at once.
        try:
            JobSpec.model_validate(converted.spec)
        except ValidationError as exc:
            draft.errors = _validation_errors(exc)
        return _show(request, viewer, session, draft, status_code=422)
    return _submit_spec(request, viewer, session, settings, draft, converted.spec)


def _from_json(
    request: Request,
    viewer: SignedIn,
    session: Session,
    settings: Any,
    draft: Draft,
    text: str,
    action: str,
) -> Response:
    draft.mode = "json"
    draft.spec_json = text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        draft.json_error = (
            f"The JSON does not parse: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        )
        return _show(request, viewer, session, draft, status_code=422)
    loaded = from_spec(data)
    draft.values = loaded.values
    if f"passes.0.{VARIANT}" not in draft.values and action == "load_json":
        draft.values[f"passes.0.{VARIANT}"] = DEFAULT_VARIANT
    _note_left_out(draft, loaded.left_out)
    if action == "load_json":
        draft.mode = "form"
        draft.spec_json = None
        return _show(request, viewer, session, draft)
    return _submit_spec(request, viewer, session, settings, draft, data)


def _submit_spec(
    request: Request,
    viewer: SignedIn,
    session: Session,
    settings: Any,
    draft: Draft,
    data: Any,
) -> Response:
    try:
        spec = JobSpec.model_validate(data)
        key = _idempotency_key(draft, spec)
        done = _find(session, Job, viewer.project_id, key)
        if done is not None:
            return RedirectResponse(f"/jobs/{done.id}", status_code=303)
        job = new_job(
            session,
            settings,
            viewer.project_id,
            spec,
            loc=["body"],
            idempotency_key=key,
            request_hash=request_hash(spec),
        )
        winner = commit_or_find_winner(
            session, lambda: _find(session, Job, viewer.project_id, key), jobs=[job]
        )
    except ValidationError as exc:
        draft.errors = _validation_errors(exc)
    except Problem as exc:
        session.rollback()
        draft.errors = _problem_errors(exc)
    else:
        if winner is not None:
            return RedirectResponse(f"/jobs/{winner.id}", status_code=303)
        send_committed(session, [job])
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)
    if draft.mode == "json":
        draft.json_error = "The API refused the spec; see the messages by the fields above."
    return _show(request, viewer, session, draft, status_code=422)


def _submit_sweep(
    request: Request, viewer: SignedIn, session: Session, settings: Any, draft: Draft
) -> Response:
    draft.mode = "sweep"
    converted = to_spec(draft.values)
    if converted.errors:
        draft.local_errors = converted.errors
        return _show(request, viewer, session, draft, status_code=422)
    try:
        matrix = yaml.safe_load(draft.sweep_matrix) if draft.sweep_matrix.strip() else None
    except yaml.YAMLError as exc:
        draft.sweep_error = f"The matrix is not valid YAML or JSON: {exc}"
        return _show(request, viewer, session, draft, status_code=422)
    body = {
        "name": draft.sweep_name.strip() or None,
        "sweep": {"spec": converted.spec, "matrix": matrix},
    }
    try:
        spec = BatchSpec.model_validate(body)
        key = _idempotency_key(draft, spec)
        done = _find(session, Batch, viewer.project_id, key)
        if done is not None:
            return RedirectResponse(f"/jobs?batch_id={done.id}", status_code=303)
        batch, jobs = new_batch(
            session,
            settings,
            viewer.project_id,
            spec,
            idempotency_key=key,
            request_hash=request_hash(spec),
        )
        winner = commit_or_find_winner(
            session, lambda: _find(session, Batch, viewer.project_id, key), jobs=jobs
        )
    except ValidationError as exc:
        _sweep_errors(draft, [(list(e["loc"]), e["msg"]) for e in exc.errors()])
    except Problem as exc:
        session.rollback()
        _sweep_errors(draft, _problem_errors(exc), detail=exc.detail)
    else:
        if winner is not None:
            return RedirectResponse(f"/jobs?batch_id={winner.id}", status_code=303)
        send_committed(session, jobs)
        return RedirectResponse(f"/jobs?batch_id={batch.id}", status_code=303)
    return _show(request, viewer, session, draft, status_code=422)


def _idempotency_key(draft: Draft, spec: JobSpec | BatchSpec) -> str | None:
    if not draft.submission:
        return None
    return f"{draft.submission[:64]}:{request_hash(spec)[:32]}"


def _find(session: Session, table: type[Found], project_id: str, key: str | None) -> Found | None:
    if key is None:
        return None
    return session.scalar(
        select(table).where(table.project_id == project_id, table.idempotency_key == key)
    )


def _sweep_errors(
    draft: Draft, errors: list[tuple[Loc, str]], *, detail: str | None = None
) -> None:
    """An error in one of the sweep's jobs goes next to its field, naming the job; one
    about the sweep itself (its matrix) next to the matrix."""
    sweep_messages = []
    for loc, message in errors:
        parts = [p for p in loc if p != "body"]
        if len(parts) >= 2 and parts[0] == "jobs" and isinstance(parts[1], int):
            draft.errors.append((parts[2:], f"in the sweep's job {parts[1] + 1}: {message}"))
        else:
            sweep_messages.append(message)
    if sweep_messages or not draft.errors:
        draft.sweep_error = "; ".join(sweep_messages) or detail or "the sweep was refused"
