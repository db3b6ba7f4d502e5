"""Forwarding the audit trail to a local ATNA collector over TCP and TLS, on both databases."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import select

from infra.peers import free_port, wait_for_port
from tests.conftest import make_settings
from tests.syslog_receiver import Message, Pki, SyslogReceiver, parse
from zorgbericht import worker
from zorgbericht.audit import atna
from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent, AuditForward
from zorgbericht.db import transaction
from zorgbericht.runtime import Runtime, build_runtime
from zorgbericht.settings import Settings
from zorgbericht.tenants import service as tenants

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parents[1] / "data/dicom-audit-message.rng")))
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PATIENT = "PAT-7781"
STUDY = "1.2.826.0.1.3680043.8.498.77"

Receivers = Callable[..., SyslogReceiver]


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    storage = {"storage_url": (tmp_path / "objects").as_uri()}
    rt = build_runtime(make_settings(tmp_path, database_url, storage))
    yield rt
    rt.close()


def with_collector(runtime: Runtime, url: str, pki: Pki | None = None, **more: object) -> Settings:
    values: dict[str, object] = {"atna_url": url, "atna_timeout_seconds": 5.0, **more}
    if pki is not None:
        values |= {
            "atna_ca_file": pki.ca,
            "atna_cert_file": pki.client_cert,
            "atna_key_file": pki.client_key,
        }
    return runtime.settings.model_copy(update=values)


def record_events(runtime: Runtime, count: int) -> list[int]:
    """A tenant made through its service, then ``count`` share events; the trail's seqs."""
    with transaction(runtime.sessions) as session:
        tenant = tenants.create_tenant(session=session, slug="acme", name="Acme", ae_titles=["X"])
        for n in range(count):
            audit.record(
                session=session,
                event=audit.Ev.share_viewed,
                actor=audit.Actor("staff", f"staff:{n}", ip="127.0.0.1"),
                tenant_id=tenant.id,
                patient_id=PATIENT,
                share_id=n,
                study_uids=[STUDY],
            )
    return trail(runtime)


def trail(runtime: Runtime) -> list[int]:
    with transaction(runtime.sessions) as session:
        return list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))


def position(runtime: Runtime) -> AuditForward:
    with transaction(runtime.sessions) as session:
        row = session.get(AuditForward, 1)
        assert row is not None
        return row


def forward_all(runtime: Runtime, settings: Settings, now: datetime = T0) -> int:
    total = 0
    while taken := atna.forward_due(sessions=runtime.sessions, settings=settings, now=now):
        total += taken
    return total


def documents(messages: list[Message]) -> list[etree._Element]:
    roots = [etree.fromstring(m.msg) for m in messages]
    for root in roots:
        assert SCHEMA.validate(root), SCHEMA.error_log
    return roots


def share_ids_sent(roots: list[etree._Element]) -> list[str]:
    return [r.find("EventIdentification/EventTypeCode").get("csd-code") for r in roots]


def test_every_event_reaches_the_collector_once_and_in_order_over_tcp(
    runtime: Runtime, syslog_receiver: Receivers
) -> None:
    seqs = record_events(runtime, 6)
    receiver = syslog_receiver()
    settings = with_collector(runtime, receiver.url, atna_batch=3)

    assert forward_all(runtime, settings) == len(seqs)
    assert forward_all(runtime, settings) == 0  # nothing twice

    messages = receiver.wait_for(len(seqs))
    assert len(messages) == len(seqs)
    assert [m.connection for m in messages] == [1, 1, 1, 2, 2, 2, 3][: len(seqs)]
    assert receiver.closed_in_order == 3
    assert {(m.pri, m.msgid, m.app_name, m.bom) for m in messages} == {
        (85, "IHE+RFC-3881", "zorgbericht", False)
    }
    roots = documents(messages)
    assert share_ids_sent(roots) == ["tenant.created"] + ["share.viewed"] * 6
    shares = [r for r in roots if r.find("EventIdentification/EventID").get("csd-code") == "110110"]
    patient = shares[-1].find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']")
    assert patient.get("ParticipantObjectID") == PATIENT
    study = shares[-1].find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='2']")
    assert study.get("ParticipantObjectID") == STUDY
    assert shares[-1].find("AuditSourceIdentification").attrib == {
        "AuditEnterpriseSiteID": "acme",
        "AuditSourceID": runtime.settings.dicom_ae_title,
    }
    row = position(runtime)
    assert (row.seq, row.attempts, row.last_error, row.forwarded_at) == (seqs[-1], 0, None, T0)


