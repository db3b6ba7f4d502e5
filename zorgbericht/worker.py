"""The background scheduler: stable studies, share progress, expiry and purge, the outbox,
the audit trail's retention."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import select

from zorgbericht.audit import atna
from zorgbericht.audit import service as audit
from zorgbericht.db import read_only, transaction, utcnow
from zorgbericht.delivery import service as delivery
from zorgbericht.recipients import gate
from zorgbericht.runtime import Runtime
from zorgbericht.shares import service as shares
from zorgbericht.shares.models import Share, ShareState
from zorgbericht.shares.purge import purge
from zorgbericht.staging import service as staging

log = logging.getLogger(__name__)


def run_once(runtime: Runtime, now: datetime | None = None) -> int:
    """Run every due job once; return how many studies became stable."""
    given, now = now, now or utcnow()
    quiet = timedelta(seconds=runtime.settings.study_quiet_seconds)
    with transaction(runtime.sessions) as session:
        settled = staging.settle_studies(session=session, quiet=quiet, now=now)
    with transaction(runtime.sessions) as session:
        for share in session.scalars(
            select(Share)
            .where(Share.state == ShareState.pending)
            .with_for_update(skip_locked=True)
            .limit(500)
        ):
            shares.advance(session=session, share=share, now=now)
    with transaction(runtime.sessions) as session:
        report = purge(session=session, store=runtime.store, settings=runtime.settings, now=now)
    with transaction(runtime.sessions) as session:
        gate.forget_stale(session=session, now=now, max_age=runtime.settings.recipient_max_age)
    retention = runtime.settings.audit_retention
    with runtime.sessions() as session:  # checked in a read snapshot: no SQLite write lock
        read_only(session)
        due = audit.retention_due(session=session, now=now, retention=retention)
    if due:
        with transaction(runtime.sessions) as session:
            audit.prune(session=session, now=now, retention=retention)
    if report.expired or report.shares_purged or report.studies_purged:
        log.info("purge: %s", report)
    delivery.send_due(
        sessions=runtime.sessions, mailer=runtime.mailer, sender=runtime.settings.mail_from, now=now
    )
    # Its lease counts from now, not from the run's start: the outbox may have taken long.
    atna.forward_due(sessions=runtime.sessions, settings=runtime.settings, now=given or utcnow())
    return len(settled)


def run_forever(runtime: Runtime, stop: threading.Event) -> None:
    """Run the jobs every ``ZB_WORKER_INTERVAL_SECONDS`` until ``stop`` is set."""
    interval = runtime.settings.worker_interval_seconds
    while not stop.wait(interval):
        try:
            run_once(runtime)
        except Exception:
            log.exception("worker run failed; retrying next interval")


def start_thread(runtime: Runtime) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(
        target=run_forever, args=(runtime, stop), name="zb-worker", daemon=True
    )
    thread.start()
    return thread, stop
