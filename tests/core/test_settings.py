"""Settings read from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings


def test_a_relative_data_folder_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Job code changes directory at times (quantization pre-processing); paths under the
    # data folder must not change meaning when it does.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELPRESS_DATA_DIR", "data")

    settings = Settings()

    assert settings.data_dir == tmp_path.resolve() / "data"
    assert settings.tmp_dir.is_absolute() and settings.storage_dir.is_absolute()


@pytest.mark.parametrize(
    ("value", "cores"),
    [("0", (0,)), ("0-1", (0, 1)), ("2,3", (2, 3)), (" 0-2, 6 ", (0, 1, 2, 6)), ("", None)],
)
def test_worker_cores_are_read_as_a_core_list(
    monkeypatch: pytest.MonkeyPatch, value: str, cores: tuple[int, ...] | None
) -> None:
    monkeypatch.setenv("MODELPRESS_CPUS", value)
    assert Settings().cpu_set == cores


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("two", "is not a core list"),
        ("0-", "is not a core list"),
        ("3-1", "runs backwards"),
        ("-1", "is not a core list"),
        ("0-99999", "is beyond"),
    ],
)
def test_an_invalid_core_list_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("MODELPRESS_CPUS", value)
    with pytest.raises(ValueError, match="MODELPRESS_CPUS") as raised:
        Settings()
    assert message in str(raised.value)


def test_logs_are_json_in_production_and_text_in_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELPRESS_DATABASE_URL", "postgresql+psycopg://db/modelpress")
    monkeypatch.setenv("MODELPRESS_ENVIRONMENT", "production")
    assert Settings().resolved_log_format == "json"
    monkeypatch.setenv("MODELPRESS_ENVIRONMENT", "development")
    assert Settings().resolved_log_format == "text"
    monkeypatch.setenv("MODELPRESS_LOG_FORMAT", "json")
    monkeypatch.setenv("MODELPRESS_LOG_LEVEL", "debug")
    assert (Settings().resolved_log_format, Settings().log_level) == ("json", "DEBUG")
    monkeypatch.setenv("MODELPRESS_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()