def test_the_worker_forwards_over_tls_with_a_client_certificate(
    tmp_path: Path, database_url: str, syslog_pki: Pki, syslog_receiver: Receivers
) -> None:
    receiver = syslog_receiver(pki=syslog_pki)
    storage = {"storage_url": (tmp_path / "objects").as_uri()}
    settings = make_settings(tmp_path, database_url, storage, atna_url=receiver.url)
    rt = build_runtime(with_collector_settings(settings, syslog_pki))
    try:
        seqs = record_events(rt, 3)
        worker.run_once(rt, now=T0)
        messages = receiver.wait_for(len(seqs))
    finally:
        rt.close()
    assert len(messages) == len(seqs)
    assert {m.peer_cn for m in messages} == {"zorgbericht-client"}
    assert receiver.closed_in_order == 1  # close_notify both ways (RFC 5425 4.4)
    assert share_ids_sent(documents(messages)) == ["tenant.created"] + ["share.viewed"] * 3


def with_collector_settings(settings: Settings, pki: Pki) -> Settings:
    return settings.model_copy(
        update={
            "atna_ca_file": pki.ca,
            "atna_cert_file": pki.client_cert,
            "atna_key_file": pki.client_key,
        }
    )


def test_a_collector_that_is_down_delays_forwarding_and_loses_nothing(
    runtime: Runtime, syslog_receiver: Receivers
) -> None:
    seqs = record_events(runtime, 4)
    port = free_port()
    settings = with_collector(runtime, f"tcp://localhost:{port}")

    assert atna.forward_due(sessions=runtime.sessions, settings=settings, now=T0) == 0
    row = position(runtime)
    assert (row.seq, row.attempts, row.next_attempt_at) == (0, 1, T0 + timedelta(seconds=5))
    assert row.last_error and "ConnectionRefusedError" in row.last_error
    assert PATIENT not in row.last_error

    assert (
        atna.forward_due(
            sessions=runtime.sessions, settings=settings, now=T0 + timedelta(seconds=4)
        )
        == 0
    )
    assert position(runtime).attempts == 1  # not yet due: no attempt made

    later = T0 + timedelta(seconds=6)
    assert atna.forward_due(sessions=runtime.sessions, settings=settings, now=later) == 0
    row = position(runtime)
    assert (row.attempts, row.next_attempt_at) == (2, later + timedelta(seconds=10))

    receiver = syslog_receiver(port=port)
    back = later + timedelta(seconds=10)
    assert forward_all(runtime, settings, now=back) == len(seqs)
    messages = receiver.wait_for(len(seqs))
    assert len(messages) == len(seqs)
    row = position(runtime)
    assert (row.seq, row.attempts, row.last_error, row.next_attempt_at) == (seqs[-1], 0, None, None)


def test_a_tls_collector_not_signed_by_the_configured_ca_is_refused(
    runtime: Runtime, syslog_pki: Pki, syslog_receiver: Receivers
) -> None:
    record_events(runtime, 2)
    receiver = syslog_receiver(pki=syslog_pki, rogue=True)
    settings = with_collector(runtime, receiver.url, syslog_pki)

    assert atna.forward_due(sessions=runtime.sessions, settings=settings, now=T0) == 0
    row = position(runtime)
    assert (row.seq, row.attempts) == (0, 1)
    assert row.last_error and "CERTIFICATE_VERIFY_FAILED" in row.last_error
    assert receiver.messages == []


def test_a_tls_collector_refuses_us_without_a_client_certificate(
    runtime: Runtime, syslog_pki: Pki, syslog_receiver: Receivers
) -> None:
    record_events(runtime, 2)
    receiver = syslog_receiver(pki=syslog_pki)
    settings = with_collector(runtime, receiver.url, atna_ca_file=syslog_pki.ca)

    assert atna.forward_due(sessions=runtime.sessions, settings=settings, now=T0) == 0
    row = position(runtime)
    assert (row.seq, row.attempts) == (0, 1)
    assert receiver.messages == []


