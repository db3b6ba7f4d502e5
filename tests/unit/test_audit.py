"""The audit trail: chained, append-only, tamper-evident, free of secrets."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction, utcnow
from zorgbericht.runtime import Runtime

pytestmark = pytest.mark.peers  # runs on SQLite and on the PostgreSQL peer


def _write(runtime: Runtime, n: int) -> None:
    with transaction(runtime.sessions) as db:
        for i in range(n):
            audit.record(
                session=db,
                event=audit.Ev.studies_queried,
                tenant_id=1,
                actor=audit.Actor("staff", f"staff:{i}", ip="10.0.0.1"),
                patient_id="P1",
                bsn="123456782",
                details={"i": i},
            )


def _drop_guard(runtime: Runtime) -> None:
    """What an attacker with database rights would do first."""
    with runtime.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER audit_event_append_only ON audit_event"))
        else:
            conn.execute(text("DROP TRIGGER audit_event_no_update"))
            conn.execute(text("DROP TRIGGER audit_event_no_delete"))


def test_events_chain_and_verify(runtime: Runtime) -> None:
    _write(runtime, 5)
    with runtime.sessions() as db:
        rows = db.query(AuditEvent).order_by(AuditEvent.seq).all()
        report = audit.verify(session=db)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:], strict=False))
    assert report.ok and report.checked == 5
    assert {r.bsn_last3 for r in rows} == {"782"}


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_event SET outcome = 4 WHERE seq = 2", "DELETE FROM audit_event WHERE seq = 2"],
)
def test_database_refuses_to_change_the_trail(runtime: Runtime, statement: str) -> None:
    _write(runtime, 3)
    with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as conn:
        conn.execute(text(statement))


def test_changed_row_is_named_by_verify(runtime: Runtime) -> None:
    _write(runtime, 5)
    _drop_guard(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET actor_id = 'someone-else' WHERE seq = 3"))
    with runtime.sessions() as db:
        report = audit.verify(session=db)
    assert report.first_broken_seq == 3 and "hash" in (report.reason or "")


def test_deleted_row_is_named_by_verify(runtime: Runtime) -> None:
    _write(runtime, 5)
    _drop_guard(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 2"))
    with runtime.sessions() as db:
        assert audit.verify(session=db).first_broken_seq == 2


def test_truncated_tail_is_detected(runtime: Runtime) -> None:
    _write(runtime, 4)
    _drop_guard(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 4"))
    with runtime.sessions() as db:
        report = audit.verify(session=db)
    assert report.first_broken_seq == 4 and "removed" in (report.reason or "")


@pytest.mark.parametrize("key", ["code", "birth_date", "session_id", "bsn", "Password"])
def test_secrets_are_refused_in_details(runtime: Runtime, key: str) -> None:
    with runtime.sessions() as db, pytest.raises(ValueError, match="may not carry"):
        audit.record(
            session=db,
            event=audit.Ev.studies_queried,
            tenant_id=1,
            actor=audit.SYSTEM,
            details={key: "x"},
        )


def test_export_writes_jsonl_and_csv_for_one_tenant(runtime: Runtime) -> None:
    _write(runtime, 2)
    with transaction(runtime.sessions) as db:
        audit.record(session=db, event=audit.Ev.studies_queried, tenant_id=2, actor=audit.SYSTEM)
    with runtime.sessions() as db:
        lines = list(audit.export(session=db, tenant_id=1, since=None, fmt="jsonl"))
        csv_lines = "".join(audit.export(session=db, tenant_id=None, since=None, fmt="csv"))
    assert len(lines) == 2 and all('"tenant_id": 1' in line for line in lines)
    assert csv_lines.splitlines()[0].startswith("seq,occurred_at")
    assert len(csv_lines.splitlines()) == 4
    assert "123456782" not in "".join(lines) + csv_lines


def _prune(runtime: Runtime, now: datetime, limit: int = 10_000) -> int:
    with transaction(runtime.sessions) as db:
        return audit.prune(session=db, now=now, retention=RETENTION, limit=limit)


RETENTION = timedelta(days=5 * 365 + 2)


def test_retention_removes_only_events_past_five_years_and_the_chain_still_verifies(
    runtime: Runtime,
) -> None:
    _write(runtime, 3)
    between = utcnow()
    _write(runtime, 2)
    assert _prune(runtime, between + RETENTION - timedelta(seconds=1)) == 0
    assert _prune(runtime, between + RETENTION) == 3
    with runtime.sessions() as db:
        seqs = db.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
        pruned = db.get(AuditEvent, 6)
        report = audit.verify(session=db)
    assert seqs == [4, 5, 6]
    assert pruned is not None and pruned.event == "audit.pruned" and pruned.event_code == "110105"
    assert pruned.details["through_seq"] == 3 and pruned.details["removed"] == 3
    assert report.ok and report.checked == 3


def test_retention_removes_in_batches(runtime: Runtime) -> None:
    _write(runtime, 5)
    later = utcnow() + RETENTION + timedelta(days=1)
    removed = [_prune(runtime, later, limit=2) for _ in range(3)]
    with runtime.sessions() as db:
        assert audit.verify(session=db).ok
    # each run also adds its own record, old enough for the next run to remove
    assert removed == [2, 2, 2]


def test_the_database_refuses_deletes_above_the_floor(runtime: Runtime) -> None:
    _write(runtime, 4)
    _prune(runtime, utcnow() + RETENTION, limit=2)
    with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))


def test_a_floor_moved_without_a_retention_record_is_detected(runtime: Runtime) -> None:
    _write(runtime, 4)
    _prune(runtime, utcnow() + RETENTION, limit=2)
    _drop_guard(runtime)
    with runtime.engine.begin() as conn:  # hide row 3 and pretend retention removed it
        row3_hash = conn.execute(text("SELECT hash FROM audit_event WHERE seq = 3")).scalar()
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
        conn.execute(text("UPDATE audit_head SET floor_seq = 3, floor_hash = :h"), {"h": row3_hash})
    with runtime.sessions() as db:
        report = audit.verify(session=db)
    assert report.first_broken_seq == 4 and "retention record" in (report.reason or "")


def test_rows_removed_below_an_unmoved_floor_are_detected(runtime: Runtime) -> None:
    _write(runtime, 4)
    _prune(runtime, utcnow() + RETENTION, limit=2)
    _drop_guard(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
    with runtime.sessions() as db:
        assert audit.verify(session=db).first_broken_seq == 3
