"""All settings, read from the environment with the MODELPRESS_ prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "admin"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPRESS_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path("./data")
    #: Default: a SQLite file in data_dir.
    database_url: str | None = None
    #: Default: kombu's SQLAlchemy transport on a SQLite file in data_dir (no server needed).
    #: A redis:// URL switches to Redis.
    broker_url: str | None = None
    #: Default: files under data_dir/storage. `s3://bucket/prefix` stores objects in S3 or
    #: MinIO (credentials from the usual AWS_* variables).
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    #: Every request body but a model or dataset upload (job specs, batches, keys): larger
    #: ones are refused with 413 before they are read.
    max_json_body_bytes: int = Field(1024**2, ge=1024)
    bootstrap_key: str | None = None

    heartbeat_interval_s: float = Field(2.0, gt=0)
    heartbeat_timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    #: How often the worker looks for jobs whose worker stopped heartbeating.
    reaper_interval_s: float = Field(10.0, gt=0)
    task_time_limit_s: int = Field(6 * 3600, ge=10)
    #: At this age a job is asked to stop (it stops at its next progress report).
    job_soft_time_limit_s: float = Field(5 * 3600 + 40 * 60, gt=0)
    #: At this age a job's process is killed, wherever it is.
    job_hard_time_limit_s: float = Field(5 * 3600 + 50 * 60, gt=0)
    #: Memory a job's process may have of its own (not shared with the worker); None: no limit.
    job_memory_limit_mb: int | None = Field(None, ge=1)
    #: A canceled job that has not stopped by itself after this long is killed.
    job_cancel_grace_s: float = Field(5.0, ge=0)
    #: A queued job not yet claimed this long after it was handed to the broker is sent again
    #: (the broker may have lost it, e.g. a Redis restarted without persistence).
    requeue_after_s: float = Field(300.0, gt=0)
    #: How often a job's event stream (GET /v1/jobs/{id}/events) looks for changes.
    events_poll_s: float = Field(1.0, gt=0)
    #: An event stream ends after this long; clients reconnect (EventSource does so by itself)
    #: and get the job's current state first.
    events_stream_s: float = Field(600.0, gt=0)
    #: Jobs run outside the sandbox: with the worker's secrets, files and network in reach of
    #: every uploaded model. Only for a trusted single-user install (docs/security.md).
    unsafe_unconfined_jobs: bool = False
    #: The bubblewrap program that confines jobs (a name on PATH or a path).
    bwrap_path: str = "bwrap"
    #: Finished jobs' artifacts are removed this many days after the job finished (the job and
    #: its result numbers stay). None: kept until the job is deleted.
    retention_days: float | None = Field(None, gt=0)
    #: How often each worker runs its maintenance: retention and the sweep of orphans.
    maintenance_interval_s: float = Field(3600.0, gt=0)
    #: The sweeper removes an object or scratch folder that nothing points to only once it is
    #: this old: an upload stores its object before its row commits.
    orphan_grace_s: float = Field(3600.0, ge=60)

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> Settings:
        # Every path under it stays valid whatever directory a job's code runs in.
        self.data_dir = self.data_dir.resolve()
        return self

    @model_validator(mode="after")
    def _time_limits_in_order(self) -> Settings:
        # Celery's limit kills the whole pool process; the job's own limits must come first.
        if not self.job_soft_time_limit_s < self.job_hard_time_limit_s < self.task_time_limit_s:
            raise ValueError(
                "time limits must satisfy MODELPRESS_JOB_SOFT_TIME_LIMIT_S < "
                "MODELPRESS_JOB_HARD_TIME_LIMIT_S < MODELPRESS_TASK_TIME_LIMIT_S"
            )
        return self

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        if self.environment == "production":
            if self.bootstrap_key is not None and self.bootstrap_key in PLACEHOLDER_SECRETS:
                raise ValueError("MODELPRESS_BOOTSTRAP_KEY is a placeholder; set a real key")
            if self.database_url is None or self.database_url.startswith("sqlite"):
                raise ValueError("production needs MODELPRESS_DATABASE_URL (PostgreSQL)")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'modelpress.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"mpsqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith(("mpsqla+", "sqla+"))

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def job_staging_dir(self) -> Path:
        """A worker's folders for one attempt of a job each, named `<job id>-<random>`."""
        return self.tmp_dir / "jobs"

    @property
    def sandbox_dir(self) -> Path:
        """The scratch folders of the job hosts, named `<pool process id>-<random>`."""
        return self.tmp_dir / "sandbox"


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings
