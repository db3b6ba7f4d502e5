"""Forward the audit trail to an IHE ATNA collector: DICOM audit XML in RFC 5424 syslog.

The message is the DICOM PS3.15 Annex A.5 ``AuditMessage`` (schema A.5.1; event ids and
their names A.5.3; participant object id types A.5.1.2.4, the RFC 3881 codes), one per
trail row and holding nothing the row does not hold. It travels as IHE ITI-20 "Record
Audit Event" (ITI TF-2 3.20.4.1.2): an RFC 5424 syslog message with PRI ``<85>``
(facility 10, security/authorization, at severity 5, notice), MSGID ``IHE+RFC-3881``, no
STRUCTURED-DATA, and the XML as MSG in UTF-8 without a byte order mark (CP-ITI-477; RFC
5424 calls such a MSG "MSG-ANY"). On the wire every message is octet-counted, ``LEN SP
SYSLOG-MSG``: RFC 5425 section 4.3 over TLS, RFC 6587 section 3.4.1 over plain TCP.

The trail is the queue: ``AuditForward.seq`` says how far the collector has taken it and
moves only after the batch's connection ended in order: over TLS our close_notify (RFC
5425 section 4.4) answered by the collector's close_notify or close; over TCP our
half-close answered by the collector's close. A reset, an alert or a time-out keeps the
position, so the batch is sent again: an event may arrive twice but is not dropped by a
collector that fails mid-batch. Syslog has no acknowledgement, so one case stays open: a
collector that closes a connection at once, before our frames reach it, looks the same
as one that read them (RELP would close that gap; ATNA does not use it).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from zorgbericht.audit.models import AuditEvent, AuditForward, AuditHead
from zorgbericht.db import transaction, utcnow
from zorgbericht.settings import Settings
from zorgbericht.sqlutil import insert
from zorgbericht.tenants.models import Tenant

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PRI = b"<85>"  # facility 10 * 8 + severity 5 (ITI TF-2 3.20.4.1.2)
MSGID = b"IHE+RFC-3881"
APP_NAME = b"zorgbericht"
OUR_CODES = "99ZORGBERICHT"  # a private coding scheme (the "99" prefix) for our event names
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
BACKOFF_FIRST = timedelta(seconds=5)
BACKOFF_CAP = timedelta(minutes=15)
LEASE_MINIMUM = timedelta(seconds=60)

# DICOM PS3.15 A.5.3 (PS3.16 CID 400): the EventID codes and their meanings.
EVENT_NAMES = {
    "110100": "Application Activity",
    "110101": "Audit Log Used",
    "110102": "Begin Transferring DICOM Instances",
    "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred",
    "110105": "DICOM Study Deleted",
    "110106": "Export",
    "110107": "Import",
    "110108": "Network Entry",
    "110109": "Order Record",
    "110110": "Patient Record",
    "110111": "Procedure Record",
    "110112": "Query",
    "110113": "Security Alert",
    "110114": "User Authentication",
}

_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class CollectorError(Exception):
    """The collector could not be reached or did not take the batch; no patient data."""


# -- the message ---------------------------------------------------------------------------


def audit_message(event: AuditEvent, *, source_id: str, site: str | None) -> bytes:
    """The DICOM PS3.15 A.5.1 AuditMessage XML for one trail row."""
    root = ET.Element("AuditMessage")
    _event_identification(root, event)
    _active_participants(root, event)
    source = _element(
        root, "AuditSourceIdentification", AuditEnterpriseSiteID=site, AuditSourceID=source_id
    )
    _element(source, "AuditSourceTypeCode", **{"csd-code": "4"})  # application server
    if event.patient_id:
        _participant_object(root, event.patient_id, "1", "1", ("2", "RFC-3881", "Patient Number"))
    for uid in event.study_uids or ():
        _participant_object(root, uid, "2", "3", ("110180", "DCM", "Study Instance UID"))
    return XML_DECLARATION + ET.tostring(root, encoding="unicode").encode()


def _event_identification(root: ET.Element, event: AuditEvent) -> None:
    ident = _element(
        root,
        "EventIdentification",
        EventActionCode=event.action,
        EventDateTime=_utc(event.occurred_at),
        EventOutcomeIndicator=str(event.outcome),
    )
    name = EVENT_NAMES.get(event.event_code, event.event_code)
    _coded(ident, "EventID", (event.event_code, "DCM", name))
    _coded(ident, "EventTypeCode", (event.event, OUR_CODES, event.event))


def _active_participants(root: ET.Element, event: AuditEvent) -> None:
    _element(
        root,
        "ActiveParticipant",
        UserID=event.actor_id or event.actor_kind,
        UserIsRequestor="true",
        NetworkAccessPointID=event.ip,
        NetworkAccessPointTypeCode="2" if event.ip else None,
    )
    if event.on_behalf_of:
        _element(root, "ActiveParticipant", UserID=event.on_behalf_of, UserIsRequestor="false")


def _participant_object(
    root: ET.Element, object_id: str, type_code: str, role: str, id_type: tuple[str, str, str]
) -> None:
    # The schema wants a ParticipantObjectName (or a query); the row holds no name, so the
    # object is named by its own identifier rather than by anything made up.
    obj = _element(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=object_id,
        ParticipantObjectTypeCode=type_code,
        ParticipantObjectTypeCodeRole=role,
    )
    _coded(obj, "ParticipantObjectIDTypeCode", id_type)
    ET.SubElement(obj, "ParticipantObjectName").text = _text(object_id)


def _coded(parent: ET.Element, tag: str, value: tuple[str, str, str]) -> None:
    code, system, meaning = value
    _element(parent, tag, **{"csd-code": code, "codeSystemName": system, "originalText": meaning})


def _element(parent: ET.Element, tag: str, **attributes: str | None) -> ET.Element:
    """A child with the given attributes in the given (schema) order; None ones left out."""
    values = {k: _text(v) for k, v in attributes.items() if v is not None and v != ""}
    return ET.SubElement(parent, tag, values)


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- syslog --------------------------------------------------------------------------------


def syslog_message(xml: bytes, *, now: datetime, hostname: str, procid: str) -> bytes:
    """The RFC 5424 SYSLOG-MSG that carries one audit message (ITI-20 header fields)."""
    header = b" ".join(
        (
            PRI + b"1",
            _utc(now).encode(),
            _header_field(hostname, 255),
            APP_NAME,
            _header_field(procid, 128),
            MSGID,
            b"-",  # no STRUCTURED-DATA
        )
    )
    return header + b" " + xml


def octet_frame(message: bytes) -> bytes:
    """Frame one message by octet counting: ``MSG-LEN SP SYSLOG-MSG`` (RFC 5425, RFC 6587)."""
    return str(len(message)).encode() + b" " + message


def _header_field(value: str, limit: int) -> bytes:
    """1 to ``limit`` printable US-ASCII characters, else the NILVALUE (RFC 5424 6.2)."""
    data = value.encode("ascii", "replace")[:limit]
    return data if data and all(33 <= b <= 126 for b in data) else b"-"


# -- the sender ----------------------------------------------------------------------------


def send(settings: Settings, frames: Sequence[bytes], *, deadline: float) -> None:
    """Write the frames over one connection and close it in order, or raise CollectorError.

    The collector has taken the frames once it ended the connection after our end of it:
    over TLS after our close_notify (RFC 5425 4.4), over TCP after our half-close.
    ``deadline`` is a ``time.monotonic()`` value after which the batch is given up.
    """
    try:
        with _connection(settings) as stream:
            for frame in frames:
                if time.monotonic() > deadline:
                    raise CollectorError("the batch took longer than its lease")
                stream.sendall(frame)
            stream.close_in_order()
    except OSError as exc:  # ssl.SSLError and socket.timeout are OSErrors too
        raise CollectorError(_reason(exc)) from exc


@contextmanager
def _connection(settings: Settings) -> Iterator[_Tcp | _Tls]:
    assert settings.atna_url
    url = urlsplit(settings.atna_url)
    host, port = url.hostname or "", url.port or 0
    with socket.create_connection((host, port), timeout=settings.atna_timeout_seconds) as sock:
        yield _Tls(sock, tls_context(settings), host) if url.scheme == "tls" else _Tcp(sock)


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Check the collector against ``atna_ca_file``; present our certificate when set."""
    cafile = str(settings.atna_ca_file) if settings.atna_ca_file else None
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 5425 wants TLS 1.2 at least
    if settings.atna_cert_file:
        key = str(settings.atna_key_file) if settings.atna_key_file else None
        context.load_cert_chain(str(settings.atna_cert_file), key)
    return context


class _Tcp:
    """Plain TCP (RFC 6587): a half-close, then wait for the collector to close too."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_in_order(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)
        while self.sock.recv(4096):
            pass  # a collector does not answer; whatever it sends is not ours to read


class _Tls:
    """TLS through memory buffers, so the collector's end of the connection is seen.

    ``SSLSocket.unwrap()`` may return before anything came back from the collector (it
    gives up after two tries of SSL_shutdown, e.g. while TLS 1.3 session tickets arrive);
    reading on after our close_notify sees what the collector really did: its own
    close_notify (RFC 5425 4.4), or a plain close as rsyslog 8.2302 does, both only after
    it read our close_notify and so every frame before it; an alert or a reset fails.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, host: str) -> None:
        self.sock, self.incoming, self.outgoing = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host)
        self._pump(self.tls.do_handshake)

    def sendall(self, data: bytes) -> None:
        self._pump(lambda: self.tls.write(data))

    def close_in_order(self) -> None:
        try:
            self._pump(self.tls.unwrap)  # sends our close_notify
            while self._pump(lambda: self.tls.read(4096)):
                pass  # nothing is expected from a collector; read on to its end
        except (ssl.SSLZeroReturnError, _ClosedByCollector):
            pass

    def _pump(self, operation: Callable[[], _T]) -> _T:
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    raise _ClosedByCollector("the collector closed the connection") from None
                self.incoming.write(data)
                continue
            self._flush()
            return result

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)


