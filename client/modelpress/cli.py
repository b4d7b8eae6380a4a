"""The `modelpress` command: a thin layer over `modelpress.Client`.

Exit codes (for CI): 0 success; 1 a job failed or was canceled; 2 bad usage or spec file;
3 a wait timed out; 4 with --fail-on-slower, a result slower than the original or outside
its tolerance; 5 the service refused the request (4xx); 6 the service could not be reached;
7 a download's checksum did not match."""

from __future__ import annotations

import json
import os
import sys
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from modelpress import config, search, specs
from modelpress.client import Client
from modelpress.compare import describe, rank
from modelpress.errors import (
    ApiError,
    ChecksumMismatch,
    ConnectionFailed,
    JobNotSucceeded,
    ModelpressError,
    WaitTimeout,
)
from modelpress.models import Batch, Job, Worker


class Exit(IntEnum):
    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    TIMEOUT = 3
    SLOWER = 4
    API_ERROR = 5
    UNREACHABLE = 6
    CHECKSUM = 7


app = typer.Typer(
    help="Make models smaller and faster with a modelpress service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
models_app = typer.Typer(
    help="Upload, list, show, download and delete models.", no_args_is_help=True
)
datasets_app = typer.Typer(help="Upload, list, show and delete datasets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Follow, cancel, retry and delete jobs.", no_args_is_help=True)
batches_app = typer.Typer(
    help="List, follow, cancel and delete batches (sweeps).", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys of a project (admin).", no_args_is_help=True)
projects_app = typer.Typer(help="Projects (instance admin).", no_args_is_help=True)
for sub, name in (
    (models_app, "models"),
    (datasets_app, "datasets"),
    (jobs_app, "jobs"),
    (batches_app, "batches"),
    (keys_app, "keys"),
    (projects_app, "projects"),
):
    app.add_typer(sub, name=name)


def _console(*, stderr: bool = False) -> Console:
    """A console as wide as the terminal; where the output is no terminal (a pipe, a file, a
    CI log) and COLUMNS does not say, as wide as a table needs: rich would lay tables out to
    80 columns there, wrapping every cell of a comparison into a column of words."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no stream at all, or a closed one
        terminal = False
    measured = terminal or "COLUMNS" in os.environ
    return Console(stderr=stderr, width=None if measured else PIPED_WIDTH)


#: The width of tables written to a pipe or a file.
PIPED_WIDTH = 240
out = _console()
# Progress and tables for people go to stderr when --json is asked for, so stdout stays JSON.
err = _console(stderr=True)


def ids_in_full(table: Table, *headers: str) -> Table:
    """Shows every character, however narrow the terminal: rich would cut a cell that does not
    fit to `job_f450ea6…`. The named columns' ids stay whole on one line (an id is what the
    next command takes); the other columns wrap, and break a word too long for them."""
    for column in table.columns:
        if column.header in headers:
            column.no_wrap = True
            column.min_width = max((len(str(cell)) for cell in column.cells), default=0)
        else:
            column.overflow = "fold"
    return table


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="Delete without asking (needed without a terminal).")
]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="Seconds to wait before giving up (exit 3).")
]
FailSlowerOpt = Annotated[
    bool,
    typer.Option(
        "--fail-on-slower",
        help="Exit 4 when a result is slower than the original or outside its tolerance.",
    ),
]


class _State:
    url: str | None = None
    api_key: str | None = None


state = _State()


@app.callback()
def _main(
    url: Annotated[str | None, typer.Option(help="Service URL (or MODELPRESS_URL).")] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="API key (or MODELPRESS_API_KEY).")
    ] = None,
) -> None:
    state.url, state.api_key = url, api_key


def client() -> Client:
    return Client(state.url, state.api_key)


def emit(value: Any) -> None:
    """JSON to stdout: models as the API shapes them."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def fail(code: Exit, message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(int(code))


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _transfer(description: str, action: Any) -> Any:
    with _bar(err) as bar:
        task = bar.add_task(description, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return action(progress)


# --- login -------------------------------------------------------------------------------


@app.command()
def login(
    url: Annotated[str, typer.Option(prompt="Service URL", help="e.g. http://127.0.0.1:8000")],
    api_key: Annotated[
        str, typer.Option("--api-key", prompt="API key", hide_input=True, help="The API key.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Checks the URL and key, then stores them (file mode 0600) for later commands."""
    with Client(url, api_key, retries=1) as probe:
        next(iter(probe.list_models()), None)
    path = config.save(url=url.rstrip("/"), api_key=api_key)
    if as_json:
        emit({"url": url.rstrip("/"), "config": str(path)})
    else:
        out.print(f"Logged in to {url}; saved to {path}")


# --- models and datasets -----------------------------------------------------------------


def _model_table(items: list[Any]) -> Table:
    table = Table("id", "name", "format", "size", "parameters", "sha256")
    for m in items:
        table.add_row(
            m.id,
            m.name,
            m.format,
            f"{m.size_bytes:,}",
            f"{m.parameter_count or 0:,}",
            m.sha256[:12],
        )
    return ids_in_full(table, "id")


@models_app.command("upload")
def models_upload(
    file: Path,
    name: Annotated[str | None, typer.Option(help="Name shown in lists.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Uploads a model file (or reuses the project's copy with the same sha256)."""
    with client() as c:
        model, reused = _transfer(
            f"uploading {file.name}",
            lambda p: c.upload_model_reused(file, name=name, progress=p),
        )
    if as_json:
        emit({**model.model_dump(mode="json"), "reused": reused})
    else:
        out.print(f"{'reused' if reused else 'uploaded'} {model.id} ({model.name})")


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """The project's models, newest first."""
    with client() as c:
        items = list(c.list_models())
    emit(items) if as_json else out.print(_model_table(items))


@models_app.command("show")
def models_show(model_id: str, as_json: JsonOpt = False) -> None:
    """One model: its format, size, parameters and sha256 (--json: everything its upload
    found, inputs and outputs too)."""
    with client() as c:
        model = c.get_model(model_id)
    if as_json:
        emit(model)
        return
    out.print(_model_table([model]))
    for kind, tensors in (("input", model.inputs), ("output", model.outputs)):
        for t in tensors:
            out.print(f"{kind} {t.name}: {t.dtype} {t.shape}")


@models_app.command("download")
def models_download(
    model_id: str,
    to: Annotated[Path, typer.Option("--to", help="Folder to write into.")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Downloads an uploaded model, checked against its sha256."""
    with client() as c:
        model = c.get_model(model_id)
        path = _transfer(
            f"downloading {model.name}",
            lambda p: c.download_model_file(model_id, to / model.name, progress=p),
        )
    emit({"path": str(path.resolve()), "sha256": model.sha256}) if as_json else out.print(str(path))


@datasets_app.command("upload")
def datasets_upload(
    file: Path,
    name: Annotated[str | None, typer.Option(help="Name shown in lists.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Check the arrays against this model id.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Uploads an .npz dataset (or reuses the project's copy with the same sha256)."""
    with client() as c:
        dataset, reused = _transfer(
            f"uploading {file.name}",
            lambda p: c.upload_dataset_reused(file, name=name, model_id=model, progress=p),
        )
    if as_json:
        emit({**dataset.model_dump(mode="json"), "reused": reused})
    else:
        out.print(f"{'reused' if reused else 'uploaded'} {dataset.id} ({dataset.name})")


def _dataset_table(items: list[Any]) -> Table:
    table = Table("id", "name", "samples", "labels", "size", "sha256")
    for d in items:
        table.add_row(
            d.id, d.name, str(d.num_samples), str(d.has_labels), f"{d.size_bytes:,}", d.sha256[:12]
        )
    return ids_in_full(table, "id")


@datasets_app.command("list")
def datasets_list(as_json: JsonOpt = False) -> None:
    """The project's datasets, newest first."""
    with client() as c:
        items = list(c.list_datasets())
    emit(items) if as_json else out.print(_dataset_table(items))


@datasets_app.command("show")
def datasets_show(dataset_id: str, as_json: JsonOpt = False) -> None:
    """One dataset: its samples, whether it has labels, its size and sha256."""
    with client() as c:
        dataset = c.get_dataset(dataset_id)
    emit(dataset) if as_json else out.print(_dataset_table([dataset]))


# --- submit ------------------------------------------------------------------------------


def _resolve_inputs(
    c: Client, spec_file: specs.SpecFile, model: str | None, dataset: list[str]
) -> specs.SpecFile:
    """Uploads (or reuses) the local files the spec names and puts their ids in their place."""
    aliases = dict(spec_file.datasets)
    for item in dataset:
        name, sep, value = item.partition("=")
        if not sep:
            fail(Exit.USAGE, f"--dataset takes NAME=FILE|ID, not {item!r}")
        aliases[name] = value
    documents: list[dict[str, Any]] = spec_file.jobs or [spec_file.sweep["spec"]]  # type: ignore[index]
    if model:
        for document in documents:
            document["model_id"] = model
    model_ids: dict[str, str] = {}
    for value in {v for d in documents for v in specs.references(d, "model_id")}:
        path = specs.local_file(value, spec_file.folder)
        if path is not None:
            model_ids[value] = _transfer(
                f"model {path.name}", lambda p, path=path: c.upload_model(path, progress=p)
            ).id
    first_model = next(iter(model_ids.values()), None)
    dataset_ids: dict[str, str] = {}
    for value in {v for d in documents for v in specs.references(d, "dataset_id")}:
        target = aliases.get(value, value)
        path = specs.local_file(target, spec_file.folder)
        if path is not None:
            dataset_ids[value] = _transfer(
                f"dataset {path.name}",
                lambda p, path=path: c.upload_dataset(path, model_id=first_model, progress=p),
            ).id
        elif target != value:
            dataset_ids[value] = target
    documents = [
        specs.replace(specs.replace(d, "model_id", model_ids), "dataset_id", dataset_ids)
        for d in documents
    ]
    if spec_file.sweep is not None:
        spec_file.sweep = {**spec_file.sweep, "spec": documents[0]}
    else:
        spec_file.jobs = documents
    return spec_file


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="YAML or JSON: one job, a list, or a sweep.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Model file or id for every job.")
    ] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", help="NAME=FILE|ID: what `dataset_id: NAME` in the spec means."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the jobs to finish.")] = False,
    name: Annotated[str | None, typer.Option(help="A name for the batch.")] = None,
    timeout: TimeoutOpt = None,
    fail_on_slower: FailSlowerOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Submits the jobs a spec file describes; local model and dataset files are uploaded
    first (or reused when the project already has them)."""
    try:
        spec_file = specs.load(spec)
    except specs.SpecFileError as exc:
        fail(Exit.USAGE, str(exc))
    with client() as c:
        spec_file = _resolve_inputs(c, spec_file, model, dataset or [])
        if spec_file.single:
            job = c.submit(spec_file.jobs[0])
            if not wait:
                emit(job) if as_json else out.print(f"submitted job {job.id} ({job.status})")
                return
            _finish_jobs(c, [_wait_job(c, job.id, timeout, as_json)], as_json, fail_on_slower)
            return
        batch = c.submit_batch(
            spec_file.jobs or None, sweep=spec_file.sweep, name=name or spec_file.name
        )
        if not wait:
            if as_json:
                emit(batch)
            else:
                out.print(f"submitted batch {batch.id}: {batch.total} job(s)")
            return
        batch = _wait_batch(c, batch.id, timeout, as_json)
        _finish_jobs(c, c.batch_jobs(batch.id), as_json, fail_on_slower)


# --- auto search -------------------------------------------------------------------------


class Objective(StrEnum):
    latency = "latency"
    size = "size"
    balanced = "balanced"


class Metric(StrEnum):
    accuracy = "accuracy"
    fidelity = "fidelity"


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


def _model_id(c: Client, value: str) -> str:
    path = specs.local_file(value, Path.cwd())
    if path is None:
        return value
    model, _ = _transfer(f"model {path.name}", lambda p: c.upload_model_reused(path, progress=p))
    return str(model.id)


def _dataset_id(c: Client, value: str, model_id: str) -> str:
    path = specs.local_file(value, Path.cwd())
    if path is None:
        return value
    dataset, _ = _transfer(
        f"dataset {path.name}",
        lambda p: c.upload_dataset_reused(path, model_id=model_id, progress=p),
    )
    return str(dataset.id)


@app.command()
def auto(
    model: Annotated[str, typer.Argument(help="Model id, or a model file to upload.")],
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", help="Dataset id or .npz file: calibration, fine-tuning, the drop."
        ),
    ],
    eval_dataset: Annotated[
        str | None,
        typer.Option(
            "--eval-dataset",
            help="Held-out dataset id or .npz file the drop is measured on (default: --dataset).",
        ),
    ] = None,
    objective: Annotated[
        Objective, typer.Option(help="What the answer is best at.")
    ] = Objective.latency,
    max_drop: Annotated[
        float | None,
        typer.Option("--max-drop", help="Largest acceptable drop (service default 0.01)."),
    ] = None,
    metric: Annotated[
        Metric | None,
        typer.Option(help="Default: accuracy when the dataset has labels, else fidelity."),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(help="Most trials (child jobs) to run (default 24).")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(help="Most minutes the search may take (default 30).")
    ] = None,
    allow: Annotated[
        str | None,
        typer.Option(help="Comma-separated techniques: quantize,prune,distill (default all)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Batch size the latency is judged at.")
    ] = None,
    device: Annotated[Device | None, typer.Option(help="Where trials run and are timed.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the search, then print its trials and answer.")
    ] = False,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Searches for the best recipe: the service tries quantization, pruning and distillation
    as trials, measured like any job, and answers with the best model within --max-drop that
    is faster than the original, or says that nothing qualified."""
    techniques = [t.strip() for t in (allow or "").split(",") if t.strip()] or None
    with client() as c:
        model_id = _model_id(c, model)
        spec = search.auto_spec(
            model_id=model_id,
            dataset_id=_dataset_id(c, dataset, model_id),
            eval_dataset_id=_dataset_id(c, eval_dataset, model_id) if eval_dataset else None,
            objective=objective.value,
            max_drop=max_drop,
            metric=metric.value if metric else None,
            trials=trials,
            minutes=minutes,
            allow=techniques,
            batch_size=batch_size,
            device=device.value if device else None,
        )
        job = c.submit(spec)
        if not wait:
            emit(job) if as_json else out.print(f"submitted search {job.id} ({job.status})")
            return
        job = _follow_search(c, job.id, timeout, as_json)
    _finish_jobs(c, [job], as_json, fail_on_slower=False)


def _follow_search(c: Client, job_id: str, timeout: float | None, as_json: bool) -> Job:
    """Prints a line whenever the search's progress or best so far changes (stderr with
    --json): trials done, running, queued and left, the time left, the best so far."""
    console = err if as_json else out
    last = ""

    def on_change(job: Job) -> None:
        nonlocal last
        line = search.progress_line(job)
        # The final state is printed with the table and the answer.
        if line != last and not job.done:
            console.print(line, highlight=False, soft_wrap=True)
            last = line

    try:
        return c.poll(job_id, timeout=timeout, on_change=on_change)
    except WaitTimeout as exc:
        fail(Exit.TIMEOUT, str(exc))


# --- waiting -----------------------------------------------------------------------------


def _wait_job(c: Client, job_id: str, timeout: float | None, as_json: bool) -> Job:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[message]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{job_id}", total=1.0, message="")

        def on_change(job: Job) -> None:
            bar.update(
                task,
                completed=job.progress.fraction,
                description=f"{job.id} {job.status} {job.stage or ''}",
                message=_message(job),
            )

        try:
            return c.wait(job_id, timeout=timeout, on_change=on_change)
        except WaitTimeout as exc:
            fail(Exit.TIMEOUT, str(exc))


def _batch_table(batch: Batch, jobs: list[Job] | None = None) -> Table:
    table = Table(
        title=f"batch {batch.id} {batch.status}: "
        + ", ".join(f"{n} {s}" for s, n in batch.counts.items() if n)
    )
    table.add_column("job")
    table.add_column("what")
    table.add_column("status")
    table.add_column("stage")
    table.add_column("progress", justify="right")
    for job in jobs if jobs is not None else batch.jobs:
        table.add_row(
            job.id, describe(job), _status(job), job.stage or "", f"{job.progress.fraction:.0%}"
        )
    return ids_in_full(table, "job")


def _batch_line(batch: Batch) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in batch.counts.items() if n)
    return f"batch {batch.id} {batch.status}: {counts} (of {batch.total})"


def _wait_batch(c: Client, batch_id: str, timeout: float | None, as_json: bool) -> Batch:
    # The batch's counts while it runs (one line however many jobs); its jobs once it is done.
    with Live(console=err, transient=as_json, refresh_per_second=4) as live:
        try:
            return c.wait_batch(
                batch_id, timeout=timeout, on_change=lambda b: live.update(_batch_line(b))
            )
        except WaitTimeout as exc:
            fail(Exit.TIMEOUT, str(exc))


def _finish_jobs(c: Client, jobs: list[Job], as_json: bool, fail_on_slower: bool) -> None:
    """Prints the finished jobs (a comparison when several) and exits as CI needs."""
    rows = rank(jobs)
    if as_json:
        emit(jobs[0] if len(jobs) == 1 else [r.as_json() for r in rows])
    elif len(jobs) == 1:
        _print_job(jobs[0])
    else:
        out.print(_compare_table(rows))
    _exit_for(jobs, rows, fail_on_slower)


def _exit_for(jobs: list[Job], rows: list[Any], fail_on_slower: bool) -> None:
    bad = [j for j in jobs if j.status in ("failed", "canceled")]
    if bad:
        fail(
            Exit.JOB_FAILED,
            ", ".join(
                f"{j.id} {j.status}" + (f" ({j.error.type}: {j.error.message})" if j.error else "")
                for j in bad
            ),
        )
    if fail_on_slower:
        failing = [r.job.id for r in rows if r.failing]
        if failing:
            fail(
                Exit.SLOWER, "slower than the original or outside tolerance: " + ", ".join(failing)
            )


def _status(job: Job) -> str:
    """The status, and what a queued job waits for when no worker serves its queue."""
    if job.waiting_for:
        return f"{job.status}, waiting for a {job.waiting_for.queue} worker"
    return job.status


def _message(job: Job) -> str:
    return job.waiting_for.reason if job.waiting_for else job.progress.message or ""


def _print_job(job: Job) -> None:
    out.print(f"job {job.id}: {job.status}" + (f" ({job.stage})" if job.stage else ""))
    if job.waiting_for:
        out.print(f"[yellow]waiting[/yellow]: {job.waiting_for.reason}", highlight=False)
    if job.artifacts_expired_at:
        out.print(
            f"artifacts removed by retention on {job.artifacts_expired_at:%Y-%m-%d %H:%M} UTC "
            "(the numbers below are kept)",
            highlight=False,
        )
    if job.error:
        out.print(f"[red]{job.error.type}[/red]: {job.error.message}", highlight=False)
    if job.summary:
        s = job.summary
        out.print(
            f"size ratio {s.size_ratio:.3f}; speedup "
            + ", ".join(f"batch {b}: {v:.2f}x" for b, v in s.speedup_p50.items())
        )
        out.print(s.verdict, highlight=False)
    if search.search_of(job) is not None:
        _print_search(job)


def _print_search(job: Job) -> None:
    out.print(search.progress_line(job), highlight=False, soft_wrap=True)
    table = search.trials_table(job)
    if table is not None:
        out.print(ids_in_full(table, "job"))
    for line in search.answer_lines(job):
        out.print(line, highlight=False, soft_wrap=True)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's jobs.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The project's jobs, newest first, with each one's verdict."""
    with client() as c:
        jobs = []
        for job in c.list_jobs(status=status, batch_id=batch, page_size=min(limit, 100)):
            jobs.append(job)
            if len(jobs) >= limit:
                break
    if as_json:
        emit(jobs)
        return
    table = Table("job", "what", "status", "stage", "created", "verdict")
    for j in jobs:
        table.add_row(
            j.id,
            describe(j),
            _status(j),
            j.stage or "",
            str(j.created_at)[:19],
            j.summary.verdict if j.summary else "",
        )
    out.print(ids_in_full(table, "job"))


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    """One job: its state, what it waits for, its error or its numbers and verdict."""
    with client() as c:
        job = c.get_job(job_id)
    emit(job) if as_json else _print_job(job)


@jobs_app.command("wait")
def jobs_wait(
    job_id: str,
    timeout: TimeoutOpt = None,
    fail_on_slower: FailSlowerOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Waits for a job to finish, with a progress bar; exit code as for submit --wait."""
    with client() as c:
        job = _wait_job(c, job_id, timeout, as_json)
        _finish_jobs(c, [job], as_json, fail_on_slower)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Cancels a queued job at once, a running one as soon as its worker stops it (a second
    or two)."""
    with client() as c:
        job = c.cancel_job(job_id)
    emit(job) if as_json else out.print(f"job {job.id}: {job.status}")


@jobs_app.command("retry")
def jobs_retry(job_id: str, as_json: JsonOpt = False) -> None:
    """A new job with the same spec as a failed or canceled one."""
    with client() as c:
        job = c.retry_job(job_id)
    emit(job) if as_json else out.print(f"job {job.id} retries {job_id} ({job.status})")


@jobs_app.command("events")
def jobs_events(job_id: str, timeout: TimeoutOpt = None, as_json: JsonOpt = False) -> None:
    """Prints the job's state at each change until it is final (JSON lines with --json)."""
    with client() as c:
        try:
            for job in c.events(job_id, timeout=timeout):
                if as_json:
                    sys.stdout.write(job.model_dump_json() + "\n")
                    sys.stdout.flush()
                else:
                    out.print(
                        f"{job.status:10} {job.stage or '':14} "
                        f"{job.progress.fraction:4.0%} {_message(job)}",
                        highlight=False,
                    )
        except WaitTimeout as exc:
            fail(Exit.TIMEOUT, str(exc))


@batches_app.command("list")
def batches_list(
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The project's batches (sweeps), newest first, with their jobs counted by state."""
    with client() as c:
        batches = []
        for batch in c.list_batches(page_size=min(limit, 100)):
            batches.append(batch)
            if len(batches) >= limit:
                break
    if as_json:
        emit([b.model_dump(mode="json", exclude={"jobs"}) for b in batches])
        return
    table = Table("batch", "name", "status", "jobs", "created")
    for b in batches:
        table.add_row(
            b.id,
            b.name or "",
            b.status,
            f"{b.total}: " + ", ".join(f"{n} {s}" for s, n in b.counts.items() if n),
            str(b.created_at)[:19] if b.created_at else "",
        )
    out.print(ids_in_full(table, "batch"))


@batches_app.command("show")
def batches_show(batch_id: str, as_json: JsonOpt = False) -> None:
    """A batch's state and each of its jobs with its state and progress."""
    with client() as c:
        batch = c.get_batch(batch_id)
    emit(batch) if as_json else out.print(_batch_table(batch))


@batches_app.command("wait")
def batches_wait(
    batch_id: str,
    timeout: TimeoutOpt = None,
    fail_on_slower: FailSlowerOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Waits for every job of the batch, with a live table, then compares them."""
    with client() as c:
        batch = _wait_batch(c, batch_id, timeout, as_json)
        _finish_jobs(c, c.batch_jobs(batch.id), as_json, fail_on_slower)


@batches_app.command("cancel")
def batches_cancel(batch_id: str, as_json: JsonOpt = False) -> None:
    """Cancels every unfinished job of the batch."""
    with client() as c:
        batch = c.cancel_batch(batch_id)
    emit(batch) if as_json else out.print(_batch_table(batch))


# --- deleting ----------------------------------------------------------------------------


def _delete(
    what: str, resource_id: str, *, consequence: str, yes: bool, as_json: bool, action: Any
) -> None:
    """Asks first unless --yes; without a terminal to ask on, refuses (exit 2)."""
    if not yes:
        if not sys.stdin.isatty():
            fail(Exit.USAGE, f"deleting {what} {resource_id} cannot be undone; add --yes")
        if not typer.confirm(f"delete {what} {resource_id}{consequence}?", err=True):
            fail(Exit.USAGE, "nothing was deleted")
    with client() as c:
        action(c, resource_id)
    if as_json:
        emit({"id": resource_id, "deleted": True})
    else:
        out.print(f"{what} {resource_id} deleted", highlight=False)


@models_app.command("delete")
def models_delete(model_id: str, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Deletes a model and its file. Refused (exit 5) while an unfinished job reads it."""
    _delete(
        "model",
        model_id,
        consequence=" and its stored file",
        yes=yes,
        as_json=as_json,
        action=Client.delete_model,
    )


@datasets_app.command("delete")
def datasets_delete(dataset_id: str, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Deletes a dataset and its file. Refused (exit 5) while an unfinished job reads it."""
    _delete(
        "dataset",
        dataset_id,
        consequence=" and its stored file",
        yes=yes,
        as_json=as_json,
        action=Client.delete_dataset,
    )


@jobs_app.command("delete")
def jobs_delete(job_id: str, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Deletes a finished job and its artifacts. Refused (exit 5) while it is unfinished:
    cancel it first."""
    _delete(
        "job",
        job_id,
        consequence=", its results and its artifacts",
        yes=yes,
        as_json=as_json,
        action=Client.delete_job,
    )


@batches_app.command("delete")
def batches_delete(batch_id: str, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Deletes a batch, its jobs and their artifacts. Refused (exit 5) while any of its jobs
    is unfinished: cancel the batch first."""
    _delete(
        "batch",
        batch_id,
        consequence=", all its jobs and their artifacts",
        yes=yes,
        as_json=as_json,
        action=Client.delete_batch,
    )


# --- results -----------------------------------------------------------------------------


@app.command()
def download(
    job_id: str,
    to: Annotated[Path, typer.Option("--to", help="Folder to write into.")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Downloads a succeeded job's optimized model, checked against its sha256."""
    with client() as c:
        artifact = c.model_artifact(job_id)
        path = _transfer(
            f"downloading {artifact.name}",
            lambda p: c.download_artifact(artifact, to / artifact.name, progress=p),
        )
    if as_json:
        emit(
            {
                "path": str(path.resolve()),
                "sha256": artifact.sha256,
                "size_bytes": artifact.size_bytes,
            }
        )
    else:
        out.print(f"{path} (sha256 {artifact.sha256[:12]}… verified)")


def _compare_table(rows: list[Any]) -> Table:
    batches = sorted({b for r in rows if r.summary for b in r.summary.speedup_p50}, key=int)
    table = Table(title="best first")
    table.add_column("job")
    table.add_column("what")
    table.add_column("size", justify="right")
    for b in batches:
        table.add_column(f"speedup b={b}", justify="right")
    table.add_column("drop", justify="right")
    table.add_column("verdict")
    for row in rows:
        s = row.summary
        if s is None:
            table.add_row(
                row.job.id, describe(row.job), "", *[""] * len(batches), "", row.job.status
            )
            continue
        speed = []
        for b in batches:
            value = s.speedup_p50.get(b)
            low, high = (s.speedup_interval.get(b) or [None, None])[:2]
            speed.append(
                ""
                if value is None
                else f"{value:.2f}x [{low:.2f}-{high:.2f}]"
                if low is not None
                else f"{value:.2f}x"
            )
        drop = "" if s.drop is None else f"{s.drop:.4f} {s.metric or ''}"
        if s.within_tolerance is False:
            drop += " (over max)"
        style = "red" if row.slower else None
        mark = "SLOWER " if row.slower else ""
        table.add_row(
            row.job.id,
            describe(row.job),
            f"{s.size_ratio:.3f}",
            *speed,
            drop,
            mark + s.verdict,
            style=style,
        )
    return ids_in_full(table, "job")


@app.command()
def compare(
    ids: Annotated[list[str], typer.Argument(help="Job ids and batch ids.")],
    fail_on_slower: FailSlowerOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """One table of size ratio, speedup per batch size with its interval, drop and verdict,
    best first; rows slower than the original are marked."""
    jobs: list[Job] = []
    with client() as c:
        for item in ids:
            if item.startswith("bat"):
                jobs += c.batch_jobs(item)
            else:
                jobs.append(c.get_job(item))
    rows = rank(jobs)
    if as_json:
        emit([r.as_json() for r in rows])
    else:
        out.print(_compare_table(rows))
    _exit_for(jobs, rows, fail_on_slower)


# --- admin -------------------------------------------------------------------------------


@app.command("workers")
def workers_list(as_json: JsonOpt = False) -> None:
    """The workers serving this service: queues, cores, device, current job (admin)."""
    with client() as c:
        found = c.workers()
    if as_json:
        emit(found)
        return
    table = Table("worker", "state", "queues", "cores", "device", "job", "refused")
    for w in found:
        table.add_row(
            w.name,
            w.state,
            ",".join(w.queues),
            ",".join(str(core) for core in w.cores),
            _device(w),
            w.current_job_id or ("busy" if w.busy else ""),
            "; ".join(f"{queue}: {reason}" for queue, reason in w.refused.items()),
        )
    out.print(table)


def _device(worker: Worker) -> str:
    device = worker.device
    if device.get("kind") != "cuda":
        return str(device.get("kind") or "")
    memory = device.get("memory_bytes")
    size = f", {memory / 1024**3:.0f} GiB" if isinstance(memory, int) else ""
    return f"{device.get('name') or 'cuda'}{size}"


@keys_app.command("list")
def keys_list(
    project: Annotated[str | None, typer.Option(help="Project id (instance admins).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The keys of your project (or of --project, for instance admins); never their secrets."""
    with client() as c:
        keys = c.request_json("GET", "/v1/keys", params={"project_id": project} if project else {})
    if as_json:
        emit(keys)
        return
    table = Table("id", "project", "name", "prefix", "scopes", "revoked")
    for k in keys:
        table.add_row(
            k["id"],
            k["project_id"],
            k["name"],
            k["prefix"],
            ",".join(k["scopes"]),
            str(k.get("revoked_at") or ""),
        )
    out.print(ids_in_full(table, "id", "project"))


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="Project id.")],
    name: Annotated[str, typer.Option(help="Name of the key.")],
    scope: Annotated[list[str] | None, typer.Option(help="read, write, admin (repeat).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Creates a key; the secret is shown only this once."""
    with client() as c:
        key = c.request_json(
            "POST",
            "/v1/keys",
            json={"project_id": project, "name": name, "scopes": scope or ["read", "write"]},
        )
    emit(key) if as_json else out.print(f"{key['id']}: {key['key']}  (shown only now)")


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    """Revokes a key: the next request with it is refused."""
    with client() as c:
        key = c.request_json("DELETE", f"/v1/keys/{key_id}")
    emit(key) if as_json else out.print(f"revoked {key['id']}")


@projects_app.command("list")
def projects_list(as_json: JsonOpt = False) -> None:
    """Every project, with its number of active keys."""
    with client() as c:
        projects = c.request_json("GET", "/v1/projects")
    if as_json:
        emit(projects)
        return
    table = Table("id", "name", "active keys")
    for p in projects:
        table.add_row(p["id"], p["name"], str(p.get("active_keys", "")))
    out.print(ids_in_full(table, "id"))


@projects_app.command("create")
def projects_create(name: str, as_json: JsonOpt = False) -> None:
    """Creates a project; `keys create --project` then gives it keys."""
    with client() as c:
        project = c.request_json("POST", "/v1/projects", json={"name": name})
    emit(project) if as_json else out.print(f"created project {project['id']} ({name})")


def main() -> None:
    """Runs the CLI, turning the client's errors into messages and exit codes."""
    try:
        app()
    except ApiError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in exc.errors
        )
        err.print(f"[red]error {exc.status}:[/red] {exc.detail}", highlight=False)
        if where and where not in exc.detail:
            err.print(where, highlight=False)
        sys.exit(int(Exit.API_ERROR))
    except JobNotSucceeded as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(int(Exit.JOB_FAILED))
    except WaitTimeout as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(int(Exit.TIMEOUT))
    except ConnectionFailed as exc:
        err.print(f"[red]error:[/red] cannot reach the service: {exc}", highlight=False)
        sys.exit(int(Exit.UNREACHABLE))
    except ChecksumMismatch as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(int(Exit.CHECKSUM))
    except ModelpressError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(int(Exit.USAGE))


if __name__ == "__main__":
    main()
