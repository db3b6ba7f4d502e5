"""The ATNA message (DICOM PS3.15 A.5 XML), its RFC 5424 syslog wrapping and framing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from tests.syslog_receiver import SyslogError, parse, read_frames
from zorgbericht.audit import atna
from zorgbericht.audit.models import AuditEvent
from zorgbericht.audit.service import Ev, Outcome

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parents[1] / "data/dicom-audit-message.rng")))
WHEN = datetime(2026, 11, 22, 13, 5, 7, 123456, tzinfo=UTC)
STUDIES = ["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"]


def row(event: Ev = Ev.share_created, **values: object) -> AuditEvent:
    fields: dict[str, object] = {
        "seq": 7,
        "occurred_at": WHEN,
        "tenant_id": 1,
        "event": event.event_name,
        "event_code": event.code,
        "action": event.action,
        "outcome": 0,
        "actor_kind": "apikey",
        "actor_id": "apikey:3",
        "on_behalf_of": None,
        "ip": "192.0.2.10",
        "user_agent": "curl/8.5 secret-agent",
        "patient_id": "PAT-0042",
        "bsn_last3": "987",
        "share_id": 4711,
        "study_uids": STUDIES,
        "details": {"reason": "detail-not-for-atna"},
        "prev_hash": "0" * 64,
        "hash": "f" * 64,
        **values,
    }
    return AuditEvent(**fields)


def message(event: AuditEvent, *, site: str | None = "acme") -> etree._Element:
    xml = atna.audit_message(event, source_id="ZORGBERICHT", site=site)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage>')
    root = etree.fromstring(xml)
    assert SCHEMA.validate(root), SCHEMA.error_log
    return root


def objects(root: etree._Element, type_code: str) -> list[etree._Element]:
    return root.findall(
        f"ParticipantObjectIdentification[@ParticipantObjectTypeCode='{type_code}']"
    )


@pytest.mark.parametrize("kind", list(Ev), ids=lambda e: e.event_name)
def test_every_event_kind_is_a_valid_dicom_audit_message(kind: Ev) -> None:
    root = message(row(kind, on_behalf_of="patient"))
    ident = root.find("EventIdentification")
    assert ident.get("EventActionCode") == kind.action
    assert ident.get("EventDateTime") == "2026-11-22T13:05:07.123456Z"
    assert ident.get("EventOutcomeIndicator") == "0"
    event_id = ident.find("EventID")
    assert event_id.attrib == {
        "csd-code": kind.code,
        "codeSystemName": "DCM",
        "originalText": atna.EVENT_NAMES[kind.code],
    }
    assert ident.find("EventTypeCode").get("csd-code") == kind.event_name
    assert [child.tag for child in root] == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
    ]


def test_dicom_names_of_the_event_codes() -> None:
    assert atna.EVENT_NAMES["110106"] == "Export"
    assert atna.EVENT_NAMES["110114"] == "User Authentication"
    assert atna.EVENT_NAMES["110103"] == "DICOM Instances Accessed"
    assert {kind.code for kind in Ev} <= set(atna.EVENT_NAMES)


def test_patient_is_a_person_with_an_rfc_3881_patient_number() -> None:
    (patient,) = objects(message(row()), "1")
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert patient.get("ParticipantObjectID") == "PAT-0042"
    assert patient.find("ParticipantObjectIDTypeCode").attrib == {
        "csd-code": "2",
        "codeSystemName": "RFC-3881",
        "originalText": "Patient Number",
    }
    assert patient.findtext("ParticipantObjectName") == "PAT-0042"  # no name is made up


def test_each_study_is_a_system_object_with_its_instance_uid() -> None:
    studies = objects(message(row()), "2")
    assert [s.get("ParticipantObjectID") for s in studies] == STUDIES
    for study in studies:
        assert study.get("ParticipantObjectTypeCodeRole") == "3"
        assert study.find("ParticipantObjectIDTypeCode").attrib == {
            "csd-code": "110180",
            "codeSystemName": "DCM",
            "originalText": "Study Instance UID",
        }


def test_a_row_without_patient_study_address_or_actor_id_is_still_valid() -> None:
    bare = row(
        Ev.staff_sign_in,
        patient_id=None,
        bsn_last3=None,
        study_uids=[],
        ip=None,
        actor_kind="staff",
        actor_id=None,
        outcome=int(Outcome.minor_failure),
    )
    root = message(bare, site=None)
    assert root.find("ParticipantObjectIdentification") is None
    (actor,) = root.findall("ActiveParticipant")
    assert actor.attrib == {"UserID": "staff", "UserIsRequestor": "true"}
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert root.find("AuditSourceIdentification").attrib == {"AuditSourceID": "ZORGBERICHT"}


def test_actor_address_and_on_whose_behalf() -> None:
    root = message(row(Ev.download_started, actor_id="recipient-session:5", on_behalf_of="patient"))
    actor, behalf = root.findall("ActiveParticipant")
    assert actor.attrib == {
        "UserID": "recipient-session:5",
        "UserIsRequestor": "true",
        "NetworkAccessPointID": "192.0.2.10",
        "NetworkAccessPointTypeCode": "2",
    }
    assert behalf.attrib == {"UserID": "patient", "UserIsRequestor": "false"}
    source = root.find("AuditSourceIdentification")
    assert source.attrib == {"AuditEnterpriseSiteID": "acme", "AuditSourceID": "ZORGBERICHT"}


def test_nothing_beyond_what_the_row_holds() -> None:
    xml = atna.audit_message(row(), source_id="ZORGBERICHT", site=None)
    for absent in (b"secret-agent", b"detail-not-for-atna", b"987", b"4711", b"f" * 64, b"BSN"):
        assert absent not in xml


def test_markup_in_values_is_escaped_and_invalid_characters_replaced() -> None:
    root = message(row(patient_id='<x a="1">&\x00\x1f', actor_id="staff:<1>"))
    (patient,) = objects(root, "1")
    assert patient.get("ParticipantObjectID") == '<x a="1">&\ufffd\ufffd'
    assert root.find("ActiveParticipant").get("UserID") == "staff:<1>"


def test_event_time_is_written_in_utc() -> None:
    amsterdam = WHEN.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Amsterdam"))
    root = message(row(occurred_at=amsterdam))
    assert root.find("EventIdentification").get("EventDateTime") == "2026-11-22T13:05:07.123456Z"


def test_syslog_header_follows_iti_20() -> None:
    xml = atna.audit_message(row(), source_id="ZORGBERICHT", site=None)
    raw = atna.syslog_message(xml, now=WHEN, hostname="zb-worker-1", procid="4242")
    parsed = parse(raw)
    assert (parsed.pri, parsed.facility, parsed.severity) == (85, 10, 5)
    assert parsed.version == 1
    assert parsed.timestamp == "2026-11-22T13:05:07.123456Z"
    assert (parsed.hostname, parsed.app_name, parsed.procid) == (
        "zb-worker-1",
        "zorgbericht",
        "4242",
    )
    assert parsed.msgid == "IHE+RFC-3881"
    assert parsed.structured_data == "-"
    assert not parsed.bom  # CP-ITI-477: no byte order mark before the XML
    assert parsed.msg == xml


def test_unprintable_header_fields_become_the_nilvalue() -> None:
    raw = atna.syslog_message(b"<x/>", now=WHEN, hostname="zörg host", procid="")
    parsed = parse(raw)
    assert (parsed.hostname, parsed.procid) == ("-", "-")


def test_octet_counting_counts_octets_not_characters() -> None:
    first = atna.syslog_message("<é/>".encode(), now=WHEN, hostname="h", procid="1")
    second = atna.syslog_message(b"<b/>", now=WHEN, hostname="h", procid="1")
    frame = atna.octet_frame(first)
    assert frame.startswith(str(len(first)).encode() + b" <85>1 ")
    stream = [frame + atna.octet_frame(second)[:5], atna.octet_frame(second)[5:], b""]
    assert list(read_frames(lambda _n: stream.pop(0))) == [first, second]


@pytest.mark.parametrize(
    "data",
    [b"<85>1 - h a p m - x", b"012 <85>1 - h a p m -", b"20 <85>1 - h a", b"99999999999 "],
    ids=["no-length", "leading-zero", "truncated", "too-long"],
)
def test_the_receiver_refuses_malformed_framing(data: bytes) -> None:
    stream = [data, b""]
    with pytest.raises(SyslogError):
        list(read_frames(lambda _n: stream.pop(0)))


@pytest.mark.parametrize(
    "raw",
    [b"<192>1 - h a p m -", b"<85> - h a p m -", b"<85>1 2026-11-22 h a p m -", b"<85>1 - h a p m"],
    ids=["pri-range", "no-version", "bad-timestamp", "no-sd"],
)
def test_the_receiver_refuses_malformed_messages(raw: bytes) -> None:
    with pytest.raises(SyslogError):
        parse(raw)


def test_backoff_doubles_and_is_capped() -> None:
    assert [atna.backoff(n) for n in (1, 2, 3)] == [timedelta(seconds=s) for s in (5, 10, 20)]
    assert atna.backoff(9) == timedelta(minutes=15)
    assert atna.backoff(10_000) == timedelta(minutes=15)