def test_forwarding_starts_after_events_removed_by_retention(
    runtime: Runtime, syslog_receiver: Receivers, monkeypatch: pytest.MonkeyPatch
) -> None:
    years_ago = datetime.now(UTC) - timedelta(days=6 * 365)
    with monkeypatch.context() as clock:  # the trail refuses updates: its clock moves instead
        clock.setattr(audit, "utcnow", lambda: years_ago)
        record_events(runtime, 3)
    with transaction(runtime.sessions) as session:
        removed = audit.prune(
            session=session, now=datetime.now(UTC), retention=runtime.settings.audit_retention
        )
    assert removed == 4
    receiver = syslog_receiver()
    settings = with_collector(runtime, receiver.url)

    assert forward_all(runtime, settings) == 1
    (message,) = receiver.wait_for(1)
    assert share_ids_sent(documents([message])) == ["audit.pruned"]


def test_a_forwarder_whose_lease_ran_out_does_not_move_the_position(runtime: Runtime) -> None:
    seqs = record_events(runtime, 2)
    with transaction(runtime.sessions) as session:
        session.add(AuditForward(id=1, seq=seqs[0], attempts=0))
    atna._settle(runtime.sessions, start=0, through=seqs[-1], error=None, now=T0)
    assert position(runtime).seq == seqs[0]


def test_only_one_process_forwards_at_a_time(
    tmp_path: Path, pg: object, syslog_receiver: Receivers
) -> None:
    url = pg.create_database("t_atna_lock")  # type: ignore[attr-defined]
    rt = build_runtime(make_settings(tmp_path, url, {"storage_url": (tmp_path / "o").as_uri()}))
    try:
        record_events(rt, 2)
        receiver = syslog_receiver()
        settings = with_collector(rt, receiver.url)
        with transaction(rt.sessions) as holder:
            holder.add(AuditForward(id=1, seq=0, attempts=0))
        with transaction(rt.sessions) as holder:
            holder.scalar(select(AuditForward).with_for_update())
            assert atna.forward_due(sessions=rt.sessions, settings=settings, now=T0) == 0
        assert receiver.messages == []
        assert forward_all(rt, settings) == 3
    finally:
        rt.close()


def test_the_audit_forward_command_sends_the_backlog_and_says_how_many(
    tmp_path: Path, syslog_pki: Pki, syslog_receiver: Receivers
) -> None:
    receiver = syslog_receiver(pki=syslog_pki)
    env = {
        **os.environ,
        "ZB_DATA_DIR": str(tmp_path / "var"),
        "ZB_ATNA_URL": receiver.url,
        "ZB_ATNA_CA_FILE": str(syslog_pki.ca),
        "ZB_ATNA_CERT_FILE": str(syslog_pki.client_cert),
        "ZB_ATNA_KEY_FILE": str(syslog_pki.client_key),
        "ZB_ATNA_BATCH": "1",
    }
    made = zb(env, "tenant", "create", "acme", "--name", "Acme", "--ae", "STORESCU")
    assert made.returncode == 0, made.stderr

    result = zb(env, "audit", "forward")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "forwarded 1 audit events"
    (message,) = receiver.wait_for(1)
    assert share_ids_sent(documents([message])) == ["tenant.created"]

    zb(env, "tenant", "create", "beta", "--name", "Beta", "--ae", "BETA")
    down = zb({**env, "ZB_ATNA_URL": f"tcp://localhost:{free_port()}"}, "audit", "forward")
    assert down.returncode == 1
    assert down.stdout.strip() == "forwarded 0 audit events"
    assert "ConnectionRefusedError" in down.stderr


