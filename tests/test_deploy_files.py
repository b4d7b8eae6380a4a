"""docker-compose.yml and the Dockerfile cannot be started here (no Docker engine); check what
can be: they parse, every setting, command and build target they name exists, the replicas
can start side by side on one host, and each image installs only its own profile."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
#: Set in docker-compose.yml for the workers' core pinning (the worker reads it as
#: Settings.cpus); named here until that setting is part of core/settings.py.
PINNING = "MODELPRESS_CPUS"
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*)|:?\?[^}]*)?\}")


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _interpolate(value: str) -> str:
    """A value as `docker compose` sees it with no variable set: `${NAME:-default}` is the
    default; a required `${NAME:?message}` stays a placeholder."""
    return _VARIABLE.sub(lambda m: m.group(2) if m.group(2) is not None else f"<{m[1]}>", value)


def _is_worker(service: dict[str, Any]) -> bool:
    return service.get("command", [])[:4] == ["celery", "-A", "worker.celery_app", "worker"]


def _runs_the_service(service: dict[str, Any]) -> bool:
    return _is_worker(service) or service.get("command") == ["python", "-m", "api"]


def _cores(text: str) -> set[int]:
    cores: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[str] = field(default_factory=list)


def _stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name, each with its instructions (continued lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        start = re.fullmatch(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if start:
            current = stages[start[2]] = Stage(name=start[2], parent=start[1])
        elif line.upper().startswith("FROM "):
            raise AssertionError(f"every stage is named (FROM … AS name): {line}")
        else:
            assert current is not None, line
            current.instructions.append(line)
    return stages


def _lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built on, the stage itself first."""
    chain = [stages[name]]
    while chain[-1].parent in stages:
        chain.append(stages[chain[-1].parent])
    return chain


def _pip_installs(stages: dict[str, Stage], name: str) -> list[str]:
    return [
        instruction
        for stage in _lineage(stages, name)
        for instruction in stage.instructions
        if instruction.startswith("RUN ") and "pip install" in instruction
    ]


def test_compose_names_only_real_settings() -> None:
    known = {f"MODELPRESS_{name.upper()}" for name in Settings.model_fields} | {PINNING}
    for name, service in _services().items():
        for variable in service.get("environment", {}) or {}:
            if variable.startswith("MODELPRESS_"):
                assert variable in known, f"{name}: {variable} is not a setting"


def test_compose_commands_are_real_entry_points() -> None:
    services = _services()
    assert set(services) >= {"postgres", "redis", "minio", "migrate", "api", "worker-gpu"}
    for name, service in services.items():
        if "build" not in service:
            continue
        command: list[str] = service["command"]
        if command[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(f"{command[2]}.__main__"), name
        else:
            assert _is_worker(service), name
            assert command[command.index("-Q") + 1] in {"cpu", "gpu"}, name


def test_every_build_target_is_a_stage_of_the_dockerfile() -> None:
    stages = _stages()
    built = {name: service["build"] for name, service in _services().items() if "build" in service}
    assert built
    for name, build in built.items():
        assert isinstance(build, dict) and build.get("target") in stages, (
            f"{name}: build.target {build!r} is not a `FROM … AS name` stage of the Dockerfile"
        )


def test_no_two_containers_publish_the_same_host_port() -> None:
    taken: dict[int, str] = {}
    for name, service in _services().items():
        replicas = int((service.get("deploy") or {}).get("replicas", 1))
        for mapping in service.get("ports", []):
            parts = _interpolate(str(mapping)).split(":")
            assert len(parts) >= 2, f"{name}: {mapping} publishes a random port; name one"
            first, _, last = parts[-2].partition("-")
            ports = range(int(first), int(last or first) + 1)
            # Each replica takes a port of the range; a single port fits a single container.
            assert len(ports) >= replicas, f"{name}: {replicas} replicas on ports {parts[-2]}"
            for port in ports:
                assert port not in taken, f"{name} and {taken[port]} both publish {port}"
                taken[port] = name
    assert taken, "the API is published"


def test_cpu_workers_run_on_disjoint_cores_they_pin_themselves_to() -> None:
    workers = {name: s for name, s in _services().items() if _is_worker(s)}
    cpu = [name for name, s in workers.items() if "gpu" not in s.get("profiles", [])]
    assert len(cpu) >= 2, "at least two CPU workers start by default"
    owner: dict[int, str] = {}
    for name, service in workers.items():
        replicas = int((service.get("deploy") or {}).get("replicas", 1))
        assert replicas == 1, f"{name}: replicas of one service would share its cores"
        cpuset = _interpolate(str(service["cpuset"]))
        assert _interpolate(str(service["environment"][PINNING])) == cpuset, name
        for core in _cores(cpuset):
            assert core not in owner, f"{name} and {owner[core]} share core {core}"
            owner[core] = name


def test_migrations_run_once_before_the_api_and_the_workers() -> None:
    services = _services()
    assert services["migrate"]["command"] == ["python", "-m", "core", "migrate"]
    assert "deploy" not in services["migrate"] and "restart" not in services["migrate"]
    started = [name for name, service in services.items() if _runs_the_service(service)]
    assert {"api", "worker-gpu"} <= set(started)
    for name in started:
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


def test_the_gpu_worker_starts_only_with_the_gpu_profile_and_gets_a_gpu() -> None:
    services = _services()
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["command"][gpu["command"].index("-Q") + 1] == "gpu"
    assert gpu["build"]["target"] == "worker-gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name, service in services.items():
        if name != "worker-gpu":
            assert "gpu" not in service.get("profiles", []), name


def test_the_api_image_installs_the_api_profile_without_torch() -> None:
    stages = _stages()
    services = _services()
    for name in ("api", "migrate"):
        target = services[name]["build"]["target"]
        installs = _pip_installs(stages, target)
        assert installs, f"{target} installs modelpress"
        for instruction in installs:
            assert re.search(r"pip install -c constraints\.txt \.$", instruction), instruction
            assert "torch" not in instruction and "onnxruntime" not in instruction, instruction
    # The workers install their own profiles, each pinned by constraints.txt.
    assert any("'.[worker]'" in i and "whl/cpu" in i for i in _pip_installs(stages, "worker-cpu"))
    assert any("'.[gpu]'" in i for i in _pip_installs(stages, "worker-gpu"))
    for stage in ("worker-cpu", "worker-gpu"):
        assert all("-c constraints.txt" in i for i in _pip_installs(stages, stage)), stage
        assert any("bubblewrap" in i for s in _lineage(stages, stage) for i in s.instructions)


def test_dockerfile_copies_every_package_and_runs_the_api() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    assert "api" in packages
    for package in packages:
        assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.MULTILINE), package
    assert 'CMD ["python", "-m", "api"]' in dockerfile
    assert "constraints.txt" in dockerfile
