"""The audit trail: chained, append-only, tamper-evident, free of secrets."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction, utcnow
from zorgbericht.runtime import Runtime

# SQLite and the PostgreSQL peer; the object store plays no part in the trail.
pytestmark = [pytest.mark.peers, pytest.mark.parametrize("storage", ["file"], indirect=True)]


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
    lines = list(audit.export(sessions=runtime.sessions, tenant_id=1, since=None, fmt="jsonl"))
    csv_lines = "".join(
        audit.export(sessions=runtime.sessions, tenant_id=None, since=None, fmt="csv", page=2)
    )
    assert len(lines) == 2 and all('"tenant_id": 1' in line for line in lines)
    assert csv_lines.splitlines()[0].startswith("seq,occurred_at")
    assert len(csv_lines.splitlines()) == 4
    assert "123456782" not in "".join(lines) + csv_lines


RETENTION = timedelta(days=5 * 365 + 2)
LONG_AGO = timedelta(days=6 * 365)


def _write_at(runtime: Runtime, n: int, age: timedelta, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events as if written ``age`` ago (the trail refuses updates, so its clock moves)."""
    moment = utcnow() - age
    with monkeypatch.context() as clock:
        clock.setattr(audit, "utcnow", lambda: moment)
        _write(runtime, n)


def _prune(runtime: Runtime, limit: int = 10_000) -> int:
    with transaction(runtime.sessions) as db:
        return audit.prune(session=db, now=utcnow(), retention=RETENTION, limit=limit)


def _seqs(runtime: Runtime) -> list[int]:
    with runtime.sessions() as db:
        return list(db.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))


def test_retention_removes_only_events_past_five_years_and_the_chain_still_verifies(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_at(runtime, 3, LONG_AGO, monkeypatch)
    _write_at(runtime, 2, RETENTION - timedelta(minutes=1), monkeypatch)
    assert _prune(runtime) == 3
    assert _prune(runtime) == 0
    with runtime.sessions() as db:
        pruned = db.get(AuditEvent, 6)
        report = audit.verify(session=db)
    assert _seqs(runtime) == [4, 5, 6]
    assert pruned is not None and pruned.event == "audit.pruned" and pruned.event_code == "110105"
    assert pruned.details["through_seq"] == 3 and pruned.details["removed"] == 3
    assert report.ok and report.checked == 3


def test_retention_removes_in_batches(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_at(runtime, 5, LONG_AGO, monkeypatch)
    assert [_prune(runtime, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    with runtime.sessions() as db:
        assert audit.verify(session=db).ok
    assert _seqs(runtime) == [6, 7, 8]  # the three runs' own records


def test_the_database_refuses_deletes_above_the_floor(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_at(runtime, 4, LONG_AGO, monkeypatch)
    _prune(runtime, limit=2)
    with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))


def test_the_database_refuses_deletes_of_young_events_even_below_a_moved_floor(
    runtime: Runtime,
) -> None:
    _write(runtime, 3)
    with runtime.engine.begin() as conn:  # the head may move forward...
        conn.execute(text("UPDATE audit_head SET floor_seq = 3"))
    with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 1"))  # ...but not this
    assert _seqs(runtime) == [1, 2, 3]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM audit_head",
        "UPDATE audit_head SET seq = seq - 1",
        "UPDATE audit_head SET floor_seq = seq + 1",
    ],
)
def test_the_chain_head_only_moves_forward(runtime: Runtime, statement: str) -> None:
    _write(runtime, 3)
    with pytest.raises(DBAPIError, match="only moves forward"), runtime.engine.begin() as conn:
        conn.execute(text(statement))


def test_a_floor_moved_without_a_retention_record_is_detected(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_at(runtime, 4, LONG_AGO, monkeypatch)
    _prune(runtime, limit=2)
    with runtime.engine.begin() as conn:  # hide old row 3, as the database allows
        row3_hash = conn.execute(text("SELECT hash FROM audit_event WHERE seq = 3")).scalar()
        conn.execute(text("UPDATE audit_head SET floor_seq = 3, floor_hash = :h"), {"h": row3_hash})
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
    with runtime.sessions() as db:
        report = audit.verify(session=db)
    assert report.first_broken_seq == 4 and "retention record" in (report.reason or "")


def test_rows_removed_below_an_unmoved_floor_are_detected(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_at(runtime, 4, LONG_AGO, monkeypatch)
    _prune(runtime, limit=2)
    _drop_guard(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
    with runtime.sessions() as db:
        assert audit.verify(session=db).first_broken_seq == 3


def test_verify_is_not_confused_by_events_written_while_it_walks(runtime: Runtime) -> None:
    _write(runtime, 30)
    writer = threading.Thread(target=_write, args=(runtime, 20))
    with runtime.sessions() as db:
        audit.read_only(db)  # the snapshot verify takes, begun before the writer starts
        db.execute(select(AuditEvent.seq).limit(1)).all()
        writer.start()
        time.sleep(0.3)  # the writer commits events while the walk reads one row a batch
        report = audit.verify(session=db, batch=1)
    writer.join()
    assert report.ok and report.checked == 30, report
    assert len(_seqs(runtime)) == 50
