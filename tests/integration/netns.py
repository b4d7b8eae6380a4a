"""A private test network of Linux network namespaces, so that tests can run the service's
processes as separate machines: each "host" namespace has one link into a bridge in this
namespace, and nothing else. The shared services listen on the bridge's address only.

The bridge isolates its ports from each other (`bridge link set … isolated on`): a host can
reach the bridge's address, never another host. The hosts have no route beyond the test
subnet. Names are unique per network, so parallel or aborted runs never collide; `close()`
removes everything that was made, also after a failure half-way through `create()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: RFC 2544's range for testing networks; each test network takes one /24 of it.
_TEST_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
#: Held while a test network chooses its subnet, so that two runs never take the same one.
_ALLOCATION_LOCK = Path("/run/lock/modelpress-test-netns.lock")


class NetworkUnavailable(Exception):
    """This machine cannot make a test network (no iproute2, or no CAP_NET_ADMIN)."""


@dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    address: str
    #: The bridge's end of the host's link, in this namespace.
    link: str

    def exec_argv(self, argv: list[str], *, hostname: str | None = None) -> list[str]:
        """`argv` run inside the host's network namespace; with `hostname`, also in a UTS
        namespace of its own under that name, as a separate machine would be."""
        inner = argv
        if hostname is not None:
            inner = [
                "unshare",
                "--uts",
                "--",
                "sh",
                "-c",
                'hostname "$1" && shift && exec "$@"',
                "sh",
                hostname,
                *argv,
            ]
        return ["ip", "netns", "exec", self.namespace, *inner]


@dataclass
class TestNetwork:
    """Made by `create()`; always `close()` it."""

    token: str
    subnet: ipaddress.IPv4Network
    #: The bridge's address: where the shared services listen.
    service_address: str
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def connect_from(self, host: Host, address: str, port: int, timeout: float = 3) -> str:
        """What a TCP connect from inside `host` to address:port gives: "connected", or the
        error's name (ConnectionRefusedError, TimeoutError, OSError errno …)."""
        code = (
            "import socket, sys, json\n"
            "try:\n"
            f"    socket.create_connection(({address!r}, {port}), {timeout}).close()\n"
            "    print(json.dumps('connected'))\n"
            "except OSError as exc:\n"
            "    print(json.dumps(f'{type(exc).__name__} errno={exc.errno}'))\n"
        )
        done = subprocess.run(
            host.exec_argv([sys.executable, "-c", code]),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=True,
        )
        return str(json.loads(done.stdout))

    def route_from(self, host: Host, address: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "-n", host.namespace, "route", "get", address],
            capture_output=True,
            text=True,
        )

    def close(self) -> None:
        # Every step runs even if an earlier one fails: what create() made half-way goes too.
        for host in self.hosts.values():
            _quiet(["ip", "link", "del", host.link])
            _quiet(["ip", "netns", "del", host.namespace])
        _quiet(["ip", "link", "del", self.bridge])


def create(host_names: list[str]) -> TestNetwork:
    """A bridge on a free /24 of the test range and one namespace per host name."""
    reason = _cannot_create()
    if reason:
        raise NetworkUnavailable(reason)
    token = secrets.token_hex(3)
    with _allocation_lock():
        subnet = _free_subnet()
        addresses = list(subnet.hosts())
        network = TestNetwork(
            token=token,
            subnet=subnet,
            service_address=str(addresses[0]),
            # Interface names are at most 15 characters.
            bridge=f"mp{token}br",
        )
        try:
            try:
                _ip("link", "add", network.bridge, "type", "bridge")
            except RuntimeError as exc:
                raise NetworkUnavailable(f"a bridge cannot be made here: {exc}") from exc
            _ip("addr", "add", f"{addresses[0]}/{subnet.prefixlen}", "dev", network.bridge)
            _ip("link", "set", network.bridge, "up")
        except BaseException:
            network.close()
            raise
    try:
        for index, name in enumerate(host_names, start=1):
            host = Host(
                name=name,
                namespace=f"modelpress-test-{token}-{name}",
                address=str(addresses[index]),
                link=f"mp{token}h{index}",
            )
            network.hosts[name] = host
            _ip("netns", "add", host.namespace)
            _ip(
                "link",
                "add",
                host.link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.namespace,
            )
            _ip("link", "set", host.link, "master", network.bridge)
            _run(["bridge", "link", "set", "dev", host.link, "isolated", "on"])
            _ip("link", "set", host.link, "up")
            inside = ["ip", "-n", host.namespace]
            _run([*inside, "addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", "eth0"])
            _run([*inside, "link", "set", "lo", "up"])
            _run([*inside, "link", "set", "eth0", "up"])
    except BaseException:
        network.close()
        raise
    return network


def _cannot_create() -> str | None:
    for program in ("ip", "bridge", "unshare"):
        if shutil.which(program) is None:
            return f"`{program}` is not installed (iproute2, util-linux)"
    probe = f"modelpress-test-probe-{secrets.token_hex(4)}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    _quiet(["ip", "netns", "del", probe])
    if done.returncode != 0:
        return (
            "network namespaces cannot be made here (needs root or CAP_NET_ADMIN and "
            f"CAP_SYS_ADMIN): `ip netns add` said {done.stderr.strip()!r}"
        )
    return None


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    _ALLOCATION_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with _ALLOCATION_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of the test range that no address of this namespace is on."""
    shown = subprocess.run(
        ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True
    )
    used = {
        ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network
        for link in json.loads(shown.stdout)
        for info in link.get("addr_info", [])
    }
    candidates = list(_TEST_RANGE.subnets(new_prefix=24))
    start = secrets.randbelow(len(candidates))
    for subnet in candidates[start:] + candidates[:start]:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise NetworkUnavailable(f"every /24 of {_TEST_RANGE} is in use")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def _quiet(argv: list[str]) -> None:
    with contextlib.suppress(OSError):
        subprocess.run(argv, capture_output=True, env={**os.environ, "LC_ALL": "C"})
