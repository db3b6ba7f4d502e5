"""Build a process's collaborators from its settings: engine, sessions, object store."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from zorgbericht import migrate
from zorgbericht.db import make_engine, make_sessionmaker
from zorgbericht.delivery.mailer import Mailer, make_mailer
from zorgbericht.delivery.sms import SmsSender, make_sms
from zorgbericht.settings import Settings
from zorgbericht.shares.pacs import PacsFinder
from zorgbericht.storage import ObjectStore, make_store


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    mailer: Mailer
    sms: SmsSender
    pacs: PacsFinder | None = None  # set by the process entry point that has a DICOM client

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(settings: Settings, *, run_migrations: bool = True) -> Runtime:
    """Create the data folder, migrate the database, connect the object store and senders."""
    sms = make_sms(settings)  # refuse a half-configured SMS backend before touching the database
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if run_migrations:
        migrate.upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    return Runtime(
        settings,
        engine,
        make_sessionmaker(engine),
        make_store(settings),
        make_mailer(settings.smtp_url, settings.data_dir),
        sms,
    )


class _NoQueryStrings(logging.Filter):
    """Access log lines without query strings: a link code or patient ID never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            args[2] = str(args[2]).split("?", 1)[0]
            record.args = tuple(args)
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pynetdicom logs every PDU at INFO and dumps identifiers at DEBUG: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # zipstream-ng warns with a member's name (a study date and description in the JPEG ZIP).
    logging.getLogger("zipstream").setLevel(logging.ERROR)
    logging.getLogger("uvicorn.access").addFilter(_NoQueryStrings())
