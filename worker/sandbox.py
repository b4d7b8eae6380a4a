"""The pool process's handle on its confined job host (worker.jobhost) and on the job
process the host forks for each job.

One host per pool process, started fresh with bubblewrap (core.sandbox.host_command): it
imports torch and onnxruntime once, so a job starts in milliseconds. The pool process talks
to the host over a Unix socket, and to each job process over two pipes it creates for that
job and hands over with the request; what the job process writes can never pass for what
the host says (that the job process ended, and with what exit code).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.sandbox import HostCommand, SandboxUnavailable, host_command
from core.settings import Settings
from worker.protocol import LineReader, ProtocolError, encode, wait_readable, write_message
from worker.scratch import ScratchFolder

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: How long the host may take to import torch and onnxruntime on a busy small machine.
_READY_TIMEOUT_S = 600.0
#: How long the host may take to report that a killed job process is gone.
_EXIT_TIMEOUT_S = 15.0
_MB = 1024 * 1024


@dataclass(frozen=True)
class KernelLimits:
    """Limits the kernel enforces on a job process (rlimits; see worker.jobhost)."""

    memory_mb: int
    cpu_s: int
    file_bytes: int
    processes: int


class JobHost:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        root = settings.sandbox_dir
        _remove_stale_scratch(root)
        self.scratch = ScratchFolder(root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.command: HostCommand = host_command(
            settings, scratch=self.scratch.root, channel_fd=theirs.fileno()
        )
        self.process = subprocess.Popen(
            self.command.argv,
            env=self.command.env,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            cwd=self.scratch.root,
        )
        theirs.close()
        self._channel = LineReader(self._sock.fileno())
        self._sock.setblocking(False)
        self._pending: list[dict[str, Any]] = []
        self.ready = False
        self.started_at = time.monotonic()
        #: The host's own pid as this process sees it.
        self.host_pid: int | None = None

    @property
    def confined(self) -> bool:
        return self.command.pid_namespace

    def alive(self) -> bool:
        return self.process.poll() is None and not self._channel.closed

    def wait_ready(self, timeout: float = _READY_TIMEOUT_S) -> float:
        """Seconds the host took to start; raises SandboxUnavailable if it cannot."""
        if not self.ready:
            self._expect("ready", timeout=timeout)
            self.ready = True
            self.host_pid = self._find_host_pid()
        return time.monotonic() - self.started_at

    def _find_host_pid(self) -> int:
        if not self.confined:
            return self.process.pid
        # Inside its namespace the host is PID 1, the child of bubblewrap's own process.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for pid, parent in _parents().items():
                if parent == self.process.pid:
                    return pid
            time.sleep(0.01)
        raise SandboxUnavailable("the job host's process cannot be found")

    def _read(self, timeout: float) -> None:
        wait_readable([self._sock], timeout)
        self._pending.extend(self._channel.read_available())

    def _expect(self, kind: str, *, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for index, message in enumerate(self._pending):
                if message["type"] == kind:
                    return self._pending.pop(index)
            if not self.alive():
                code = self.process.poll()
                raise SandboxUnavailable(
                    f"the job sandbox ended (exit code {code}) before it said {kind!r}; the "
                    "worker log has its output"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxUnavailable(f"the job sandbox did not say {kind!r} in {timeout:.0f} s")
            self._read(min(left, 0.5))

    def start_job(self, limits: KernelLimits) -> JobProcess:
        """Starts the job described in the scratch folder (written by the caller)."""
        self.wait_ready()
        events_read, events_write = os.pipe()
        control_read, control_write = os.pipe()
        try:
            message = encode({"type": "run", "limits": limits.__dict__})
            self._sock.setblocking(True)
            socket.send_fds(self._sock, [message], [events_write, control_read])
            self._sock.setblocking(False)
        finally:
            os.close(events_write)
            os.close(control_read)
        started = self._expect("started", timeout=30)
        inner = int(started["pid"])
        os.set_blocking(events_read, False)
        return JobProcess(
            host=self,
            inner_pid=inner,
            pid=self._job_pid(inner),
            events=LineReader(events_read),
            control_fd=control_write,
        )

    def _job_pid(self, inner: int) -> int:
        """The job process's pid as this process sees it (it has another in the sandbox)."""
        if not self.confined:
            return inner
        for pid in _children(self.host_pid or -1):
            if _namespace_pid(pid) == inner:
                return pid
        return -1  # ended already: the host will say so

    def job_exit(self, timeout: float) -> int | None:
        """The job process's exit code once the host says it ended (and cleaned up)."""
        self._read(timeout)
        for index, message in enumerate(self._pending):
            if message["type"] == "exited":
                self._pending.pop(index)
                return int(message["exitcode"])
        if not self.alive():
            return -signal.SIGKILL
        return None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._sock.close()
        shutil.rmtree(self.scratch.root, ignore_errors=True)


