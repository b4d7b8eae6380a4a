"""All settings, read from the environment with the MODELPRESS_ prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.cpus import parse_cpu_list

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
    #: A dashboard sign-in not used for this long ends; the next page asks to sign in again.
    web_session_idle_minutes: float = Field(30.0, gt=0)
    #: A dashboard sign-in ends this long after it began, however busy it was.
    web_session_max_hours: float = Field(12.0, gt=0)
    #: False on an API host that runs no jobs (workers on other hosts or containers): /readyz
    #: leaves the sandbox out, since each worker proves its own sandbox at start.
    readyz_sandbox: bool = True
    #: The cores this worker (and every job it runs) is pinned to, e.g. `0-1` or `2,3`;
    #: None: the cores the worker was started with. Workers on one host get disjoint sets.
    cpus: str | None = None
    #: A worker that stopped (cleanly or not) stays listed by GET /v1/workers this long.
    worker_history_s: float = Field(3600.0, gt=0)
    #: How long a worker started for the `gpu` queue gives its GPU check before refusing it.
    gpu_check_timeout_s: float = Field(180.0, gt=0)

    @field_validator("cpus")
    @classmethod
    def _core_list(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_cpu_list(value)
        return value.strip()

    #: Where the processes of this machine keep their Prometheus metrics (prometheus-client's
    #: multiprocess mode); default: data_dir/metrics. Local to one machine, never shared.
    metrics_dir: Path | None = None
    #: A worker serves its machine's metrics on this port (GET /metrics); None: not served.
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    #: `json`: one JSON object per log line; `text`: for reading in a terminal. Default: json
    #: in production, text in development.
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

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
    def cpu_set(self) -> tuple[int, ...] | None:
        return None if self.cpus is None else parse_cpu_list(self.cpus)

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def resolved_metrics_dir(self) -> Path:
        return (self.metrics_dir or self.data_dir / "metrics").resolve()

    @property
    def resolved_log_format(self) -> str:
        if self.log_format:
            return self.log_format
        return "json" if self.environment == "production" else "text"

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
