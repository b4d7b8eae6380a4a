r"""`cuda` jobs through the worker's own code on a GPU machine, and what of it ran on the GPU.

Device command. Prepare the wheels here once, in the repository root (`.whl/` is git-ignored;
the lent machine has torch, onnx, onnxruntime (CPU build), numpy and psutil, not these):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl \
      pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
      typing-extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
      SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 python-json-logger==4.2.0 \
      onnx2torch==1.5.15 torch-pruning==1.6.1

then one `run` call with carry [".whl"] and timeout_s 330 (`--quick`; 600 for a full run):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      .whl/*.whl || { python3 -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; } \
      || exit; set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu_worker_check.py --quick \
      2>&1 | tee $OUT/gpu_worker_check.txt

The wheels go into the interpreter's own environment, not only `--target /tmp/site`: the job
host starts with a fresh environment (PYTHONPATH = the code folders alone) and, confined, a
private /tmp, so packages found only through PYTHONPATH=/tmp/site are missing in every job.
The fallback keeps the run going where that environment is read-only; the sandbox check
below then says what a job cannot import.

What it does, in a throwaway data folder (SQLite database built by the real migrations, local
storage): the worker's GPU self-check (worker.gpu_probe, as a worker started for the `gpu`
queue runs it); what a job process sees inside the job sandbox (bubblewrap where `bwrap` runs,
else unconfined with MODELPRESS_UNSAFE_UNCONFINED_JOBS=true, said in the output); then a
generated model (bench/models.py) and dataset stored as an upload would be, and three jobs with
`benchmark.device: cuda` (fp16, int8 static, 2:4 prune) inserted as the API inserts them and
run through `worker.runner.execute_job` in this process, as a Celery task runs it. Per job:
status, the result's environment, speed-up against float32 with its interval, fidelity; for
2:4, its model's largest layer timed dense against torch's semi-structured sparse kernels.

Where a CUDA device exists but onnxruntime has no CUDA execution provider, every `cuda` job
stops before its passes (the worker refuses a benchmark it cannot run on the device), so it
also runs the 2:4 pass alone on the GPU (the code a job process would run, called directly)
and the fp16 and int8 jobs with device `cpu` through the worker, to show which part is missing.

Exit status: 0 every `cuda` job ran on the GPU through the worker; 2 no CUDA device, nothing
ran on a GPU; 3 a CUDA device but no CUDA execution provider, so only torch-side work ran on
the GPU; 1 anything else failed (a job, the sandbox, the time bound).

    python bench/gpu_worker_check.py [--quick] [--model mlp] [--time-limit 480]
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: What the summary says on a machine without a CUDA device (tests/worker look for it).
NO_DEVICE = "no CUDA device: nothing ran on a GPU"
EXIT_ALL_ON_GPU, EXIT_FAILED, EXIT_NO_DEVICE, EXIT_NO_CUDA_PROVIDER = 0, 1, 2, 3
#: How a `cuda` job fails on a worker whose onnxruntime lacks the provider (optimizers.measure).
NO_PROVIDER_TEXT = "no CUDA execution provider"
#: Seconds kept back at the end for the summary and clean-up.
_MARGIN_S = 20.0

#: What a job process imports (onnx2torch only found: the prune pass imports it with care for
#: torchvision, optimizers/trainable/onnx_to_module.py), checked inside the job sandbox.
_SANDBOX_IMPORTS = (
    "pydantic",
    "torch_pruning",
    "optimizers.pipeline",
    "optimizers.trainable.prune",
    "worker.jobproc",
)
_SANDBOX_CHECK = """
import json, importlib, importlib.util
found = {}
for name in IMPORTS:
    try:
        importlib.import_module(name)
    except Exception as exc:
        found[name] = f"{type(exc).__name__}: {exc}"
if importlib.util.find_spec("onnx2torch") is None:
    found["onnx2torch"] = "not installed"
import onnxruntime
found["onnxruntime_providers"] = onnxruntime.get_available_providers()
try:
    import torch
    found["torch"] = torch.__version__
    found["torch_cuda"] = torch.cuda.is_available()
    if found["torch_cuda"]:
        found["torch_device"] = torch.cuda.get_device_name(0)
except Exception as exc:
    found["torch"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(found))
