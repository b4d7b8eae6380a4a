"""The Python client: a thin layer over httpx with typed results, retries, resumable
downloads and waits that follow a job's event stream."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from modelpress import config
from modelpress.errors import (
    ApiError,
    ChecksumMismatch,
    ConnectionFailed,
    JobNotSucceeded,
    WaitTimeout,
)
from modelpress.models import Artifact, Batch, Dataset, Job, Model, Worker

T = TypeVar("T", bound=BaseModel)
#: A job or a batch: what `wait` reads until it is done.
Done = TypeVar("Done", Job, Batch)

#: Called with (bytes done, bytes in all) while a file goes up or comes down.
Progress = Callable[[int, int], None]
#: Answers worth another try: the service is busy or restarting.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _ProgressReader:
    """A file that reports how much of it has been read; httpx streams multipart bodies from
    it chunk by chunk, so a large model never sits in memory."""

    def __init__(self, handle: IO[bytes], total: int, progress: Progress | None) -> None:
        self._handle = handle
        self._total = total
        self._progress = progress
        self._done = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._done += len(chunk)
        if self._progress:
            self._progress(min(self._done, self._total), self._total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._handle.seek(offset, whence)
        if whence == 0:
            self._done = offset
        return position

    def tell(self) -> int:
        return self._handle.tell()

    def fileno(self) -> int:
        return self._handle.fileno()


def _retry_after(response: httpx.Response | None, attempt: int, backoff: float) -> float:
    """The server's Retry-After when it gave one (seconds or an HTTP date), else exponential
    backoff with jitter, capped at 30 s."""
    header = response.headers.get("retry-after") if response is not None else None
    if header:
        try:
            return min(max(float(header), 0.0), 60.0)
        except ValueError:
            try:
                return min(max(parsedate_to_datetime(header).timestamp() - time.time(), 0), 60)
            except (TypeError, ValueError):
                pass
    return min(backoff * 2**attempt, 30.0) * (0.5 + random.random() / 2)


class _AlreadyUploaded(Exception):
    """Ends the retries of an upload whose first attempt arrived after all."""

    def __init__(self, found: BaseModel) -> None:
        self.found = found


def _problem(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = body.get("detail") if isinstance(body, dict) else None
    return ApiError(response.status_code, str(detail or response.reason_phrase), body)


class Client:
    """`Client(url, api_key)`; either may come from MODELPRESS_URL / MODELPRESS_API_KEY or the
    saved `modelpress login`. Every create sends an Idempotency-Key, so a retry after a lost
    answer never creates a second job."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 6,
        backoff: float = 0.5,
    ) -> None:
        self.url, key = config.resolve(url, api_key)
        self.retries = retries
        self.backoff = backoff
        headers = {"User-Agent": "modelpress-client/0.1"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry_on_transport: bool = True,
        before_retry: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request, retried on connection errors, 429 and 5xx. A create is retried only
        with its Idempotency-Key (the caller sets it), so the retry replays, not repeats."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if not retry_on_transport and not isinstance(exc, httpx.ConnectError):
                    raise ConnectionFailed(f"{method} {path}: {exc}") from exc
                last = exc
            else:
                if response.status_code not in RETRY_STATUSES:
                    if response.status_code >= 400:
                        raise _problem(response)
                    return response
                last = _problem(response)
            if attempt == self.retries:
                break
            time.sleep(_retry_after(response, attempt, self.backoff))
            if before_retry is not None:
                before_retry()
        if isinstance(last, ApiError):
            raise last
        raise ConnectionFailed(f"{method} {path}: {last}") from last

    def _get(self, path: str, model: type[T], **params: Any) -> T:
        clean = {k: v for k, v in params.items() if v is not None}
        return model.model_validate(self._request("GET", path, params=clean).json())

    def _create(self, path: str, model: type[T], body: dict[str, Any], key: str | None) -> T:
        headers = {"Idempotency-Key": key or str(uuid.uuid4())}
        response = self._request("POST", path, json=body, headers=headers)
        return model.model_validate(response.json())

    def _pages(self, path: str, model: type[T], **params: Any) -> Iterator[T]:
        token: str | None = None
        while True:
            clean = {k: v for k, v in params.items() if v is not None}
            if token:
                clean["page_token"] = token
            page = self._request("GET", path, params=clean).json()
            for item in page["items"]:
                yield model.model_validate(item)
            token = page.get("next_page_token")
            if not token:
                return

    # --- models and datasets -------------------------------------------------------------

    def _find_by_sha256(self, route: str, model: type[T], sha256: str) -> T | None:
        page = self._request("GET", route, params={"sha256": sha256, "page_size": 1}).json()
        return model.model_validate(page["items"][0]) if page["items"] else None

    def _upload(
        self,
        route: str,
        model: type[T],
        path: Path,
        *,
        fields: dict[str, str],
        progress: Progress | None,
        reuse: bool,
    ) -> tuple[T, bool]:
        path = Path(path)
        sha256 = file_sha256(path)
        if reuse:
            found = self._find_by_sha256(route, model, sha256)
            if found is not None:
                return found, True
        size = path.stat().st_size
        with path.open("rb") as handle:
            reader = _ProgressReader(handle, size, progress)

            def rewind_unless_there() -> None:
                # The lost answer may have been a success: then the file is there already.
                found = self._find_by_sha256(route, model, sha256) if reuse else None
                if found is not None:
                    raise _AlreadyUploaded(found)
                reader.seek(0)

            try:
                response = self._request(
                    "POST",
                    route,
                    files={"file": (path.name, reader, "application/octet-stream")},
                    data=fields or None,
                    before_retry=rewind_unless_there,
                )
            except _AlreadyUploaded as there:
                return there.found, True  # type: ignore[return-value]
        return model.model_validate(response.json()), False

    def upload_model(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        progress: Progress | None = None,
        reuse: bool = True,
    ) -> Model:
        """Uploads a model file, or returns the project's model with the same sha256."""
        return self.upload_model_reused(path, name=name, progress=progress, reuse=reuse)[0]

    def upload_model_reused(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        progress: Progress | None = None,
        reuse: bool = True,
    ) -> tuple[Model, bool]:
        """Like upload_model, and whether an existing model was reused."""
        fields = {"name": name} if name else {}
        return self._upload(
            "/v1/models", Model, Path(path), fields=fields, progress=progress, reuse=reuse
        )

    def upload_dataset(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        model_id: str | None = None,
        progress: Progress | None = None,
        reuse: bool = True,
    ) -> Dataset:
        return self.upload_dataset_reused(
            path, name=name, model_id=model_id, progress=progress, reuse=reuse
        )[0]

    def upload_dataset_reused(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        model_id: str | None = None,
        progress: Progress | None = None,
        reuse: bool = True,
    ) -> tuple[Dataset, bool]:
        fields = {k: v for k, v in {"name": name, "model_id": model_id}.items() if v}
        return self._upload(
            "/v1/datasets", Dataset, Path(path), fields=fields, progress=progress, reuse=reuse
        )

    def get_model(self, model_id: str) -> Model:
        return self._get(f"/v1/models/{model_id}", Model)

    def list_models(self, *, sha256: str | None = None) -> Iterator[Model]:
        return self._pages("/v1/models", Model, sha256=sha256, page_size=100)

    def get_dataset(self, dataset_id: str) -> Dataset:
        return self._get(f"/v1/datasets/{dataset_id}", Dataset)

    def list_datasets(self, *, sha256: str | None = None) -> Iterator[Dataset]:
        return self._pages("/v1/datasets", Dataset, sha256=sha256, page_size=100)

    # --- jobs and batches ----------------------------------------------------------------

    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submits one job spec (as POST /v1/jobs takes it)."""
        return self._create("/v1/jobs", Job, spec, idempotency_key)

    def submit_batch(
        self,
        jobs: list[dict[str, Any]] | None = None,
        *,
        sweep: dict[str, Any] | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Submits many job specs at once, or a sweep (`{"spec": …, "matrix": …}`) that the
        service expands; nothing is queued unless every job is valid."""
        body: dict[str, Any] = {"name": name}
        if sweep is not None:
            body["sweep"] = sweep
        else:
            body["jobs"] = jobs or []
        return self._create("/v1/batches", Batch, body, idempotency_key)

    def get_job(self, job_id: str) -> Job:
        return self._get(f"/v1/jobs/{job_id}", Job)

    def list_jobs(
        self,
        *,
        status: list[str] | None = None,
        batch_id: str | None = None,
        model_id: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        return self._pages(
            "/v1/jobs",
            Job,
            status=status,
            batch_id=batch_id,
            model_id=model_id,
            page_size=page_size,
        )

    def cancel_job(self, job_id: str) -> Job:
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def retry_job(self, job_id: str) -> Job:
        # Not idempotent on the server: a lost answer is not sent again blindly.
        response = self._request("POST", f"/v1/jobs/{job_id}/retry", retry_on_transport=False)
        return Job.model_validate(response.json())

    def delete_job(self, job_id: str) -> None:
        """Deletes a finished job and its artifacts (ApiError 409 while it is unfinished)."""
        self._delete(f"/v1/jobs/{job_id}")

    def delete_batch(self, batch_id: str) -> None:
        """Deletes a batch whose jobs are all finished, with its jobs and their artifacts."""
        self._delete(f"/v1/batches/{batch_id}")

    def delete_model(self, model_id: str) -> None:
        """Deletes a model (ApiError 409 while an unfinished job reads it)."""
        self._delete(f"/v1/models/{model_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Deletes a dataset (ApiError 409 while an unfinished job reads it)."""
        self._delete(f"/v1/datasets/{dataset_id}")

    def _delete(self, path: str) -> None:
        self._request("DELETE", path)

    def list_batches(self, *, page_size: int = 100) -> Iterator[Batch]:
        """The project's batches, newest first, with their counts and without their jobs."""
        return self._pages("/v1/batches", Batch, page_size=page_size)

    def get_batch(self, batch_id: str) -> Batch:
        return self._get(f"/v1/batches/{batch_id}", Batch)

    def batch_summary(self, batch_id: str) -> Batch:
        """The batch's status and counts by state, without its jobs (`jobs` is empty): cheap
        to read however large the batch."""
        return self._get(f"/v1/batches/{batch_id}/summary", Batch)

    def cancel_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate(self._request("POST", f"/v1/batches/{batch_id}/cancel").json())

    def batch_jobs(self, batch_id: str) -> list[Job]:
        """The batch's jobs with their summaries, oldest first, paged."""
        return sorted(self.list_jobs(batch_id=batch_id), key=lambda j: (j.created_at, j.id))

    def events(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job as it changes, from its event stream, until it is final. Reconnects when
        the stream ends early; raises ConnectionFailed when the service cannot be reached."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            read_timeout = None if deadline is None else max(deadline - time.monotonic(), 0.1)
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    timeout=httpx.Timeout(30.0, read=read_timeout),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _problem(response)
                    for line in response.iter_lines():
                        if line.startswith("data:"):
                            job = Job.model_validate(json.loads(line[5:].strip()))
                            yield job
                            if job.done:
                                return
            except httpx.TransportError as exc:
                raise ConnectionFailed(str(exc)) from exc
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} did not finish in time")

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_change: Callable[[Job], None] | None = None,
        poll_interval: float = 2.0,
    ) -> Job:
        """Waits until the job is final and returns it. Follows the event stream; while the
        service cannot be reached (a restart) it polls with backoff instead, until `timeout`
        (seconds; None waits as long as it takes) raises WaitTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else deadline - time.monotonic()

        failures = 0
        while True:
            remaining = left()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"job {job_id} did not finish within {timeout} s")
            try:
                for job in self.events(job_id, timeout=remaining):
                    failures = 0
                    if on_change:
                        on_change(job)
                    if job.done:
                        return job
            except (ConnectionFailed, httpx.TransportError):
                failures += 1
            except ApiError as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
                failures += 1
            # Polling fallback: one read, then back to the stream when it answers again.
            try:
                job = self.get_job(job_id)
                if on_change:
                    on_change(job)
                if job.done:
                    return job
            except ConnectionFailed:
                failures += 1
            pause = min(poll_interval * 2 ** min(failures, 4), 15.0)
            remaining = left()
            time.sleep(pause if remaining is None else max(min(pause, remaining), 0))

    def poll(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_change: Callable[[Job], None] | None = None,
        poll_interval: float = 2.0,
    ) -> Job:
        """Waits until the job is final by reading it every `poll_interval` seconds, calling
        `on_change` with each read: for what changes without a change of status or progress
        (an auto search's trials and best so far, in its `result`). While the service cannot
        be reached it keeps trying, until `timeout` raises WaitTimeout."""
        return self._until_done(
            lambda: self.get_job(job_id), f"job {job_id}", timeout, on_change, poll_interval
        )

    def wait_batch(
        self,
        batch_id: str,
        *,
        timeout: float | None = None,
        on_change: Callable[[Batch], None] | None = None,
        poll_interval: float = 2.0,
    ) -> Batch:
        """Waits until every job of the batch is final and returns the batch with its jobs.
        Polls the batch's summary (`on_change` gets each, with counts and no jobs) and reads
        the whole batch once at the end: waiting on a sweep of 1,000 jobs costs the service
        one count a poll instead of 1,000 jobs."""
        self._until_done(
            lambda: self.batch_summary(batch_id),
            f"batch {batch_id}",
            timeout,
            on_change,
            poll_interval,
        )
        return self.get_batch(batch_id)

    @staticmethod
    def _until_done(
        read: Callable[[], Done],
        what: str,
        timeout: float | None,
        on_change: Callable[[Done], None] | None,
        poll_interval: float,
    ) -> Done:
        """Reads until the thing read is done, calling `on_change` with each read; a service
        that cannot be reached is read again, until `timeout` raises WaitTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                current: Done | None = read()
            except ConnectionFailed:
                current = None
            if current is not None:
                if on_change:
                    on_change(current)
                if current.done:
                    return current
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"{what} did not finish within {timeout} s")
            time.sleep(poll_interval)

    # --- results -------------------------------------------------------------------------

    def artifacts(self, job_id: str) -> list[Artifact]:
        response = self._request("GET", f"/v1/jobs/{job_id}/artifacts")
        return [Artifact.model_validate(item) for item in response.json()]

    def report(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/jobs/{job_id}/report").json())

    def model_artifact(self, job_id: str) -> Artifact:
        """The optimized model a succeeded job produced."""
        job = self.get_job(job_id)
        if not job.succeeded:
            raise JobNotSucceeded(job)
        if job.artifacts_expired_at is not None:
            raise ApiError(
                410,
                f"the artifacts of job {job_id} were removed by the service's retention policy "
                f"on {job.artifacts_expired_at:%Y-%m-%d}; its numbers are kept",
            )
        for artifact in reversed(self.artifacts(job_id)):
            if artifact.kind == "model":
                return artifact
        raise ApiError(404, f"job {job_id} has no model artifact")

    def download_model(
        self, job_id: str, to: str | Path = ".", *, progress: Progress | None = None
    ) -> Path:
        """Downloads the job's optimized model into folder `to`, verified by sha256."""
        artifact = self.model_artifact(job_id)
        return self.download_artifact(artifact, Path(to) / artifact.name, progress=progress)

    def download_artifact(
        self, artifact: Artifact | str, dest: str | Path, *, progress: Progress | None = None
    ) -> Path:
        """Downloads an artifact to `dest`. A partial `dest.part` left by an interrupted
        download is resumed with a Range request; the whole file is checked against the
        artifact's sha256 before it takes its final name."""
        if isinstance(artifact, str):
            artifact = Artifact.model_validate(
                self._request("GET", f"/v1/artifacts/{artifact}").json()
            )
        return self._download(
            f"/v1/artifacts/{artifact.id}/content",
            Path(dest),
            size=artifact.size_bytes,
            sha256=artifact.sha256,
            progress=progress,
        )

    def download_model_file(
        self, model_id: str, dest: str | Path, *, progress: Progress | None = None
    ) -> Path:
        """Downloads an uploaded model, verified like an artifact."""
        model = self.get_model(model_id)
        return self._download(
            f"/v1/models/{model_id}/content",
            Path(dest),
            size=model.size_bytes,
            sha256=model.sha256,
            progress=progress,
        )

    def _download(
        self, route: str, dest: Path, *, size: int, sha256: str, progress: Progress | None
    ) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and dest.stat().st_size == size and file_sha256(dest) == sha256:
            return dest
        part = dest.with_name(dest.name + ".part")
        for attempt in range(self.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()
                have = 0
            headers = {"If-Range": f'"{sha256}"'}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with self._http.stream("GET", route, headers=headers) as response:
                    if response.status_code in RETRY_STATUSES:
                        response.read()
                        time.sleep(_retry_after(response, attempt, self.backoff))
                        continue
                    if response.status_code >= 400:
                        response.read()
                        raise _problem(response)
                    mode = "ab" if response.status_code == 206 else "wb"
                    done = have if mode == "ab" else 0
                    with part.open(mode) as out:
                        for chunk in response.iter_bytes(CHUNK):
                            out.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, size)
                break
            except httpx.TransportError:
                if attempt == self.retries:
                    raise ConnectionFailed(f"download of {route} kept failing") from None
                time.sleep(_retry_after(None, attempt, self.backoff))
        got = file_sha256(part)
        if got != sha256:
            part.unlink()
            raise ChecksumMismatch(f"{dest.name}: sha256 {got} is not the recorded {sha256}")
        os.replace(part, dest)
        return dest

    # --- admin ---------------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        """Live workers and those that stopped or died recently (an admin key)."""
        return [Worker.model_validate(w) for w in self._request("GET", "/v1/workers").json()]

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any other route, e.g. the admin routes for keys and projects."""
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else None