class _ClosedByCollector(ConnectionError):
    """The collector closed the TCP connection: the end of a batch, or a failure before it."""


def _reason(exc: BaseException) -> str:
    """What went wrong, for ``last_error`` and the log: the exception, never our data."""
    return f"{type(exc).__name__}: {exc}"[:255]


# -- the job -------------------------------------------------------------------------------


def forward_due(
    *, sessions: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> int:
    """Send the next batch of the trail to the ATNA collector; return how many it took.

    Off unless ``ZB_ATNA_URL`` is set. One process forwards at a time: a short transaction
    claims the ``AuditForward`` row (``FOR UPDATE SKIP LOCKED``) and leases it by moving
    ``next_attempt_at`` ahead, so no transaction or lock is held while the network is
    used; a second transaction records the outcome only if the position is still the
    claimed one. A failure keeps the position, counts the attempt and backs off
    exponentially. Forwarding is not itself audited: those events would feed themselves.
    """
    if not settings.atna_url:
        return 0
    now = now or utcnow()
    lease = max(LEASE_MINIMUM, timedelta(seconds=settings.atna_timeout_seconds * 4))
    claimed = _claim(sessions, settings, now, lease)
    if claimed is None:
        return 0
    start, through, frames = claimed
    try:
        send(settings, frames, deadline=time.monotonic() + lease.total_seconds() - 5)
    except CollectorError as exc:
        log.warning("ATNA forwarding after event %d failed: %s", start, exc)
        _settle(sessions, start=start, through=None, error=str(exc), now=now)
        return 0
    _settle(sessions, start=start, through=through, error=None, now=now)
    return len(frames)


def _claim(
    sessions: sessionmaker[Session], settings: Settings, now: datetime, lease: timedelta
) -> tuple[int, int, list[bytes]] | None:
    """Lease the forwarding row and frame the events after it; None if not due or idle."""
    with transaction(sessions) as session:
        row = _locked_row(session)
        if row is None or (row.next_attempt_at is not None and row.next_attempt_at > now):
            return None
        floor = session.scalar(select(AuditHead.floor_seq).where(AuditHead.id == 1)) or 0
        if row.seq < floor:
            log.warning("ATNA: events %d to %d were removed before forwarding", row.seq + 1, floor)
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.seq > max(row.seq, floor))
            .order_by(AuditEvent.seq)
            .limit(settings.atna_batch)
        ).all()
        if not events:
            return None
        frames = _frames(session, settings, events, now)
        row.next_attempt_at = now + lease
        return row.seq, events[-1].seq, frames


def _locked_row(session: Session) -> AuditForward | None:
    """The forwarding row, created on first use; None while another process holds it."""
    query = select(AuditForward).where(AuditForward.id == 1).with_for_update(skip_locked=True)
    row = session.scalar(query)
    if row is None:
        session.execute(
            insert(session, AuditForward).on_conflict_do_nothing(),
            {"id": 1, "seq": 0, "attempts": 0},
        )
        row = session.scalar(query)
    return row


def _frames(
    session: Session, settings: Settings, events: Sequence[AuditEvent], now: datetime
) -> list[bytes]:
    tenant_ids = {e.tenant_id for e in events if e.tenant_id is not None}
    rows = session.execute(select(Tenant.id, Tenant.slug).where(Tenant.id.in_(tenant_ids)))
    slugs: dict[int | None, str] = {tenant_id: slug for tenant_id, slug in rows}
    source_id = settings.atna_source_id or settings.dicom_ae_title
    hostname, procid = socket.gethostname(), str(os.getpid())
    return [
        octet_frame(
            syslog_message(
                audit_message(event, source_id=source_id, site=slugs.get(event.tenant_id)),
                now=now,
                hostname=hostname,
                procid=procid,
            )
        )
        for event in events
    ]


def _settle(
    sessions: sessionmaker[Session],
    *,
    start: int,
    through: int | None,
    error: str | None,
    now: datetime,
) -> None:
    """Move the position past ``through``, or count the failed attempt and back off."""
    with transaction(sessions) as session:
        row = session.get(AuditForward, 1, with_for_update=True)
        if row is None or row.seq != start:
            return  # the lease ran out and another process moved on
        if through is not None:
            row.seq, row.attempts, row.last_error = through, 0, None
            row.next_attempt_at, row.forwarded_at = None, now
            return
        row.attempts += 1
        row.last_error = error
        row.next_attempt_at = now + backoff(row.attempts)


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failure in a row: doubling, capped at 15 minutes."""
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(attempts - 1, 20))


def forward_backlog(
    *, sessions: sessionmaker[Session], settings: Settings
) -> tuple[int, str | None]:
    """Forward batch after batch until all is sent or one fails: how many, and the last error."""
    total = 0
    while taken := forward_due(sessions=sessions, settings=settings):
        total += taken
    with transaction(sessions) as session:
        row = session.get(AuditForward, 1)
        return total, row.last_error if row is not None else None