""".replace("IMPORTS", repr(_SANDBOX_IMPORTS))


@dataclass
class Sizes:
    """The run's sizes: `--quick` for about three minutes on a GPU machine."""

    batch_sizes: list[int]
    warmup: int
    iterations: int
    samples: int
    sparse_iterations: int
    sparse_warmup: int
    #: Fine-tuning after 2:4 pruning: the part of the 2:4 pass that trains on the device.
    finetune_epochs: int


QUICK = Sizes(
    batch_sizes=[1, 256],
    warmup=10,
    iterations=100,
    samples=256,
    sparse_iterations=20,
    sparse_warmup=5,
    finetune_epochs=2,
)
FULL = Sizes(
    batch_sizes=[1, 64, 1024],
    warmup=20,
    iterations=300,
    samples=1024,
    sparse_iterations=50,
    sparse_warmup=10,
    finetune_epochs=5,
)


@dataclass
class Findings:
    ran_on_gpu: list[str] = field(default_factory=list)
    not_on_gpu: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 3 minutes on a GPU machine")
    parser.add_argument("--model", default="mlp", help="a model of bench/models.py")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="seconds for the whole run (240 quick, 480)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    limit = args.time_limit or (240.0 if args.quick else 480.0)
    # The last resort if a step hangs past every job limit: tracebacks, then exit status 1.
    faulthandler.dump_traceback_later(limit + 60, exit=True)
    deadline = time.monotonic() + limit
    with tempfile.TemporaryDirectory(prefix="modelpress-gpu-worker-") as tmp:
        return _run(Path(tmp), model_name=args.model, sizes=sizes, limit=limit, deadline=deadline)


def _run(tmp: Path, *, model_name: str, sizes: Sizes, limit: float, deadline: float) -> int:
    findings = Findings()
    confinement = _configure_service(tmp, limit=limit)
    from core.logs import configure_logging
    from core.migrate import upgrade
    from core.settings import get_settings
    from core.storage import get_storage

    settings = get_settings()
    configure_logging(settings, level="WARNING")
    upgrade(settings.resolved_database_url)
    storage = get_storage()
    _section("Machine")
    device = _describe_device()
    torch_cuda = device is not None
    print(f"confinement: {confinement}")

    _section("The worker's GPU self-check (worker.gpu_probe)")
    has_provider, probed = _gpu_self_check(settings)
    if device is None and has_provider:  # onnxruntime's CUDA provider beside a CPU-only torch
        device = {"name": probed.get("name") or "a CUDA device (torch cannot see it)"}

    _section("Inside the job sandbox")
    sandbox_sees_gpu = _sandbox_check(settings, torch_cuda=torch_cuda, findings=findings)

    _section(f"Model and dataset ({model_name}, bench/models.py)")
    project_id, model_id, dataset_id, model_path, data_path = _store_inputs(
        tmp / "inputs", model_name=model_name, samples=sizes.samples, storage=storage
    )
    # As in the worker (worker/celery_app.py): the benchmark's gc.collect() would otherwise
    # scan everything torch and the service loaded.
    gc.freeze()

    _section("cuda jobs through the worker (worker.runner.execute_job)")
    outcomes: dict[str, dict[str, Any]] = {}
    for name, passes in _passes(dataset_id, sizes).items():
        outcome = _run_job(
            name=name,
            passes=passes,
            device="cuda",
            ids=(project_id, model_id, dataset_id),
            sizes=sizes,
            deadline=deadline,
            settings=settings,
            storage=storage,
        )
        if outcome is None:
            findings.failures.append(f"{name} job (cuda): skipped, the time bound came first")
            continue
        outcomes[name] = outcome
        _judge_cuda_job(name, outcome, has_provider=has_provider, findings=findings)
        if name == "2:4" and outcome["status"] == "succeeded" and torch_cuda:
            _time_two_four(
                _fetch_model(outcome, storage, tmp / "two-four-job.onnx"),
                sizes=sizes,
                where="the 2:4 job's model",
                findings=findings,
            )

    if device is not None and not has_provider:
        _section("What could run without the CUDA execution provider")
        two_four = outcomes.get("2:4")
        left = deadline - time.monotonic() - _MARGIN_S
        if left < 60:
            findings.failures.append(f"the 2:4 pass alone: skipped, {left:.0f} s left")
        elif two_four is not None and two_four["status"] != "succeeded":
            _two_four_alone(
                model_path,
                tmp / "two-four-alone",
                config=_passes(dataset_id, sizes)["2:4"][0],
                datasets={dataset_id: data_path},
                sizes=sizes,
                findings=findings,
            )
        for name, passes in _passes(dataset_id, sizes).items():
            if name == "2:4":  # needs benchmark.device cuda
                continue
            outcome = _run_job(
                name=name,
                passes=passes,
                device="cpu",
                ids=(project_id, model_id, dataset_id),
                sizes=sizes,
                deadline=deadline,
                settings=settings,
                storage=storage,
            )
            if outcome is None:
                findings.not_on_gpu.append(f"{name} job (cpu control): skipped, time bound")
            elif outcome["status"] == "succeeded":
                findings.not_on_gpu.append(
                    f"{name} job with device cpu (control): succeeded through the worker on "
                    "this machine's CPU, so the worker path itself works here"
                )
            else:
                findings.failures.append(
                    f"{name} job with device cpu (control) {outcome['status']}: "
                    f"{outcome['error_type']}: {outcome['error_message']}"
                )
    if torch_cuda and not sandbox_sees_gpu:
        findings.failures.append("torch sees the GPU in this process but not inside the sandbox")
    return _summary(findings, device=device, has_provider=has_provider)


