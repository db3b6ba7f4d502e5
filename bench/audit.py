"""Audit trail benchmark on PostgreSQL: what the hash chain costs, side by side in one run.

    python bench/audit.py [--events 20000] [--threads 8]

- **write**: ``--threads`` writers each commit single events, as requests do: through
  ``audit.record`` (chain head lock, hash, the append-only trigger) vs a plain INSERT of the same
  row into a copy of the table (same columns and indexes, no chain, no trigger).
- **verify**: ``audit.verify`` over the whole trail vs ``COPY (SELECT …) TO STDOUT`` of the same
  rows hashed in bulk with sha256 (the floor: read every byte once and hash it).
- **export**: ``audit.export`` as JSON lines vs the same COPY.

Prints events per second of each and the ratios (ours / peer).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from infra.peers import PostgreSQL  # noqa: E402
from zorgbericht.audit import service as audit  # noqa: E402
from zorgbericht.db import transaction  # noqa: E402
from zorgbericht.runtime import Runtime, build_runtime  # noqa: E402
from zorgbericht.settings import Settings  # noqa: E402

ACTOR = audit.Actor(
    "recipient", "recipient-session:1", ip="192.0.2.10", user_agent="Mozilla/5.0 (bench)"
)
STUDY = "1.2.826.0.1.3680043.8.498.12345678901234567890"
PLAIN_INSERT = text(
    "INSERT INTO plain_event (seq, occurred_at, tenant_id, event, event_code, action, outcome, "
    "actor_kind, actor_id, ip, user_agent, patient_id, share_id, study_uids, details, "
    "prev_hash, hash) VALUES (nextval('plain_seq'), now(), 1, 'recipient.image_viewed', "
    "'110103', 'R', 0, 'recipient', :actor, :ip, :ua, 'PAT-0042', 1, "
    "CAST(:studies AS json), CAST(:details AS json), :h, :h)"
)


def chained(rt: Runtime) -> None:
    with transaction(rt.sessions) as session:
        audit.record(
            session=session,
            event=audit.Ev.image_viewed,
            actor=ACTOR,
            tenant_id=1,
            patient_id="PAT-0042",
            share_id=1,
            study_uids=[STUDY],
            details={"series": 1},
        )


def plain(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(
            PLAIN_INSERT,
            {
                "actor": ACTOR.id,
                "ip": ACTOR.ip,
                "ua": ACTOR.user_agent,
                "studies": f'["{STUDY}"]',
                "details": '{"series": 1}',
                "h": "0" * 64,
            },
        )


def rate(label: str, count: int, threads: int, write: Callable[[], None]) -> float:
    """Events per second when ``threads`` writers share ``count`` single-event commits."""
    share = count // threads

    def worker() -> None:
        for _ in range(share):
            write()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    per_second = share * threads / (time.perf_counter() - started)
    print(f"  {label:<34} {per_second:9.0f} events/s", flush=True)
    return per_second


def copy_hash_rate(rt: Runtime, count: int) -> float:
    """The peer for reading the trail: COPY of every row, hashed in bulk."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    raw = rt.engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy("COPY (SELECT * FROM audit_event ORDER BY seq) TO STDOUT") as copy:  # type: ignore[attr-defined]
            for block in copy:
                digest.update(block)
    finally:
        raw.close()
    per_second = count / (time.perf_counter() - started)
    print(f"  {'COPY + sha256 (peer)':<34} {per_second:9.0f} events/s", flush=True)
    return per_second


def timed(label: str, count: int, job: Callable[[], object]) -> float:
    started = time.perf_counter()
    job()
    per_second = count / (time.perf_counter() - started)
    print(f"  {label:<34} {per_second:9.0f} events/s", flush=True)
    return per_second


def verify(rt: Runtime) -> None:
    with rt.sessions() as session:
        report = audit.verify(session=session)
    assert report.ok, report


def export(rt: Runtime) -> None:
    with rt.sessions() as session:
        for _ in audit.export(session=session, tenant_id=None, since=None, fmt="jsonl"):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with PostgreSQL() as pg, tempfile.TemporaryDirectory() as work:
        rt = build_runtime(
            Settings(database_url=pg.create_database("bench_audit"), data_dir=Path(work))
        )
        with rt.engine.begin() as conn:
            conn.execute(text("CREATE TABLE plain_event (LIKE audit_event INCLUDING ALL)"))
            conn.execute(text("CREATE SEQUENCE plain_seq"))
        n, threads = args.events, args.threads
        print(f"{n} events, {threads} writers, PostgreSQL", flush=True)
        ours = rate("audit.record (hash chain)", n, threads, lambda: chained(rt))
        peer = rate("plain INSERT (peer)", n, threads, lambda: plain(rt))
        written = n // threads * threads
        checked = timed("audit verify", written, lambda: verify(rt))
        exported = timed("audit export (jsonl)", written, lambda: export(rt))
        floor = copy_hash_rate(rt, written)
        print(f"write  ratio {ours / peer:.2f} (chained / plain insert)")
        print(f"verify ratio {checked / floor:.2f} (verify / COPY + sha256)")
        print(f"export ratio {exported / floor:.2f} (export / COPY + sha256)")
        rt.close()


if __name__ == "__main__":
    main()
