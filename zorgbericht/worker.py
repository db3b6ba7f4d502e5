"""The background scheduler: study-stable detection (purge and outbox come with shares)."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from zorgbericht.db import transaction
from zorgbericht.runtime import Runtime
from zorgbericht.staging import service as staging

log = logging.getLogger(__name__)


def run_once(runtime: Runtime) -> int:
    """Run every due job once; return how many studies became stable."""
    quiet = timedelta(seconds=runtime.settings.study_quiet_seconds)
    with transaction(runtime.sessions) as session:
        settled = staging.settle_studies(session=session, quiet=quiet)
    if settled:
        log.info("%d stud%s became stable", len(settled), "y" if len(settled) == 1 else "ies")
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