# --- set-up ---------------------------------------------------------------------------------


def _configure_service(tmp: Path, *, limit: float) -> str:
    """The service's settings for this run, through its environment variables: a throwaway
    data folder, and job limits inside the run's time bound. Returns how jobs are confined."""
    for name in [name for name in os.environ if name.startswith("MODELPRESS_")]:
        del os.environ[name]
    os.environ |= {
        "MODELPRESS_DATA_DIR": str(tmp / "data"),
        "MODELPRESS_JOB_SOFT_TIME_LIMIT_S": str(int(limit)),
        "MODELPRESS_JOB_HARD_TIME_LIMIT_S": str(int(limit) + 30),
        "MODELPRESS_TASK_TIME_LIMIT_S": str(int(limit) + 60),
        "MODELPRESS_GPU_CHECK_TIMEOUT_S": "120",
    }
    # `python -m worker.gpu_probe` (the self-check's own process) imports from the checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    from core.sandbox import probe
    from core.settings import get_settings

    reason: str | None
    if shutil.which("bwrap") is None:
        reason = "bubblewrap (bwrap) is not installed here"
    else:
        reason = probe(get_settings(), max_age_s=0)
        if reason is None:
            return "confined by bubblewrap, as a worker runs jobs by default"
    os.environ["MODELPRESS_UNSAFE_UNCONFINED_JOBS"] = "true"
    get_settings.cache_clear()
    return (
        f"UNCONFINED: {reason}, so jobs run with MODELPRESS_UNSAFE_UNCONFINED_JOBS=true "
        "(the same job host and job process, without the sandbox around them)"
    )


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _describe_device() -> dict[str, Any] | None:
    """CUDA device 0 as torch sees it in this process, or None."""
    import onnxruntime as ort
    import torch

    print(f"python {sys.version.split()[0]} at {sys.executable}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), onnxruntime {ort.__version__}")
    print(f"onnxruntime execution providers: {ort.get_available_providers()}")
    # A job's process starts with a fresh environment (core.sandbox): where CUDA's libraries
    # are found only through this variable, a job cannot load them.
    print(f"LD_LIBRARY_PATH (not passed to jobs): {os.environ.get('LD_LIBRARY_PATH', '')!r}")
    if not torch.cuda.is_available():
        print("CUDA device: none (torch.cuda.is_available() is False)")
        return None
    props = torch.cuda.get_device_properties(0)
    device = {
        "name": props.name,
        "memory_mib": int(props.total_memory) // 2**20,
        "compute_capability": f"{props.major}.{props.minor}",
    }
    print(
        f"CUDA device 0: {device['name']}, {device['memory_mib']} MiB, compute capability "
        f"{device['compute_capability']}"
    )
    return device


def _gpu_self_check(settings: Any) -> tuple[bool, dict[str, Any]]:
    """Runs the self-check a worker started with `-Q cpu,gpu` runs: whether it passed, and
    the device it reported."""
    from worker.gpu_check import choose_queues

    began = time.monotonic()
    choice = choose_queues(["cpu", "gpu"], timeout_s=settings.gpu_check_timeout_s)
    seconds = time.monotonic() - began
    if "gpu" in choice.refused:
        print(f"verdict ({seconds:.1f} s): FAILED: {choice.refused['gpu']}")
        print(
            "a worker started for the gpu queue refuses it (exit status 69 when started for "
            "it alone) and serves only: " + ", ".join(choice.queues)
        )
        return False, {}
    print(f"verdict ({seconds:.1f} s): OK; the worker takes the gpu queue")
    print(f"device it reports: {json.dumps(choice.device)}")
    return True, choice.device