def zb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = str(Path(sys.executable).parent / "zorgbericht")
    return subprocess.run([command, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_tls_collector_that_closes_without_answering_close_notify_took_the_batch(
    runtime: Runtime, syslog_pki: Pki, syslog_receiver: Receivers
) -> None:
    seqs = record_events(runtime, 2)
    receiver = syslog_receiver(pki=syslog_pki, answer_close_notify=False)  # as rsyslog does
    settings = with_collector(runtime, receiver.url, syslog_pki)

    assert atna.forward_due(sessions=runtime.sessions, settings=settings, now=T0) == len(seqs)
    assert len(receiver.wait_for(len(seqs))) == len(seqs)
    assert position(runtime).seq == seqs[-1]


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_collector_that_resets_mid_batch_gets_the_whole_batch_again(
    runtime: Runtime, syslog_pki: Pki, syslog_receiver: Receivers, tls: bool
) -> None:
    seqs = record_events(runtime, 4)
    pki = syslog_pki if tls else None
    receiver = syslog_receiver(pki=pki, reset_after=2)
    settings = with_collector(runtime, receiver.url, pki)

    assert atna.forward_due(sessions=runtime.sessions, settings=settings, now=T0) == 0
    row = position(runtime)
    assert (row.seq, row.attempts) == (0, 1)

    later = T0 + timedelta(seconds=5)
    assert atna.forward_due(sessions=runtime.sessions, settings=settings, now=later) == len(seqs)
    messages = receiver.wait_for(2 + len(seqs))
    assert [m.connection for m in messages] == [1, 1] + [2] * len(seqs)
    sent = share_ids_sent(documents(messages))
    assert sent[2:] == ["tenant.created"] + ["share.viewed"] * 4  # never lost, maybe twice
    assert position(runtime).seq == seqs[-1]


RSYSLOG_CONF = """
global(workDirectory="{dir}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{pki.ca}"
       defaultNetstreamDriverCertFile="{pki.server_cert}"
       defaultNetstreamDriverKeyFile="{pki.server_key}")
module(load="imtcp")
input(type="imtcp" port="{tls}" name="tls" streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/certvalid")
input(type="imtcp" port="{tcp}" name="tcp")
template(name="raw" type="string" string="%inputname% %rawmsg%\\n")
action(type="omfile" file="{dir}/received.log" template="raw")
"""


@pytest.fixture
def rsyslog(tmp_path: Path, syslog_pki: Pki) -> Iterator[tuple[int, int, Path]]:
    """A real rsyslogd on two high ports: octet-counted TCP, and TLS wanting a client cert."""
    daemon = shutil.which("rsyslogd")
    # infra/install-debian.sh (run by the test command) installs it: missing is a defect.
    assert daemon, "rsyslogd is not installed (Debian packages rsyslog, rsyslog-gnutls)"
    tcp, tls = free_port(), free_port()
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(dir=tmp_path, pki=syslog_pki, tcp=tcp, tls=tls))
    proc = subprocess.Popen(
        [daemon, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(tcp, proc=proc)
        wait_for_port(tls, proc=proc)
        yield tcp, tls, tmp_path / "received.log"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_real_rsyslog_takes_the_trail_over_tcp_and_mutual_tls(
    runtime: Runtime, syslog_pki: Pki, rsyslog: tuple[int, int, Path]
) -> None:
    tcp, tls, received = rsyslog
    seqs = record_events(runtime, 2)
    assert forward_all(runtime, with_collector(runtime, f"tcp://localhost:{tcp}")) == len(seqs)
    more = record_more(runtime, 2)
    settings = with_collector(runtime, f"tls://localhost:{tls}", syslog_pki)
    assert forward_all(runtime, settings) == more

    lines = wait_for_lines(received, len(seqs) + more)
    assert [line.split(" ", 1)[0] for line in lines] == ["tcp"] * 3 + ["tls"] * 2
    for line in lines:
        message = parse(line.split(" ", 1)[1].encode())
        assert (message.pri, message.msgid, message.app_name) == (85, "IHE+RFC-3881", "zorgbericht")
        documents([message])
    assert position(runtime).seq == trail(runtime)[-1]


def record_more(runtime: Runtime, count: int) -> int:
    """``count`` revocations with no tenant; how many."""
    with transaction(runtime.sessions) as session:
        for n in range(count):
            audit.record(
                session=session,
                event=audit.Ev.share_revoked,
                actor=audit.Actor("apikey", f"apikey:{n}"),
                tenant_id=None,
                patient_id=PATIENT,
            )
    return count


def wait_for_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            break
        time.sleep(0.05)
    return lines
