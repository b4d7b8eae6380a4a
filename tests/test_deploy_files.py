"""docker-compose.yml and the Dockerfile cannot be started here; check what can be: they
parse, and every setting and command they name exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_only_real_settings() -> None:
    compose = _compose()
    known = {f"MODELPRESS_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}) or {}:
            if variable.startswith("MODELPRESS_"):
                assert variable in known, f"{name}: {variable} is not a setting"


def test_compose_commands_are_real_entry_points() -> None:
    compose = _compose()
    for name in ("migrate", "api", "worker-cpu", "worker-gpu"):
        command = compose["services"][name]["command"]
        if command[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(f"{command[2]}.__main__"), name
        else:
            assert command[:3] == ["celery", "-A", "worker.celery_app"], name
            assert command[command.index("-Q") + 1] in {"cpu", "gpu"}
    assert set(compose["services"]) >= {"postgres", "redis", "minio", "api", "worker-cpu"}


def test_dockerfile_copies_every_package_and_runs_the_api() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("api", "core", "worker", "optimizers", "migrations"):
        assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.MULTILINE), package
    assert 'CMD ["python", "-m", "api"]' in dockerfile
    assert "constraints.txt" in dockerfile
