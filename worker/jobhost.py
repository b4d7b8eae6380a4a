"""The confined job host: started fresh (inside bubblewrap) by one worker pool process, it
imports torch and onnxruntime once, then forks one job process per job, so that a job starts
in milliseconds without ever sharing memory with a process that has read the settings.

Run as `python -m worker.jobhost --channel-fd N --scratch DIR [--pid-namespace]`. It never
loads or runs a model itself; the job processes it forks do (worker.jobproc). It imports
nothing of the service (`core`): its environment and file system hold no secret to read.

Protocol on the channel (a Unix socket to the pool process, JSON lines): it sends `ready`;
the pool sends `run` with the job's two pipe ends attached (SCM_RIGHTS) and its limits; the
host answers `started` with the job process's pid (as seen inside the sandbox) and, once it
ended and everything it left behind is gone, `exited` with its exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import shutil
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from worker.protocol import LOG_FILE, encode

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--pid-namespace", action="store_true")
    args = parser.parse_args()
    # Job processes run as the same user: none of them may trace or read this one's memory.
    _prctl(_PR_SET_DUMPABLE, 0)
    channel = socket.socket(fileno=args.channel_fd)
    _preload()
    # The pool process went away: killed with its worker (`kill 0` in `make run`, a
    # container's stop) it resets the channel rather than closing it. Not an error: the host
    # ends quietly, without a traceback in the worker's log.
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        channel.sendall(encode({"type": "ready", "pid": os.getpid()}))
        _serve(channel, args)


def _serve(channel: socket.socket, args: argparse.Namespace) -> None:
    buffer = b""
    while True:
        data, fds, _, _ = socket.recv_fds(channel, 1 << 16, 2)
        if not data:
            return  # the pool process closed the channel
        buffer += data
        if not buffer.endswith(b"\n"):
            for fd in fds:
                os.close(fd)
            continue
        request: dict[str, Any] = json.loads(buffer)
        buffer = b""
        if request.get("type") != "run" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        events_fd, control_fd = fds
        pid = _fork_job(
            channel=channel,
            events_fd=events_fd,
            control_fd=control_fd,
            scratch=args.scratch,
            limits=request["limits"],
            own_namespace=args.pid_namespace,
        )
        os.close(events_fd)
        os.close(control_fd)
        channel.sendall(encode({"type": "started", "pid": pid}))
        _, status = os.waitpid(pid, 0)
        _clean_up(pid, own_namespace=args.pid_namespace)
        code = os.waitstatus_to_exitcode(status)
        channel.sendall(encode({"type": "exited", "pid": pid, "exitcode": code}))


def _preload() -> None:
    from optimizers.pipeline import preload

    preload()
    # Converting PyTorch programs needs torch's ONNX exporter: imported once here, not per job.
    import torch.onnx  # noqa: F401

    import worker.jobproc  # noqa: F401

    # Everything imported so far lives as long as the host and is shared with every job
    # process: kept out of the collector's scans so that forks keep sharing those pages.
    gc.freeze()


def _fork_job(
    *,
    channel: socket.socket,
    events_fd: int,
    control_fd: int,
    scratch: Path,
    limits: dict[str, int],
    own_namespace: bool,
) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # Nothing of the host's may reach the job: not its channel to the pool process.
        channel.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails, typed
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The pool process reads its memory use (/proc/PID/smaps_rollup); the host stays
        # unreadable to it.
        _prctl(_PR_SET_DUMPABLE, 1)
        if os.getppid() != parent:
            os._exit(1)
        if not own_namespace:
            os.setpgid(0, 0)  # the host ends the whole group after the job
        log = os.open(scratch / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.chdir(scratch)
        set_limits(limits)
        from worker.jobproc import run_job

        code = run_job(events_fd=events_fd, control_fd=control_fd, scratch=scratch)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def set_limits(limits: dict[str, int]) -> None:
    """Kernel-enforced limits of the job process (and whatever it starts). Memory counts
    what it has of its own: the data segment it inherits from the host is added."""
    data = _vm_data_bytes() + limits["memory_mb"] * _MB
    cpu = limits["cpu_s"]
    for kind, soft, hard in (
        (resource.RLIMIT_DATA, data, data),
        (resource.RLIMIT_CPU, cpu, cpu + 5),
        (resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"]),
        (resource.RLIMIT_NPROC, limits["processes"], limits["processes"]),
        (resource.RLIMIT_NOFILE, 4096, 4096),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(kind, (soft, hard))


def _vm_data_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


def _clean_up(pid: int, *, own_namespace: bool) -> None:
    """Nothing a job started may outlive it or reach the next job: every process goes, and
    (inside the sandbox) the shared temporary folders are emptied; the pool process empties
    the scratch folder."""
    if own_namespace:
        # The host is the only other process in its PID namespace: -1 is everything else.
        _kill(-1)
    else:
        _kill(-pid)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    if own_namespace:
        keep = _installation()
        for folder in (Path("/tmp"), Path("/dev/shm")):
            if folder.is_dir():
                _empty(folder, keep=keep)


def _installation() -> set[Path]:
    """The folders bound read-only into the sandbox (core.sandbox): an installation that
    lives under /tmp (a CI checkout, say) is mounted inside the emptied /tmp."""
    import optimizers
    import worker

    folders = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parents[1]}
    folders |= {
        Path(package.__file__).parent for package in (optimizers, worker) if package.__file__
    }
    return {folder.resolve() for folder in folders}


def _empty(folder: Path, *, keep: set[Path]) -> None:
    for entry in folder.iterdir():
        if entry in keep:
            continue
        if any(entry in kept.parents for kept in keep):
            _empty(entry, keep=keep)  # a folder on the way to a bound one: only its other entries
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _kill(target: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(target, signal.SIGKILL)


def _prctl(option: int, value: int) -> None:
    # Not Linux: no such call, and the pool process checks the rest.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


if __name__ == "__main__":
    main()