@dataclass
class JobProcess:
    """One job's process, inside the host's sandbox."""

    host: JobHost
    inner_pid: int
    #: Its pid as the pool process sees it; -1 if it ended before it was found.
    pid: int
    events: LineReader
    control_fd: int
    exitcode: int | None = None
    _stop_sent: bool = field(default=False)

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        """Messages from the job process, waiting up to `timeout` for one or for its end."""
        if self.exitcode is None:
            watched: list[Any] = [self.host._sock]
            if not self.events.closed:
                watched.append(self.events.fd)
            wait_readable(watched, timeout)
            self.exitcode = self.host.job_exit(0)
        return self.events.read_available() if not self.events.closed else []

    def request_stop(self) -> None:
        if not self._stop_sent:
            self._stop_sent = True
            self.send({"type": "stop"})

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            write_message(self.control_fd, message)

    def kill(self) -> int:
        """Kills it (and, through the host, whatever it started); its exit code."""
        if self.exitcode is None and self.pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + _EXIT_TIMEOUT_S
        while self.exitcode is None and time.monotonic() < deadline:
            self.exitcode = self.host.job_exit(0.2)
        if self.exitcode is None:
            log.error("the job host did not report the killed job's end; restarting it")
            self.host.stop()
            self.exitcode = -signal.SIGKILL
        return self.exitcode

    def private_memory_mb(self) -> float:
        """Memory the job's processes have of their own (see worker.monitor): in the sandbox
        every process but the host is the job's, wherever it was re-parented."""
        if self.pid <= 0:
            return 0.0
        if self.host.confined and self.host.host_pid is not None:
            pids = _descendants(self.host.host_pid)
        else:
            pids = [self.pid, *_descendants(self.pid)]
        return sum(_private_memory_mb(pid) for pid in pids)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.control_fd)
        with contextlib.suppress(OSError):
            os.close(self.events.fd)


_host: JobHost | None = None


def job_host(settings: Settings) -> JobHost:
    """This pool process's job host, started if it is not running."""
    global _host
    if _host is not None and not (_host.alive() and _host.settings == settings):
        _host.stop()
        _host = None
    if _host is None:
        _host = JobHost(settings)
    return _host


@atexit.register
def _stop_host() -> None:
    if _host is not None:
        _host.stop()


def _remove_stale_scratch(root: Path) -> None:
    """Scratch folders of hosts whose pool process is gone (killed, or the worker restarted)."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _children(pid: int) -> list[int]:
    return [child for child, parent in _parents().items() if parent == pid]


def _descendants(pid: int) -> list[int]:
    parents = _parents()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def _namespace_pid(pid: int) -> int | None:
    """The pid of `pid` in its innermost PID namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except OSError:
        return None
    return None


def _private_memory_mb(pid: int) -> float:
    """Resident and swapped memory the process has of its own. Pages it still shares with
    the host (the libraries loaded before the fork) do not count: they cost nothing more."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    kb = 0
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("Private_Clean", "Private_Dirty", "Swap"):
            kb += int(value.split()[0])
    return kb / 1024


def kernel_limits(settings: Settings, *, memory_mb: int | None, hard_time_s: float) -> KernelLimits:
    """The rlimits of a job: its memory limit (else the machine's memory), CPU time for its
    hard time limit on every core, files as large as an extracted upload may be, and a
    bounded number of processes and threads."""
    # The cores it may run on (its worker's MODELPRESS_CPUS), not the host's.
    cores = len(os.sched_getaffinity(0)) or 1
    return KernelLimits(
        memory_mb=memory_mb or machine_memory_mb(),
        cpu_s=int(hard_time_s * cores) + 10,
        file_bytes=4 * settings.max_upload_bytes,
        processes=64 + 8 * cores,
    )


def machine_memory_mb() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1 << 20


__all__ = [
    "JobHost",
    "JobProcess",
    "KernelLimits",
    "ProtocolError",
    "SandboxUnavailable",
    "job_host",
    "kernel_limits",
]
