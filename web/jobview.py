"""Everything a job's page shows, gathered from the database and storage: the job as the API
returns it, the verdict, the charts, the timeline, the artifacts and the sensitivity reports
with their "exclude these and run again" spec."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import live_queues
from api.schemas import ArtifactOut, JobOut
from core.storage import Storage
from core.tables import Artifact, Job, JobStatus
from web.charts import Chart, comparison_charts, sensitivity_chart, stage_charts
from web.exclusion import composer_url, pass_number, rerun_spec
from web.searchview import search_view
from web.verdict import Verdict, speeds, verdict_of

#: A sensitivity report lists at most 200 nodes: far below this. A larger file is not read.
MAX_REPORT_BYTES = 8 << 20


@dataclass(frozen=True)
class Moment:
    what: str
    at: datetime | None
    detail: str = ""


@dataclass(frozen=True)
class Explanation:
    """One quantize pass's sensitivity report."""

    number: int
    artifact: ArtifactOut
    report: dict[str, Any]
    chart: Chart | None
    suggested: list[str]
    rerun_url: str | None


def timeline(job: JobOut, retried_as: list[str]) -> list[Moment]:
    moments = [Moment("Created", job.created_at)]
    if job.queued_at:
        moments.append(Moment("Queued", job.queued_at, f"on the {job.queue} queue"))
    if job.started_at and job.kind == "search":
        # A search is no worker's attempt: it starts its trials, which are jobs of their own.
        moments.append(Moment("Started", job.started_at, "its trials run as jobs of their own"))
    elif job.started_at:
        attempt = f"attempt {job.attempts} of {job.max_attempts}"
        if job.attempts > 1:
            attempt += " (the earlier attempts were interrupted and run again)"
        moments.append(Moment("Started", job.started_at, attempt))
    if job.cancel_requested_at:
        moments.append(Moment("Cancel requested", job.cancel_requested_at))
    if job.finished_at:
        detail = f"{job.error.type}: {job.error.message}" if job.error else ""
        moments.append(Moment(job.status.capitalize(), job.finished_at, detail))
    for retry_id in retried_as:
        moments.append(Moment("Retried", None, retry_id))
    return moments


def _read_json(storage: Storage, row: Artifact) -> dict[str, Any] | None:
    if row.size_bytes <= 0 or row.size_bytes > MAX_REPORT_BYTES:
        return None
    try:
        data = json.loads(b"".join(storage.iter_range(row.storage_key, 0, row.size_bytes - 1)))
    except (OSError, ValueError):
        return None  # a missing or damaged report: the page shows the rest
    return data if isinstance(data, dict) else None


def explanations(storage: Storage, row: Job, artifacts: list[Artifact]) -> list[Explanation]:
    found = []
    for artifact in artifacts:
        if artifact.kind != "sensitivity":
            continue
        number = pass_number(artifact.name)
        report = _read_json(storage, artifact)
        if number is None or report is None:
            continue
        suggested = list((report.get("suggested_exclude") or {}).get("nodes") or [])
        suggested_pass = report.get("suggested_pass")
        spec = (
            rerun_spec(row.spec, number=number, suggested_pass=suggested_pass)
            if isinstance(suggested_pass, dict) and suggested
            else None
        )
        found.append(
            Explanation(
                number=number,
                artifact=ArtifactOut.of(artifact),
                report=report,
                chart=sensitivity_chart(number, report),
                suggested=suggested,
                rerun_url=composer_url(spec) if spec else None,
            )
        )
    return sorted(found, key=lambda e: e.number)


def job_context(session: Session, storage: Storage, row: Job) -> dict[str, Any]:
    job = JobOut.of(row, live_queues=live_queues(session))
    rows = list(
        session.scalars(
            select(Artifact).where(Artifact.job_id == row.id).order_by(Artifact.created_at)
        ).all()
    )
    retried_as = list(session.scalars(select(Job.id).where(Job.retry_of == row.id)).all())
    metrics = job.result.metrics if job.result else None
    stages = [s.model_dump() for s in (job.result.stages or [])] if job.result else []
    search = search_view(job.spec, row.result, status=job.status, now=datetime.now(UTC))
    verdict: Verdict | None = verdict_of(metrics) if job.status == JobStatus.succeeded else None
    charts = comparison_charts(metrics) if verdict else []
    if search is not None:
        # The search's answer banner says what the result is; the best trial's own verdict
        # would call a fallback (nothing qualified) a gain.
        verdict = None
    return {
        "job": job,
        "verdict": verdict,
        "speeds": speeds(metrics.comparison) if metrics and metrics.comparison else [],
        "metrics": metrics,
        "charts": charts,
        "stages": stages,
        "stage_charts": stage_charts(stages, metrics),
        "timeline": timeline(job, retried_as),
        "artifacts": [ArtifactOut.of(a) for a in rows],
        "model_artifact": next((ArtifactOut.of(a) for a in rows if a.kind == "model"), None),
        "explanations": explanations(storage, row, rows),
        "spec_json": json.dumps(job.spec, indent=2),
        "active": job.status in ("queued", "running", "canceling"),
        "search": search,
    }