def _sandbox_check(settings: Any, *, torch_cuda: bool, findings: Findings) -> bool:
    """What a job process can import and see, started the way the job host is. True when its
    torch sees the GPU too (or this process's torch sees none)."""
    from core.sandbox import SandboxUnavailable, host_command

    scratch = settings.tmp_dir / "gpu-check-sandbox"
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)  # HOME and TMPDIR when unconfined
    try:
        command = host_command(
            settings, scratch=scratch, channel_fd=-1, program=["-c", _SANDBOX_CHECK]
        )
        done = subprocess.run(
            command.argv,
            env=command.env,
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    except (SandboxUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        findings.failures.append(f"the job sandbox could not start: {exc}")
        print(f"FAILED: the job sandbox could not start: {exc}")
        return False
    lines = done.stdout.strip().splitlines()
    try:
        seen: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        seen = {}
    if not seen:
        tail = done.stderr.strip().splitlines()[-5:]
        findings.failures.append(f"the job sandbox's Python failed (exit {done.returncode})")
        print(f"FAILED (exit {done.returncode}):", *tail, sep="\n  ")
        return False
    missing = {name: seen[name] for name in (*_SANDBOX_IMPORTS, "onnx2torch") if name in seen}
    print(f"torch {seen.get('torch')}, CUDA visible: {seen.get('torch_cuda')}", end="")
    print(f" ({seen['torch_device']})" if seen.get("torch_device") else "")
    print(f"onnxruntime providers: {seen.get('onnxruntime_providers')}")
    for name, error in missing.items():
        print(f"cannot import {name}: {error}")
        findings.failures.append(
            f"a job process cannot import {name} ({error}); install the wheels into the "
            "interpreter's environment, not only with --target"
        )
    if torch_cuda and not seen.get("torch_cuda"):
        print("the GPU is visible to this process but not to a job process in the sandbox")
        return False
    return True


def _store_inputs(
    folder: Path, *, model_name: str, samples: int, storage: Any
) -> tuple[str, str, str, Path, Path]:
    """A project, a model and a dataset as the API stores uploads: inspected, then rows and
    objects. Returns their ids and copies of the two files."""
    from bench.models import MODELS, export_model, make_dataset
    from core.db import new_id, session_scope, utcnow
    from core.storage_keys import dataset_key, model_key
    from core.tables import Dataset, Project, StoredModel
    from optimizers.datasets import inspect_dataset
    from optimizers.formats.kinds import storage_name
    from optimizers.formats.upload import inspect_upload

    folder.mkdir(parents=True)
    spec = MODELS[model_name]
    model_path = export_model(spec, folder / f"{model_name}.onnx")
    data_path = make_dataset(spec, model_path, folder / "data.npz", samples=samples, seed=0)
    info = inspect_upload(model_path, max_total_bytes=2**34, fields={}, tmp_dir=folder / "tmp")
    data_info = inspect_dataset(data_path)
    project_id, model_id, dataset_id = new_id("prj"), new_id("mdl"), new_id("dst")
    stored_model = model_key(project_id, model_id, storage_name(info.format))
    stored_data = dataset_key(project_id, dataset_id)
    for key, path in ((stored_model, model_path), (stored_data, data_path)):
        copy = folder / f"upload-{path.name}"
        shutil.copyfile(path, copy)
        storage.put_file(key, copy)
    with session_scope() as session:
        session.add(
            Project(id=project_id, name=f"gpu-check-{project_id[-8:]}", created_at=utcnow())
        )
        session.flush()
        session.add(
            StoredModel(
                id=model_id,
                project_id=project_id,
                name=model_path.name,
                format=info.format,
                sha256=_sha256(model_path),
                size_bytes=model_path.stat().st_size,
                storage_key=stored_model,
                info=info.model_dump(mode="json"),
            )
        )
        session.add(
            Dataset(
                id=dataset_id,
                project_id=project_id,
                name="data.npz",
                sha256=_sha256(data_path),
                size_bytes=data_path.stat().st_size,
                storage_key=stored_data,
                info=data_info.model_dump(mode="json"),
            )
        )
    print(
        f"{spec.description}: {model_path.stat().st_size / 1e6:.1f} MB; dataset of {samples} "
        "samples labelled with the float model's own top-1 class"
    )
    return project_id, model_id, dataset_id, model_path, data_path


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- jobs -----------------------------------------------------------------------------------


def _passes(dataset_id: str, sizes: Sizes) -> dict[str, list[dict[str, Any]]]:
    """The three jobs' passes. The 2:4 pass fine-tunes: its masks are computed on the CPU
    whatever the device, its training runs on the job's device."""
    return {
        "fp16": [{"kind": "quantize", "method": "fp16"}],
        "int8": [
            {
                "kind": "quantize",
                "method": "static",
                "calibration": {"dataset_id": dataset_id, "samples": 128},
            }
        ],
        "2:4": [
            {
                "kind": "prune",
                "method": "2:4",
                "finetune": {
                    "dataset_id": dataset_id,
                    "epochs": sizes.finetune_epochs,
                    "batch_size": 64,
                },
            }
        ],
    }


def _run_job(
    *,
    name: str,
    passes: list[dict[str, Any]],
    device: str,
    ids: tuple[str, str, str],
    sizes: Sizes,
    deadline: float,
    settings: Any,
    storage: Any,
) -> dict[str, Any] | None:
    """Inserts a queued job as the API does (checked spec, `gpu` queue for cuda) and runs it
    as a worker's task does. None when the run's time bound leaves too little for it."""
    from sqlalchemy import select

    from core.db import new_id, session_scope, utcnow
    from core.jobspec import JobSpec
    from core.tables import Dataset, Job, JobStatus, StoredModel
    from optimizers.checks import check_spec
    from optimizers.results import DatasetInfo, ModelInfo
    from worker.runner import execute_job

    project_id, model_id, dataset_id = ids
    left = deadline - time.monotonic() - _MARGIN_S
    if left < 30:
        print(f"\n[{name} / {device}] skipped: {left:.0f} s left of the run's time bound")
        return None
    spec = JobSpec.model_validate(
        {
            "model_id": model_id,
            "passes": passes,
            "evaluate": {"dataset_id": dataset_id, "max_drop": 0.05},
            "benchmark": {
                "device": device,
                "batch_sizes": sizes.batch_sizes,
                "warmup": sizes.warmup,
                "iterations": sizes.iterations,
            },
            "limits": {"soft_time_limit_s": left - 20, "hard_time_limit_s": left},
            "max_attempts": 1,
        }
    )
    with session_scope() as session:
        model = session.get(StoredModel, model_id)
        dataset = session.get(Dataset, dataset_id)
        assert model is not None and dataset is not None
        check_spec(
            ModelInfo.model_validate(model.info),
            spec,
            {dataset_id: DatasetInfo.model_validate(dataset.info)},
        )
        now = utcnow()
        job = Job(
            id=new_id("job"),
            project_id=project_id,
            model_id=model_id,
            spec=spec.model_dump(mode="json", exclude_unset=True),
            dataset_ids=[dataset_id],
            extra_model_ids=[],
            queue="gpu" if device == "cuda" else "cpu",
            status=JobStatus.queued,
            progress=0.0,
            attempts=0,
            max_attempts=1,
            created_at=now,
            queued_at=now,
            sent_at=now,
        )
        session.add(job)
        job_id = job.id
    began = time.monotonic()
    returned = execute_job(job_id, settings=settings, storage=storage)
    seconds = time.monotonic() - began
    with session_scope() as session:
        row = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        outcome = {
            "job_id": job_id,
            "returned": returned,
            "status": row.status,
            "error_type": row.error_type,
            "error_message": row.error_message,
            "result": row.result or {},
            "seconds": seconds,
        }
    _print_job(name, device, outcome)
    return outcome


def _print_job(name: str, device: str, outcome: dict[str, Any]) -> None:
    print(
        f"\n[{name} / device {device}] {outcome['job_id']}: {outcome['status']} "
        f"after {outcome['seconds']:.1f} s"
    )
    if outcome["returned"] is None:
        print("  the worker did not run it (see the log lines above: its sandbox did not start)")
    if outcome["error_type"]:
        print(f"  error: {outcome['error_type']}: {outcome['error_message']}")
    metrics = outcome["result"].get("metrics") or {}
    if not metrics:
        return
    env = metrics.get("environment") or {}
    gpu = env.get("gpu_device") or {}
    memory = f"{gpu['memory_bytes'] // 2**20} MiB" if gpu.get("memory_bytes") else "memory ?"
    described = (
        f"GPU {env.get('gpu')} ({memory}, driver {gpu.get('driver')}, compute capability "
        f"{gpu.get('compute_capability')})"
        if env.get("device") == "cuda"
        else f"CPU {env.get('cpu_model')}"
    )
    print(
        f"  environment: device {env.get('device')}, execution provider "
        f"{env.get('execution_provider')}, {described}, onnxruntime "
        f"{(env.get('versions') or {}).get('onnxruntime')}, {env.get('threads')} threads"
    )
    comparison = metrics.get("comparison") or {}
    intervals = comparison.get("speedup_interval") or {}
    speedups = comparison.get("speedup_p50") or {}
    print("  speed-up against float32, p50 [95% interval of paired runs]:")
    for batch, speedup in speedups.items():
        low, high = intervals.get(batch, [None, None])
        base = metrics["baseline"]["latency_ms"][batch]["p50"]
        optimized = metrics["optimized"]["latency_ms"][batch]["p50"]
        print(
            f"    batch {batch}: {speedup:.2f}x [{low:.2f}, {high:.2f}]  "
            f"(p50 {base:.3f} ms -> {optimized:.3f} ms)"
        )
    fidelity = metrics.get("fidelity") or {}
    agreement = fidelity.get("top1_agreement")
    print(
        f"  fidelity: cosine mean {fidelity.get('cosine_mean', float('nan')):.6f}, min "
        f"{fidelity.get('cosine_min', float('nan')):.6f}, top-1 agreement "
        f"{'-' if agreement is None else f'{agreement:.3f}'} on {fidelity.get('samples')} "
        f"samples; accuracy {metrics['baseline'].get('accuracy')} -> "
        f"{metrics['optimized'].get('accuracy')}"
    )
    print(
        f"  size {metrics['baseline']['size_bytes'] / 1e6:.2f} MB -> "
        f"{metrics['optimized']['size_bytes'] / 1e6:.2f} MB; verdict: {comparison.get('verdict')}"
    )
    for entry in outcome["result"].get("passes") or []:
        details = entry.get("details") or {}
        if "sparsity" in details:
            print(f"  pass details: sparsity {details['sparsity']:.3f} of the pruned layers")


def _judge_cuda_job(
    name: str, outcome: dict[str, Any], *, has_provider: bool, findings: Findings
) -> None:
    env = (outcome["result"].get("metrics") or {}).get("environment") or {}
    if (
        outcome["status"] == "succeeded"
        and env.get("execution_provider") == "CUDAExecutionProvider"
    ):
        findings.ran_on_gpu.append(
            f"{name} job through the worker: passes, evaluation and benchmark with onnxruntime's "
            f"CUDA execution provider on {env.get('gpu')}"
        )
        return
    message = outcome["error_message"] or ""
    if not has_provider and outcome["status"] == "failed" and NO_PROVIDER_TEXT in message:
        findings.not_on_gpu.append(
            f"{name} job (device cuda) through the worker: failed before its passes, as it "
            f"must without the CUDA execution provider ({outcome['error_type']})"
        )
        return
    findings.failures.append(
        f"{name} job (device cuda) {outcome['status']}: {outcome['error_type']}: {message}"
    )


# --- 2:4 on the GPU -------------------------------------------------------------------------


def _fetch_model(outcome: dict[str, Any], storage: Any, dest: Path) -> Path:
    from sqlalchemy import select

    from core.db import session_scope
    from core.tables import Artifact

    with session_scope() as session:
        key = session.execute(
            select(Artifact.storage_key).where(
                Artifact.job_id == outcome["job_id"], Artifact.kind == "model"
            )
        ).scalar_one()
    return Path(storage.fetch_to(key, dest))


def _two_four_alone(
    model_path: Path,
    workdir: Path,
    *,
    config: dict[str, Any],
    datasets: dict[str, Path],
    sizes: Sizes,
    findings: Findings,
) -> None:
    """The 2:4 pass called directly with device cuda (the code a job process runs), outside
    the worker: what of the 2:4 job the GPU can do without onnxruntime's CUDA provider (its
    fine-tuning; the masks are computed on the CPU)."""
    import torch

    from optimizers.config import PruneConfig
    from optimizers.registry import run_pass
    from optimizers.results import PassContext

    print("\n[2:4 pass with fine-tuning, alone, device cuda, outside the worker]")
    torch.cuda.reset_peak_memory_stats()
    began = time.monotonic()
    try:
        result = run_pass(
            model_path,
            PruneConfig.model_validate(config),
            PassContext(workdir=workdir, datasets=datasets, device="cuda"),
        )
    except Exception as exc:
        findings.failures.append(f"the 2:4 pass alone on cuda failed: {type(exc).__name__}: {exc}")
        print(f"  FAILED: {type(exc).__name__}: {exc}")
        return
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    print(
        f"  {time.monotonic() - began:.1f} s, sparsity {result.details.get('sparsity'):.3f} of "
        f"the pruned layers, kept dense: {result.details.get('kept_layers') or 'none'}; "
        f"{peak_mb:.0f} MB allocated on the GPU"
    )
    if peak_mb > 0:
        findings.ran_on_gpu.append(
            f"the 2:4 pass's fine-tuning ({sizes.finetune_epochs} epochs, torch on cuda, "
            f"{peak_mb:.0f} MB on the GPU), the pass called directly outside the worker"
        )
    else:
        findings.failures.append(
            "the 2:4 pass's fine-tuning with device cuda allocated nothing on the GPU"
        )
    _time_two_four(result.model_path, sizes=sizes, where="the 2:4 pass's model", findings=findings)


def _time_two_four(path: Path, *, sizes: Sizes, where: str, findings: Findings) -> None:
    """The model's largest 2:4 layer in float16, dense against torch's semi-structured sparse
    kernels (bench/gpu_check.py's timing), on CUDA device 0."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from bench.gpu_check import time_sparse_backends

    candidates = []
    for tensor in onnx.load(str(path)).graph.initializer:
        weight = numpy_helper.to_array(tensor)
        if weight.ndim != 2 or weight.shape[0] % 64 or weight.shape[1] % 64:
            continue
        for oriented in (weight, weight.T):  # Gemm stores [out, in], MatMul [in, out]
            if (np.count_nonzero(oriented.reshape(-1, 4), axis=1) <= 2).all():
                candidates.append(np.array(oriented, copy=True))
                break
    if not candidates:
        findings.failures.append(f"{where}: no layer holds the 2:4 pattern at a timeable size")
        print(f"  {where}: no layer with the 2:4 pattern whose sides are multiples of 64")
        return
    dense = torch.from_numpy(max(candidates, key=lambda w: w.size)).half().cuda()
    print(f"\n  semi-structured sparse timing, {where}: largest layer {tuple(dense.shape)} fp16")
    time_sparse_backends(dense, sizes.sparse_iterations, sizes.sparse_warmup)
    findings.ran_on_gpu.append(
        f"2:4 semi-structured sparse timing of {where} (torch, dense fp16 against cuSPARSELt "
        "and CUTLASS)"
    )


# --- summary --------------------------------------------------------------------------------


def _summary(findings: Findings, *, device: dict[str, Any] | None, has_provider: bool) -> int:
    _section("Summary")
    print(f"device: {device['name'] if device else 'none'}")
    print("ran on the GPU:")
    for line in findings.ran_on_gpu or ["nothing"]:
        print(f"  - {line}")
    print("did not run on the GPU:")
    for line in findings.not_on_gpu or ["nothing"]:
        print(f"  - {line}")
    if findings.failures:
        print("FAILED:")
        for line in findings.failures:
            print(f"  - {line}")
    if device is None:
        print(NO_DEVICE)
    elif has_provider and not findings.failures:
        print("every cuda job ran through the worker with onnxruntime's CUDA execution provider")
    elif not has_provider:
        print(
            "the CUDA execution provider is missing (onnxruntime's CPU build): no job with "
            "benchmark.device cuda can run through the worker here; only the torch-side work "
            "listed above ran on the GPU, and the GPU path through the worker stays untested"
        )
    if findings.failures:
        return EXIT_FAILED
    if device is None:
        return EXIT_NO_DEVICE
    return EXIT_ALL_ON_GPU if has_provider else EXIT_NO_CUDA_PROVIDER


if __name__ == "__main__":
    sys.exit(main())
