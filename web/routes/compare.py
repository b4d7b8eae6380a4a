"""Several optimized versions of one model side by side: speed-up against drop on one chart,
size as the symbol's size, the Pareto-best marked, and each one's model to download."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import SessionDep
from api.errors import Problem
from api.owned import get_owned
from api.schemas import JobOut
from core.tables import Artifact, Batch, Job, JobKind, JobStatus, StoredModel
from web.auth import Viewer
from web.charts import Point, compare_chart
from web.pareto import Candidate, pareto_best
from web.routes.jobs import model_names
from web.templating import describe, render
from web.verdict import Speed, speeds

router = APIRouter(include_in_schema=False)

#: The most jobs one comparison shows (a model's most recent succeeded ones).
MAX_JOBS = 100


@dataclass(frozen=True)
class Row:
    job: JobOut
    name: str
    speed: Speed | None
    best: bool
    model_artifact_id: str | None


def _jobs(
    session: Session,
    project_id: str,
    job_ids: list[str],
    batch_id: str | None,
    model_id: str | None,
) -> list[Job]:
    """The jobs named, of the viewer's project only (another project's id is a 404)."""
    if job_ids:
        return [get_owned(session, Job, job_id, project_id=project_id) for job_id in job_ids]
    query = select(Job).where(Job.project_id == project_id, Job.kind != JobKind.trial)
    if batch_id:
        batch = get_owned(session, Batch, batch_id, project_id=project_id)
        query = query.where(Job.batch_id == batch.id)
    elif model_id:
        model = get_owned(session, StoredModel, model_id, project_id=project_id)
        query = query.where(Job.model_id == model.id, Job.status == JobStatus.succeeded)
    else:
        return []
    return list(session.scalars(query.order_by(Job.created_at.desc()).limit(MAX_JOBS)).all())


def _model_artifacts(session: Session, job_ids: list[str]) -> dict[str, str]:
    rows = session.execute(
        select(Artifact.job_id, Artifact.id).where(
            Artifact.job_id.in_(job_ids), Artifact.kind == "model"
        )
    ).all()
    return {row.job_id: row.id for row in rows}


def _batch_sizes(jobs: list[JobOut]) -> list[str]:
    """Batch sizes every compared job was timed at, smallest first."""
    common: set[str] | None = None
    for job in jobs:
        sizes = set(job.summary.speedup_p50) if job.summary else set()
        common = sizes if common is None else common & sizes
    return sorted(common or set(), key=lambda b: int(b) if b.isdigit() else 0)


def comparison(
    session: Session, project_id: str, rows: list[Job], *, batch: str | None
) -> dict[str, Any]:
    jobs = [JobOut.of(r) for r in rows]
    model_ids = sorted({j.model_id or "" for j in jobs})
    if len(model_ids) > 1:
        names = model_names(session, project_id)
        listed = ", ".join(names.get(m, m or "a deleted model") for m in model_ids)
        raise Problem(
            422,
            f"these jobs optimize different models ({listed}); a comparison is of one model's "
            "optimized versions, so pick jobs of one model",
            type="different_models",
        )
    compared = [j for j in jobs if j.status == JobStatus.succeeded and j.summary is not None]
    skipped = [j for j in jobs if j not in compared]
    sizes = _batch_sizes(compared)
    chosen = batch if batch in sizes else (sizes[-1] if sizes else None)
    speed_of: dict[str, Speed | None] = {}
    for job in compared:
        assert job.result and job.result.metrics and job.result.metrics.comparison
        by_batch = {s.batch: s for s in speeds(job.result.metrics.comparison)}
        speed_of[job.id] = by_batch.get(chosen) if chosen else None
    candidates = [
        Candidate(
            key=j.id,
            speedup=speed.speedup,
            size_ratio=j.summary.size_ratio,
            drop=j.summary.drop,
        )
        for j in compared
        if j.summary and (speed := speed_of[j.id]) is not None
    ]
    best = pareto_best(candidates)
    artifacts = _model_artifacts(session, [j.id for j in compared])
    table = [
        Row(
            job=j,
            name=describe(j),
            speed=speed_of[j.id],
            best=j.id in best,
            model_artifact_id=artifacts.get(j.id),
        )
        for j in compared
    ]
    table.sort(key=lambda r: (not r.best, -(r.speed.speedup if r.speed else 0.0)))
    metrics = {j.summary.metric for j in compared if j.summary and j.summary.metric}
    metric = metrics.pop() if len(metrics) == 1 else "accuracy or fidelity"
    points = [
        Point(
            job_id=r.job.id,
            name=r.name,
            speedup=r.speed.speedup,
            drop=r.job.summary.drop,
            size_ratio=r.job.summary.size_ratio,
            best=r.best,
        )
        for r in table
        if r.speed is not None and r.job.summary is not None and r.job.summary.drop is not None
    ]
    return {
        "rows": table,
        "skipped": skipped,
        "unplotted": [r for r in table if r.job.summary is None or r.job.summary.drop is None],
        "batch_sizes": sizes,
        "batch": chosen,
        "metric": metric,
        "scatter": compare_chart(points, batch=chosen, metric=metric)
        if points and chosen
        else None,
        "model_id": model_ids[0] if model_ids else None,
    }


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    viewer: Viewer,
    session: SessionDep,
    job: Annotated[list[str], Query(max_length=MAX_JOBS)] = [],  # noqa: B006 (FastAPI copies it)
    batch_id: Annotated[str | None, Query(max_length=100)] = None,
    model_id: Annotated[str | None, Query(max_length=100)] = None,
    batch: Annotated[str | None, Query(max_length=10)] = None,
) -> HTMLResponse:
    job_ids = list(dict.fromkeys(job))
    rows = _jobs(session, viewer.project_id, job_ids=job_ids, batch_id=batch_id, model_id=model_id)
    models = model_names(session, viewer.project_id)
    context: dict[str, Any] = {
        "models": models,
        "job_ids": job_ids,
        "batch_id": batch_id,
        "picked_model": model_id,
        "error": None,
    }
    status = 200
    if not rows and (job_ids or batch_id or model_id):
        context["error"] = "there is no succeeded job to compare here yet"
    if rows:
        try:
            context |= comparison(session, viewer.project_id, rows, batch=batch)
        except Problem as exc:
            context["error"], status = exc.detail, exc.status
    if context.get("model_id"):
        context["model_name"] = models.get(context["model_id"])
    return render(request, "compare.html", viewer=viewer, status_code=status, **context)
