"""How a job's process is confined: the bubblewrap command line and environment of the job
host (worker.jobhost), and a cheap probe that tells whether this machine can start it.

Shared by the worker (which starts the host) and the API (whose /readyz reports the probe);
imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

#: Where the scratch folder is mounted inside the sandbox (worker.protocol.SANDBOX_SCRATCH).
SANDBOX_SCRATCH = "/job"
#: The packages the job host imports, found without importing them.
_CODE_PACKAGES = ("optimizers", "worker")
#: Environment variables a job may see: none of them holds a secret.
_PASSED_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "TZ")
_PROBE_TIMEOUT_S = 30.0


class SandboxUnavailable(Exception):
    """This machine cannot confine jobs; the message says why."""


@dataclass(frozen=True)
class HostCommand:
    argv: list[str]
    env: dict[str, str]
    #: Whether the host has its own PID namespace (then it is PID 1 there).
    pid_namespace: bool


def host_command(
    settings: Settings, *, scratch: Path, channel_fd: int, program: list[str] | None = None
) -> HostCommand:
    """The command that starts the job host with `scratch` as its only writable folder.
    `program` replaces the host (the probe runs a trivial Python command instead)."""
    venv = Path(sys.prefix).resolve()
    python = str(venv / "bin" / "python")
    confined = not settings.unsafe_unconfined_jobs
    inside_scratch = SANDBOX_SCRATCH if confined else str(scratch)
    args = program or [
        "-m",
        "worker.jobhost",
        "--channel-fd",
        str(channel_fd),
        "--scratch",
        inside_scratch,
        *(["--pid-namespace"] if confined else []),
    ]
    code_roots = _code_roots()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/tmp" if confined else str(scratch / "tmp"),
        "TMPDIR": "/tmp" if confined else str(scratch / "tmp"),
        "USER": "modelpress",
        "LOGNAME": "modelpress",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(str(root) for root in code_roots),
        **{name: os.environ[name] for name in _PASSED_ENV if name in os.environ},
    }
    if not confined:
        return HostCommand(argv=[python, *args], env=env, pid_namespace=False)
    bwrap = shutil.which(settings.bwrap_path)
    if bwrap is None:
        raise SandboxUnavailable(
            f"bubblewrap ({settings.bwrap_path!r}) is not installed: apt-get install bubblewrap"
        )
    argv = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--clearenv",
        *_system_binds(),
        # Before the binds: an installation under /tmp (a CI checkout, say) stays visible.
        "--tmpfs",
        "/tmp",
        *_ro_binds([*_python_roots(venv), *_code_folders()]),
        "--bind",
        str(scratch),
        SANDBOX_SCRATCH,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        *_gpu_binds(),
        "--chdir",
        SANDBOX_SCRATCH,
    ]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    return HostCommand(argv=[*argv, "--", python, *args], env={}, pid_namespace=True)


def _code_folders() -> list[Path]:
    folders = []
    for name in _CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SandboxUnavailable(f"the {name} package cannot be found")
        folders.append(Path(next(iter(spec.submodule_search_locations))).resolve())
    return folders


def _code_roots() -> list[Path]:
    return list(dict.fromkeys(folder.parent for folder in _code_folders()))


def _python_roots(venv: Path) -> list[Path]:
    """The interpreter's installation and the virtual environment, wherever links lead."""
    base = Path(sys.base_prefix).resolve()
    interpreter = Path(os.path.realpath(venv / "bin" / "python"))
    roots = [base, venv, interpreter.parent.parent]
    return [root for root in dict.fromkeys(roots) if not _under(root, Path("/usr"))]


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _ro_binds(paths: list[Path]) -> list[str]:
    args: list[str] = []
    for path in sorted(dict.fromkeys(paths), key=lambda p: len(p.parts)):
        args += ["--ro-bind", str(path), str(path)]
    return args


def _system_binds() -> list[str]:
    """The system's libraries and programs, read-only; on a merged-/usr system /lib and /bin
    are links into /usr."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    for name in ("/etc/ld.so.cache", "/etc/localtime", "/sys/devices/system/cpu"):
        args += ["--ro-bind-try", name, name]
    return args


def _gpu_binds() -> list[str]:
    args: list[str] = []
    for device in sorted(Path("/dev").glob("nvidia*")):
        args += ["--dev-bind", str(device), str(device)]
    return args


_probe_cache: dict[tuple[bool, str, Path], tuple[float, str | None]] = {}


def probe(settings: Settings, *, max_age_s: float = 30.0) -> str | None:
    """None when jobs can be confined on this machine (or the settings allow unconfined
    jobs), else the reason they cannot. Runs the sandbox's Python once (a fraction of a
    second), cached for `max_age_s`."""
    key = (settings.unsafe_unconfined_jobs, settings.bwrap_path, settings.data_dir)
    now = time.monotonic()
    cached = _probe_cache.get(key)
    if cached is not None and now - cached[0] < max_age_s:
        return cached[1]
    reason = _probe(settings)
    _probe_cache[key] = (now, reason)
    return reason


def _probe(settings: Settings) -> str | None:
    if settings.unsafe_unconfined_jobs:
        return None
    scratch = settings.tmp_dir / "sandbox-probe"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        command = host_command(
            settings,
            scratch=scratch,
            channel_fd=-1,
            program=["-c", "import worker.protocol, optimizers"],
        )
        done = subprocess.run(
            command.argv,
            env=command.env,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except SandboxUnavailable as exc:
        return str(exc)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        return (
            f"bubblewrap could not start the job sandbox (exit code {done.returncode}): "
            f"{detail[-1] if detail else 'no message'}"
        )
    return None
