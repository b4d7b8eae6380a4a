"""Where the CLI keeps the service's URL and key: `modelpress/config.json` in the user's config
folder (XDG_CONFIG_HOME, default ~/.config), readable by the user only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

URL_ENV = "MODELPRESS_URL"
KEY_ENV = "MODELPRESS_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "modelpress" / "config.json"


def load() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(*, url: str, api_key: str) -> Path:
    """Written through a file created with mode 0600, so the key is never readable by others,
    not even for a moment."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": url, "api_key": api_key}, handle)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def resolve(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """Arguments first, then the environment, then the saved login."""
    saved = load()
    return (
        (url or os.environ.get(URL_ENV) or saved.get("url") or DEFAULT_URL).rstrip("/"),
        api_key or os.environ.get(KEY_ENV) or saved.get("api_key"),
    )
