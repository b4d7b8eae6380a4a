"""Shared fixtures: an isolated data folder, a migrated database, an API client."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from kombu.transport.sqlalchemy import Channel as SQLAlchemyChannel
from sqlalchemy import create_engine, text

from core.db import reset_engines
from core.migrate import upgrade
from core.queue import get_celery
from core.settings import get_settings
from tests.ports import free_port

ADMIN_KEY = "mpk_test_admin_key_0123456789abcdef"


NOT_STARTED = "not started"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--deadline-at",
        type=float,
        default=None,
        metavar="UNIX_TIME",
        help="the time (seconds since the epoch) by which every test must be over: a test starts "
        "only if its timeout still fits, and the others are reported as skipped (CI sets it from "
        "the time it has left)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests marked slow run last, so that a deadline (--deadline-at) cuts them first; of those,
    # the ones that start real servers and workers (the longest) come last. The browser tests
    # come after everything: Playwright's sync API keeps an event loop running in this thread
    # until the session ends, and asyncio.run() (used by some tests) refuses to run beside it.
    def order(item: pytest.Item) -> tuple[bool, bool, bool]:
        slow = item.get_closest_marker("slow") is not None
        browser = "page" in getattr(item, "fixturenames", ())
        return browser, slow, slow and item.nodeid.startswith("tests/integration/")

    items.sort(key=order)
    # With several test processes (pytest-xdist, --dist loadgroup), the tests that run real
    # servers share session-scoped services, so they all go to one process and the services
    # start once.
    for item in items:
        if item.nodeid.startswith("tests/integration/"):
            item.add_marker(pytest.mark.xdist_group("services"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    deadline = item.config.getoption("--deadline-at")
    if deadline is None:
        return
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker else float(item.config.getini("timeout"))
    # Wall-clock time, not time since this process started: the run's deadline was set before
    # the installs and imports that came ahead of the first test.
    left = deadline - time.time()
    if timeout > left:
        pytest.skip(
            f"{NOT_STARTED}: its {timeout:.0f} s timeout does not fit in the {max(left, 0):.0f} s "
            "left before the run's deadline"
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    cut = sum(1 for report in skipped if NOT_STARTED in str(report.longrepr))
    if cut:
        terminalreporter.write_line(
            f"{cut} tests were not started: the run's deadline (--deadline-at) came first",
            yellow=True,
            bold=True,
        )


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Tearing down the interpreter (thousands of modules: torch, onnxruntime, the service) takes
    # minutes of CPU on a small machine and decides nothing. Once the report is written, the
    # run ends the way exit would, minus that teardown: exit handlers run, then the process
    # exits with pytest's status. Test processes of pytest-xdist end the usual way.
    if hasattr(config, "workerinput") or _EXIT_STATUS not in config.stash:
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash[_EXIT_STATUS])


def _clear_caches() -> None:
    if get_celery.cache_info().currsize:
        get_celery().close()
    # kombu's SQLAlchemy transport keeps one engine per broker file for the process's life:
    # each test's embedded broker would keep its file open (and a run of tests past the
    # 1,024 descriptors that select() can watch).
    for engine, _ in SQLAlchemyChannel._engines.values():
        engine.dispose()
    SQLAlchemyChannel._engines.clear()
    get_settings.cache_clear()
    get_celery.cache_clear()
    reset_engines()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file built by the real migrations; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "modelpress.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    from tests.postgres import run_postgres

    port = free_port()
    yield from run_postgres(port)


@pytest.fixture(scope="session")
def migrated_postgres_template(postgres_server: str) -> str:
    """A database built by the real migrations, copied (CREATE DATABASE … TEMPLATE) per test."""
    engine = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("CREATE DATABASE modelpress_template"))
    engine.dispose()
    upgrade(postgres_server.rsplit("/", 1)[0] + "/modelpress_template")
    reset_engines()
    return "modelpress_template"


@pytest.fixture
def db_backend() -> str:
    """Override with params in a test module to run its tests on PostgreSQL too."""
    return "sqlite"


@pytest.fixture
def database_url(db_backend: str, request: pytest.FixtureRequest) -> str | None:
    if db_backend == "sqlite":
        return None  # the default: a SQLite file in the test's data folder
    server: str = request.getfixturevalue("postgres_server")
    template: str = request.getfixturevalue("migrated_postgres_template")
    name = f"test_{uuid.uuid4().hex[:16]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    engine.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The metrics folder of every test in this process: prometheus-client keeps writing to
    the files a process opened first, whichever test's data folder is current now."""
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture
def service_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    migrated_sqlite: Path,
    database_url: str | None,
    metrics_dir: Path,
) -> Iterator[dict[str, str]]:
    """Settings for one test: its own data folder, database and embedded broker."""
    data_dir = tmp_path / "data"
    env = {
        "MODELPRESS_DATA_DIR": str(data_dir),
        "MODELPRESS_METRICS_DIR": str(metrics_dir),
        "MODELPRESS_BOOTSTRAP_KEY": ADMIN_KEY,
        "MODELPRESS_MAX_UPLOAD_BYTES": str(5 * 1024 * 1024),
        # No worker runs in most tests to finish a job: its event stream ends within seconds.
        "MODELPRESS_EVENTS_POLL_S": "0.05",
        "MODELPRESS_EVENTS_STREAM_S": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if database_url:
        env["MODELPRESS_DATABASE_URL"] = database_url
        monkeypatch.setenv("MODELPRESS_DATABASE_URL", database_url)
    else:
        monkeypatch.delenv("MODELPRESS_DATABASE_URL", raising=False)
    monkeypatch.delenv("MODELPRESS_BROKER_URL", raising=False)
    monkeypatch.delenv("MODELPRESS_STORAGE_URL", raising=False)
    _clear_caches()
    data_dir.mkdir(parents=True)
    shutil.copyfile(migrated_sqlite, data_dir / "modelpress.db")
    yield env
    _clear_caches()


@pytest.fixture
def client(service_env: dict[str, str]) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app()) as test_client:
        test_client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield test_client


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server mode) on loopback."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def make_bucket(endpoint: str) -> str:
    bucket = f"modelpress-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=bucket)
    return bucket
