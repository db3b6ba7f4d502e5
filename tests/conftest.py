"""Fixtures: real peers (PostgreSQL, SeaweedFS) started by infra/peers.py, runtimes and a live
DICOM node, on both the embedded default and the production backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from infra.peers import S3_ACCESS_KEY, S3_SECRET_KEY, PostgreSQL, SeaweedFS, free_port
from zorgbericht.db import transaction
from zorgbericht.runtime import Runtime, build_runtime
from zorgbericht.settings import Settings
from zorgbericht.tenants import service as tenants

TEST_BUCKET = "zb-test"
CALLING_AE = "TESTSCU"


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgreSQL]:
    with PostgreSQL() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedFS]:
    with SeaweedFS() as server:
        server.create_bucket(TEST_BUCKET)
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'zb.sqlite3'}"
    server: PostgreSQL = request.getfixturevalue("pg")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    if request.param == "file":
        return {"storage_url": (tmp_path / "objects").as_uri()}
    server: SeaweedFS = request.getfixturevalue("s3")
    return {
        "storage_url": f"s3://{TEST_BUCKET}/{uuid.uuid4().hex[:8]}",
        "s3_endpoint_url": server.endpoint,
        "s3_access_key": S3_ACCESS_KEY,
        "s3_secret_key": S3_SECRET_KEY,
    }


def make_settings(
    tmp_path: Path, database_url: str, storage: dict[str, object], **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "data_dir": tmp_path / "var",
        "database_url": database_url,
        "dicom_host": "127.0.0.1",
        "dicom_port": free_port(),
        "study_quiet_seconds": 1.0,
        "worker_interval_seconds": 0.2,
        **storage,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def runtime(tmp_path: Path, database_url: str, storage: dict[str, object]) -> Iterator[Runtime]:
    rt = build_runtime(make_settings(tmp_path, database_url, storage))
    yield rt
    rt.close()


@pytest.fixture
def session(runtime: Runtime) -> Iterator[Session]:
    """A session whose work is rolled back at the end of the test."""
    connection = runtime.engine.connect()
    outer = connection.begin()
    with Session(bind=connection, join_transaction_mode="create_savepoint") as db:
        yield db
    outer.rollback()
    connection.close()


@pytest.fixture
def tenant_id(runtime: Runtime) -> int:
    with transaction(runtime.sessions) as db:
        tenant = tenants.create_tenant(
            session=db, slug="acme", name="Acme Ziekenhuis", ae_titles=[CALLING_AE, "STORESCU"]
        )
        return tenant.id


@dataclass
class Node:
    runtime: Runtime
    pipeline: object
    server: object
    port: int
    tenant_id: int

    @property
    def settings(self) -> Settings:
        return self.runtime.settings


def start_node(runtime: Runtime, tenant_id: int) -> Node:
    from dicom_ingest.server import start_dicom_server
    from dicom_ingest.stager import StagerProcess

    pipeline = StagerProcess(settings=runtime.settings, store=runtime.store)
    pipeline.start()
    server = start_dicom_server(
        settings=runtime.settings, sessions=runtime.sessions, pipeline=pipeline
    )
    return Node(runtime, pipeline, server, runtime.settings.dicom_port, tenant_id)


def stop_node(node: Node) -> None:
    node.server.shutdown()  # type: ignore[attr-defined]
    node.pipeline.close()  # type: ignore[attr-defined]


@pytest.fixture
def node(runtime: Runtime, tenant_id: int) -> Iterator[Node]:
    started = start_node(runtime, tenant_id)
    yield started
    stop_node(started)


from tests.syslog_receiver import syslog_pki, syslog_receiver  # noqa: E402, F401 - ATNA collector
from tests.twilio_standin import twilio_standin  # noqa: E402, F401 - fixture for every test
