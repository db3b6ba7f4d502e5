"""The recipient's download archives: DICOM media (PS3.12 Annex V, IHE PDI) and preview JPEGs.

Both are sized, stored (never deflated) ``zipstream.ZipStream`` objects: their length is known
before the first byte is sent, and the instances are streamed from the object store byte for
byte. ``stream_zip`` moves one to the event loop without a thread hop per chunk.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import logging
import re
import struct
import threading
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pydicom
from pydicom import uid
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from sqlalchemy import select
from sqlalchemy.orm import Session
from zipstream import ZIP_STORED, ZipStream

from zorgbericht.recipients.reports import encapsulated_pdf, is_report, sr_text
from zorgbericht.staging.models import Instance, PreviewState, Series, Study
from zorgbericht.staging.service import preview_key
from zorgbericht.storage.base import ObjectStore

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024  # large reads: S3 round trips and syscalls dominate small ones
LOOKUP_THREADS = 8  # parallel HEAD / header requests; on S3 each is one round trip
HEADER_FIRST_READ = 64 * 1024  # an image header nearly always fits; grows by doubling
HEADER_READ_LIMIT = 64 * 1024 * 1024
REPORT_READ_LIMIT = 64 * 1024 * 1024
DIR_RECORD_LIMIT = 16 * 1024  # bytes of JSON; keeps the index row small
FILE_SET_ID = "ZORGBERICHT"


# --------------------------------------------------------------------------- what goes in


@dataclass(frozen=True)
class ArchiveInstance:
    """One stored instance: where it is, how big, what the DICOMDIR says of it."""

    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    bytes: int
    number: int | None
    frames: int
    preview_done: bool
    dir_record: dict[str, Any] | None


@dataclass(frozen=True)
class ArchiveSeries:
    """One series, its instances in index order."""

    series_uid: str
    number: int | None
    description: str | None
    modality: str | None
    instances: tuple[ArchiveInstance, ...]


@dataclass(frozen=True)
class ArchiveStudy:
    """One study as it goes into an archive, with its series."""

    study_uid: str
    description: str | None
    date: date | None
    modalities: tuple[str, ...]
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    series: tuple[ArchiveSeries, ...]


def archive_studies(session: Session, study_ids: Iterable[int]) -> list[ArchiveStudy]:
    """Load the studies (not purged) with their series and instances in three queries."""
    ids = set(study_ids)
    if not ids:
        return []
    studies = session.scalars(
        select(Study).where(Study.id.in_(ids), Study.purged_at.is_(None))
    ).all()
    series_rows = session.execute(
        select(
            Series.id, Series.study_id, Series.series_uid, Series.number,
            Series.description, Series.modality,
        ).where(Series.study_id.in_(ids))
    ).all()  # fmt: skip
    instance_rows = session.execute(
        select(
            Instance.series_id, Instance.sop_uid, Instance.sop_class_uid,
            Instance.transfer_syntax_uid, Instance.object_key, Instance.bytes,
            Instance.number, Instance.frames, Instance.preview_state, Instance.dir_record,
        )
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id.in_(ids))
    ).all()  # fmt: skip
    by_series: dict[int, list[ArchiveInstance]] = {}
    for r in instance_rows:
        by_series.setdefault(r.series_id, []).append(
            ArchiveInstance(
                sop_uid=r.sop_uid,
                sop_class_uid=r.sop_class_uid,
                transfer_syntax_uid=r.transfer_syntax_uid,
                object_key=r.object_key,
                bytes=r.bytes,
                number=r.number,
                frames=max(1, r.frames or 1),
                preview_done=r.preview_state == PreviewState.done,
                dir_record=r.dir_record,
            )
        )
    return _assemble(studies, series_rows, by_series)


def _assemble(
    studies: Sequence[Study],
    series_rows: Sequence[Any],
    by_series: dict[int, list[ArchiveInstance]],
) -> list[ArchiveStudy]:
    by_study: dict[int, list[ArchiveSeries]] = {}
    for r in sorted(series_rows, key=lambda r: (_none_last(r.number), r.series_uid)):
        instances = sorted(by_series.get(r.id, []), key=lambda i: (_none_last(i.number), i.sop_uid))
        by_study.setdefault(r.study_id, []).append(
            ArchiveSeries(r.series_uid, r.number, r.description, r.modality, tuple(instances))
        )
    ordered = sorted(studies, key=lambda s: (s.study_date or date.max, s.study_uid))
    return [
        ArchiveStudy(
            study_uid=s.study_uid,
            description=s.description,
            date=s.study_date,
            modalities=tuple(m for m in (s.modalities or "").split("\\") if m),
            patient_id=s.patient_id,
            patient_name=s.patient_name,
            accession_number=s.accession_number,
            series=tuple(by_study.get(s.id, [])),
        )
        for s in ordered
    ]


def _none_last(number: int | None) -> tuple[bool, int]:
    return (number is None, number or 0)


# --------------------------------------------------------------------------- DICOMDIR records

# Record keys per PS3.3 Annex F.5 as (keyword, type). Type 1 must be present and non-empty,
# type 2 present (may be empty), 1C and 3 are copied only when the instance has them.
Keys = tuple[tuple[str, str], ...]
PATIENT_KEYS: Keys = (("PatientID", "1"), ("PatientName", "2"))
STUDY_KEYS: Keys = (
    ("StudyDate", "1"),
    ("StudyTime", "1"),
    ("StudyDescription", "2"),
    ("StudyInstanceUID", "1C"),
    ("StudyID", "1"),
    ("AccessionNumber", "2"),
)
SERIES_KEYS: Keys = (("Modality", "1"), ("SeriesInstanceUID", "1"), ("SeriesNumber", "1"))
_CONTENT_ID: Keys = (
    ("InstanceNumber", "1"),
    ("ContentDate", "1"),
    ("ContentTime", "1"),
    ("ContentLabel", "1"),
    ("ContentDescription", "2"),
    ("ContentCreatorName", "2"),
)
_GENERIC: Keys = (("InstanceNumber", "1"), ("ContentDate", "1"), ("ContentTime", "1"))
LEAF_KEYS: dict[str, Keys] = {
    # Rows and Columns left the IMAGE record in later editions; validators now flag them.
    "IMAGE": (("InstanceNumber", "1"),),
    "SR DOCUMENT": (
        ("InstanceNumber", "1"),
        ("CompletionFlag", "1"),
        ("VerificationFlag", "1"),
        ("ContentDate", "1"),
        ("ContentTime", "1"),
        ("VerificationDateTime", "1C"),
        ("ConceptNameCodeSequence", "1"),
        ("ContentSequence", "1C"),
    ),
    "KEY OBJECT DOC": (
        ("InstanceNumber", "1"),
        ("ContentDate", "1"),
        ("ContentTime", "1"),
        ("ConceptNameCodeSequence", "1"),
        ("ContentSequence", "1C"),
    ),
    "ENCAP DOC": (
        ("InstanceNumber", "1"),
        ("ContentDate", "2"),
        ("ContentTime", "2"),
        ("DocumentTitle", "2"),
        ("HL7InstanceIdentifier", "1C"),
        ("ConceptNameCodeSequence", "2"),
        ("MIMETypeOfEncapsulatedDocument", "1"),
    ),
    "PRESENTATION": (
        ("InstanceNumber", "1"),
        ("PresentationCreationDate", "1"),
        ("PresentationCreationTime", "1"),
        ("ContentLabel", "1"),
        ("ContentDescription", "2"),
        ("ContentCreatorName", "2"),
        ("ReferencedSeriesSequence", "1C"),
        ("BlendingSequence", "1C"),
    ),
    "RT DOSE": (("InstanceNumber", "1"), ("DoseSummationType", "1")),
    "RT STRUCTURE SET": (
        ("InstanceNumber", "1"),
        ("StructureSetLabel", "1"),
        ("StructureSetDate", "2"),
        ("StructureSetTime", "2"),
    ),
    "RT PLAN": (
        ("InstanceNumber", "1"),
        ("RTPlanLabel", "1"),
        ("RTPlanDate", "2"),
        ("RTPlanTime", "2"),
    ),
    "RT TREAT RECORD": (
        ("InstanceNumber", "1"),
        ("TreatmentDate", "2"),
        ("TreatmentTime", "2"),
    ),
    "WAVEFORM": _GENERIC,
    "RAW DATA": _GENERIC,
    "REGISTRATION": _CONTENT_ID,
    "FIDUCIAL": _CONTENT_ID,
    "VALUE MAP": _CONTENT_ID,
}
_LEAF_BY_CLASS: dict[str, str] = {
    uid.KeyObjectSelectionDocumentStorage: "KEY OBJECT DOC",
    uid.ProcedureLogStorage: "SR DOCUMENT",
    uid.SpectaclePrescriptionReportStorage: "SR DOCUMENT",
    uid.MacularGridThicknessAndVolumeReportStorage: "SR DOCUMENT",
    uid.BasicStructuredDisplayStorage: "PRESENTATION",
    uid.RTDoseStorage: "RT DOSE",
    uid.RTStructureSetStorage: "RT STRUCTURE SET",
    uid.RTPlanStorage: "RT PLAN",
    uid.RTIonPlanStorage: "RT PLAN",
    uid.RTBeamsTreatmentRecordStorage: "RT TREAT RECORD",
    uid.RTBrachyTreatmentRecordStorage: "RT TREAT RECORD",
    uid.RTTreatmentSummaryRecordStorage: "RT TREAT RECORD",
    uid.RTIonBeamsTreatmentRecordStorage: "RT TREAT RECORD",
    uid.RawDataStorage: "RAW DATA",
    uid.SpatialRegistrationStorage: "REGISTRATION",
    uid.DeformableSpatialRegistrationStorage: "REGISTRATION",
    uid.SpatialFiducialsStorage: "FIDUCIAL",
    uid.RealWorldValueMappingStorage: "VALUE MAP",
}
# Whole families of SOP classes share a record type; their registered names say which.
_LEAF_BY_NAME = (
    ("SR Storage", "SR DOCUMENT"),
    ("Presentation State Storage", "PRESENTATION"),
    ("Waveform Storage", "WAVEFORM"),
)
# Invented values for type 1 keys an instance lacks or leaves empty: a DICOMDIR with an empty
# type 1 key is invalid and some viewers then refuse the whole medium. Dates and times say
# "unknown" (1900-01-01 00:00), numbers are the position on the medium, codes are generic.
_INVENTED: dict[str, Any] = {
    "PatientID": "UNKNOWN",
    "Modality": "OT",
    "CompletionFlag": "PARTIAL",
    "VerificationFlag": "UNVERIFIED",
    "MIMETypeOfEncapsulatedDocument": "application/octet-stream",
}
_INVENTED_BY_VR: dict[str, Any] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "CS": "UNKNOWN",
    "SH": "UNKNOWN",
    "LO": "UNKNOWN",
    "IS": "1",
}
_INVENTED_CODE = ("18748-4", "LN", "Diagnostic imaging report")
# Type 1C keys that are required, and so invented when absent, under a condition on the record.
_REQUIRED_WHEN: dict[str, Callable[[Dataset], bool]] = {
    "VerificationDateTime": lambda rec: str(rec.get("VerificationFlag", "")) == "VERIFIED",
}


def leaf_record_type(sop_class_uid: str) -> str:
    """Name the DICOMDIR record type (PS3.3 F.4) that references an instance of this class."""
    if sop_class_uid in _LEAF_BY_CLASS:
        return _LEAF_BY_CLASS[sop_class_uid]
    name = uid.UID(sop_class_uid).name
    if name.startswith("Encapsulated "):
        return "ENCAP DOC"
    for suffix, record_type in _LEAF_BY_NAME:
        if name.endswith(suffix):
            return record_type
    return "IMAGE"


def dir_record_from_dataset(ds: Dataset) -> dict[str, Any] | None:
    """Copy the header attributes this instance's DICOMDIR records need, as DICOM JSON."""
    try:
        leaf = leaf_record_type(str(ds.get("SOPClassUID", "")))
        subset = Dataset()
        for keyword, _ in PATIENT_KEYS + STUDY_KEYS + SERIES_KEYS + LEAF_KEYS[leaf]:
            if keyword in ds:
                subset.add(ds[keyword])
        if leaf == "SR DOCUMENT" and "VerificationDateTime" not in subset:
            _latest_verification(ds, subset)
        if "ContentSequence" in subset:
            subset.ContentSequence = _title_modifiers(subset.ContentSequence)
            if not subset.ContentSequence:
                del subset.ContentSequence
        return _bounded_json(subset, LEAF_KEYS[leaf])
    except Exception:  # a malformed value must not keep the instance out; None reads it later
        return None


def _bounded_json(subset: Dataset, leaf_keys: Keys) -> dict[str, Any] | None:
    record = subset.to_json_dict()
    if len(json.dumps(record)) <= DIR_RECORD_LIMIT:
        return record
    # Optional sequences (a presentation state's references) may grow without bound.
    for keyword, _ in leaf_keys:
        if keyword.endswith("Sequence") and keyword != "ConceptNameCodeSequence":
            subset.pop(keyword, None)
    record = subset.to_json_dict()
    return record if len(json.dumps(record)) <= DIR_RECORD_LIMIT else None


def _latest_verification(ds: Dataset, subset: Dataset) -> None:
    """Set the record's Verification DateTime: the latest of the verifying observers'."""
    stamps = [
        str(item.get("VerificationDateTime") or "").strip()
        for item in ds.get("VerifyingObserverSequence") or []
    ]
    if any(stamps):
        subset.VerificationDateTime = max(stamps)


def _title_modifiers(items: Iterable[Dataset]) -> list[Dataset]:
    """Keep the root's HAS CONCEPT MOD items, without their subtrees (PS3.3 F.5.26)."""
    kept = []
    for item in items:
        if str(item.get("RelationshipType", "")).strip() != "HAS CONCEPT MOD":
            continue
        copy = Dataset()
        for elem in item:
            if elem.keyword != "ContentSequence":
                copy.add(elem)
        kept.append(copy)
    return kept


def _has_value(elem: DataElement | None) -> bool:
    if elem is None or elem.value is None:
        return False
    if isinstance(elem.value, str | bytes):
        return bool(elem.value.strip())
    return elem.VM > 0


def _invented(keyword: str, positional: dict[str, Any]) -> Any:
    if keyword in positional:
        return positional[keyword]
    if keyword in _INVENTED:
        return _INVENTED[keyword]
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _INVENTED_CODE
        return [code]
    return _INVENTED_BY_VR.get(vr, "UNKNOWN")


def _record(
    record_type: str, source: Dataset, keys: Keys, positional: dict[str, Any] | None = None
) -> Dataset:
    """Build one directory record from ``source``, inventing missing type 1 values."""
    rec = Dataset()
    rec.OffsetOfTheNextDirectoryRecord = 0
    rec.RecordInUseFlag = 0xFFFF
    rec.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    rec.DirectoryRecordType = record_type
    for keyword, kind in keys:
        elem = source[keyword] if keyword in source else None  # noqa: SIM401 - want the element
        if _has_value(elem):
            rec.add(elem)  # type: ignore[arg-type]
        elif kind == "1" or (
            kind == "1C" and keyword in _REQUIRED_WHEN and _REQUIRED_WHEN[keyword](rec)
        ):
            setattr(rec, keyword, _invented(keyword, positional or {}))
        elif kind == "2" and elem is not None:
            rec.add(elem)
        elif kind == "2":
            vr = dictionary_VR(keyword)
            rec.add_new(keyword, vr, [] if vr == "SQ" else None)
    if not _is_ascii(rec):
        # UTF-8 represents whatever character set the instance used (PS3.3 F.5 keys are 1C).
        rec.SpecificCharacterSet = "ISO_IR 192"
    return rec


def _is_ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if not all(_is_ascii(item) for item in elem.value):
                return False
        elif not str(elem.value).isascii():
            return False
    return True


# --------------------------------------------------------------------------- DICOM media layout


@dataclass(frozen=True)
class _Placement:
    """One instance on the medium; numbers are 1-based: patient, study, series, instance."""

    study: ArchiveStudy
    series: ArchiveSeries
    instance: ArchiveInstance
    numbers: tuple[int, int, int, int]

    @property
    def file_id(self) -> tuple[str, ...]:
        """Components of the file ID: 8 upper-case characters at most, 5 levels (PS3.12)."""
        patient, study, series, instance = self.numbers
        return ("DICOM", _component("P", patient), _component("S", study),
                _component("S", series), _component("I", instance))  # fmt: skip


def _component(prefix: str, number: int) -> str:
    if not 0 < number < 10**7:
        raise ValueError("more entities than DICOM file IDs can number")
    return f"{prefix}{number:07d}"


def _placements(studies: Sequence[ArchiveStudy]) -> list[_Placement]:
    """Number patients, studies, series and instances; empty series and studies are left out."""
    patients: dict[str, int] = {}
    studies_of: dict[int, int] = {}
    placed = []
    for study in studies:
        series_list = [s for s in study.series if s.instances]
        if not series_list:
            continue
        patient = patients.setdefault(study.patient_id or "", len(patients) + 1)
        studies_of[patient] = number = studies_of.get(patient, 0) + 1
        for series_no, series in enumerate(series_list, start=1):
            for instance_no, instance in enumerate(series.instances, start=1):
                numbers = (patient, number, series_no, instance_no)
                placed.append(_Placement(study, series, instance, numbers))
    return placed


@dataclass
class _Node:
    record: Dataset
    children: list[_Node] = field(default_factory=list)
    encoded: bytearray = field(default_factory=bytearray)


def _directory(placements: Sequence[_Placement], headers: dict[str, Any]) -> list[_Node]:
    """Build the PATIENT / STUDY / SERIES / leaf record tree of the medium."""
    roots: list[_Node] = []
    nodes: dict[tuple[int, ...], _Node] = {}
    for placement in placements:
        instance = placement.instance
        header = instance.dir_record
        if header is None:
            header = headers.get(instance.object_key)
        siblings = roots
        for depth in range(1, 4):
            key = placement.numbers[:depth]
            if key not in nodes:
                nodes[key] = _Node(_entity_record(depth, placement, header))
                siblings.append(nodes[key])
            siblings = nodes[key].children
        siblings.append(_Node(_leaf_record(placement, header)))
    return roots


def _entity_record(depth: int, placement: _Placement, header: dict[str, Any] | None) -> Dataset:
    number = placement.numbers[depth - 1]
    if depth == 1:
        return _record("PATIENT", _source(placement, header, PATIENT_KEYS), PATIENT_KEYS)
    if depth == 2:
        source = _source(placement, header, STUDY_KEYS)
        return _record("STUDY", source, STUDY_KEYS, {"StudyID": str(number)})
    source = _source(placement, header, SERIES_KEYS)
    return _record("SERIES", source, SERIES_KEYS, {"SeriesNumber": number})


def _leaf_record(placement: _Placement, header: dict[str, Any] | None) -> Dataset:
    instance = placement.instance
    leaf = leaf_record_type(instance.sop_class_uid)
    positional: dict[str, Any] = {"InstanceNumber": placement.numbers[3]}
    if instance.sop_class_uid == uid.EncapsulatedPDFStorage:
        positional["MIMETypeOfEncapsulatedDocument"] = "application/pdf"
    keys = LEAF_KEYS[leaf]
    record = _record(leaf, _source(placement, header, keys), keys, positional)
    record.ReferencedFileID = list(placement.file_id)
    record.ReferencedSOPClassUIDInFile = instance.sop_class_uid
    record.ReferencedSOPInstanceUIDInFile = instance.sop_uid
    record.ReferencedTransferSyntaxUIDInFile = instance.transfer_syntax_uid
    return record


def _source(placement: _Placement, header: dict[str, Any] | None, keys: Keys) -> Dataset:
    """The instance's values of ``keys``: from its header, else from the index (same origin)."""
    index = _index_values(placement)
    merged = {}
    for keyword, _ in keys:
        tag = f"{tag_for_keyword(keyword):08X}"
        value = header.get(tag) if header else None
        if value is None and keyword in index:
            value = _json_element(keyword, index[keyword])
        if value is not None:
            merged[tag] = value
    try:
        return Dataset.from_json(merged)
    except (KeyError, TypeError, ValueError):
        log.warning("unreadable dir_record of an instance; using the index values")
        return _source(placement, None, keys) if header else Dataset()


def _index_values(placement: _Placement) -> dict[str, Any]:
    study, series = placement.study, placement.series
    values = {
        "PatientID": study.patient_id,
        "PatientName": study.patient_name,
        "StudyInstanceUID": study.study_uid,
        "StudyDate": study.date.strftime("%Y%m%d") if study.date else None,
        "StudyDescription": study.description,
        "AccessionNumber": study.accession_number,
        "SeriesInstanceUID": series.series_uid,
        "Modality": series.modality,
        "SeriesNumber": series.number,
        "InstanceNumber": placement.instance.number,
    }
    return {k: v for k, v in values.items() if v is not None}


def _json_element(keyword: str, value: Any) -> dict[str, Any]:
    vr = dictionary_VR(keyword)
    return {"vr": vr, "Value": [{"Alphabetic": value} if vr == "PN" else value]}


# --------------------------------------------------------------------------- DICOMDIR encoding

_ITEM_TAG = b"\xfe\xff\x00\xe0"
_RECORDS_TAG = b"\x04\x00\x20\x12SQ\x00\x00"  # (0004,1220) explicit VR little endian


def dicomdir_bytes(roots: Sequence[_Node]) -> bytes:
    """Encode the DICOMDIR as Part 10 with every record linked by its byte offset."""
    order = list(_depth_first(roots))
    file_uid = uid.generate_uid()
    # Offsets are fixed-size UL values: encode each record once, then patch them in place.
    at = len(_dicomdir_head(file_uid, 0, 0)) + len(_RECORDS_TAG) + 4
    positions: dict[int, int] = {}
    for node in order:
        node.encoded = _encode(node.record)
        positions[id(node)] = at
        at += 8 + len(node.encoded)
    _link(roots, positions)
    items = b"".join(
        _ITEM_TAG + struct.pack("<I", len(node.encoded)) + node.encoded for node in order
    )
    first = positions[id(roots[0])] if roots else 0
    last = positions[id(roots[-1])] if roots else 0
    data = _dicomdir_head(file_uid, first, last) + _RECORDS_TAG
    data += struct.pack("<I", len(items)) + items
    if len(data) != at:
        raise RuntimeError("DICOMDIR length changed while linking its records")
    return data


def _depth_first(nodes: Sequence[_Node]) -> Iterator[_Node]:
    for node in nodes:
        yield node
        yield from _depth_first(node.children)


# Every record starts with (0004,1400) UL, (0004,1410) US, (0004,1420) UL: tag order.
_NEXT_AT, _LOWER_AT = 8, 30
_RECORD_START = b"\x04\x00\x00\x14UL\x04\x00"
_LOWER_HEADER = b"\x04\x00\x20\x14UL\x04\x00"


def _link(nodes: Sequence[_Node], positions: dict[int, int]) -> None:
    for index, node in enumerate(nodes):
        data = node.encoded
        if data[:8] != _RECORD_START or data[_LOWER_AT - 8 : _LOWER_AT] != _LOWER_HEADER:
            raise RuntimeError("unexpected layout of an encoded directory record")
        following = nodes[index + 1] if index + 1 < len(nodes) else None
        struct.pack_into("<I", data, _NEXT_AT, positions[id(following)] if following else 0)
        lower = positions[id(node.children[0])] if node.children else 0
        struct.pack_into("<I", data, _LOWER_AT, lower)
        _link(node.children, positions)


def _encode(record: Dataset) -> bytearray:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, record)
    return bytearray(fp.getvalue())


def _dicomdir_head(file_uid: str, first: int, last: int) -> bytes:
    """The Part 10 file up to (not including) the Directory Record Sequence, its last element."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.MediaStorageDirectoryStorage
    ds.file_meta.MediaStorageSOPInstanceUID = file_uid
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.FileSetID = FILE_SET_ID
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = first
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = last
    ds.FileSetConsistencyFlag = 0
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --------------------------------------------------------------------------- headers of old rows


def _legacy_headers(
    store: ObjectStore, instances: Sequence[ArchiveInstance]
) -> dict[str, dict[str, Any] | None]:
    """Read the record attributes of instances indexed before ``dir_record`` existed."""
    if not instances:
        return {}
    with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="zip-header") as pool:
        found = list(pool.map(lambda instance: _read_header(store, instance), instances))
    return {i.object_key: h for i, h in zip(instances, found, strict=True)}


def _read_header(store: ObjectStore, instance: ArchiveInstance) -> dict[str, Any] | None:
    """Parse the header from the object's first bytes, reading further only when needed."""
    buffer = bytearray()
    want = HEADER_FIRST_READ
    stream: Iterator[bytes] | None = None
    try:
        stream = store.open_stream(instance.object_key, HEADER_FIRST_READ)
        for chunk in stream:
            buffer += chunk
            whole = len(buffer) >= instance.bytes
            if len(buffer) < want and not whole:
                continue
            ds = _parse_header(bytes(buffer), whole)
            if ds is not None:
                return dir_record_from_dataset(ds)
            if whole or len(buffer) >= HEADER_READ_LIMIT:
                return None
            want *= 2
    except KeyError:
        log.warning("an indexed instance is missing from the store")
        return None
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    ds = _parse_header(bytes(buffer), True)
    return dir_record_from_dataset(ds) if ds is not None else None


def _parse_header(data: bytes, whole: bool) -> Dataset | None:
    """Parse up to the pixel data; None when ``data`` stops before that (or cannot be read)."""
    fp = io.BytesIO(data)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except Exception:  # a cut-off stream makes pydicom raise many kinds; read more and retry
        return None
    # Having consumed every byte without meeting the pixel data, the header may go on.
    return ds if whole or fp.tell() < len(data) else None


# --------------------------------------------------------------------------- the DICOM ZIP


def dicom_zip(store: ObjectStore, studies: Sequence[ArchiveStudy]) -> ZipStream:
    """Lay the studies out as DICOM media (PS3.12 Annex V, IHE PDI) in a sized, stored ZIP."""
    placements = _placements(studies)
    legacy = [p.instance for p in placements if p.instance.dir_record is None]
    headers = _legacy_headers(store, legacy)
    zs = ZipStream(compress_type=ZIP_STORED, sized=True)
    zs.add(dicomdir_bytes(_directory(placements, headers)), "DICOMDIR")
    zs.add(README.replace("\n", "\r\n").encode("ascii"), "README.TXT")
    zs.add(index_html(studies).encode("utf-8"), "INDEX.HTM")
    for placement in placements:
        instance = placement.instance
        zs.add(
            _object(store, instance.object_key), "/".join(placement.file_id), size=instance.bytes
        )
    return zs


def _object(store: ObjectStore, key: str) -> Iterator[bytes]:
    """Stream one stored object, opened only when the ZIP reaches it."""
    yield from store.open_stream(key, READ_CHUNK)


README = """\
MEDISCHE BEELDEN - VERTROUWELIJK  (English below)
=================================

Deze map bevat medische beelden en verslagen van uw onderzoek, precies zoals het
ziekenhuis ze heeft gemaakt, in het DICOM-formaat. Ze zijn met u gedeeld via Zorgbericht.

Openen
- Pak het ZIP-bestand eerst helemaal uit.
- Open de beelden met een DICOM-viewer, bijvoorbeeld Weasis (gratis, Windows, macOS en
  Linux), MicroDicom (Windows) of Horos (macOS). Kies in de viewer "DICOMDIR openen" of
  "Importeren" en kies het bestand DICOMDIR in deze map.
- De bestanden in de map DICOM hebben geen extensie; dat hoort zo volgens de DICOM-standaard.
- INDEX.HTM geeft in uw webbrowser een overzicht van de onderzoeken en series.

Vertrouwelijk
Deze gegevens gaan over uw gezondheid. Bewaar ze veilig, deel ze alleen met mensen die u
vertrouwt (zoals uw arts) en verwijder ze als u ze niet meer nodig heeft.

Dit is een kopie. Het ziekenhuis bewaart het origineel; de uitleg van de beelden staat in
het verslag of krijgt u van uw arts.


MEDICAL IMAGES - CONFIDENTIAL
=============================

This folder holds the medical images and reports of your examination, exactly as the
hospital made them, in the DICOM format. They were shared with you through Zorgbericht.

How to open
- Extract the whole ZIP file first.
- Open the images in a DICOM viewer, for example Weasis (free; Windows, macOS and Linux),
  MicroDicom (Windows) or Horos (macOS). In the viewer choose "Open DICOMDIR" or "Import"
  and pick the file DICOMDIR in this folder.
- The files in the DICOM folder have no extension; the DICOM standard wants it that way.
- INDEX.HTM shows an overview of the studies and series in your web browser.

Confidential
This is information about your health. Keep it safe, share it only with people you trust
(such as your doctor) and delete it when you no longer need it.

This is a copy. The hospital keeps the original; the report, or your doctor, explains
what the images show.
"""


def index_html(studies: Sequence[ArchiveStudy]) -> str:
    """Render a plain HTML overview of the studies and series on the medium (no scripts)."""
    parts = [
        '<!DOCTYPE html>\n<html lang="nl">\n<head>\n<meta charset="utf-8">\n'
        "<title>Medische beelden / Medical images</title>\n</head>\n<body>\n"
        "<h1>Medische beelden / Medical images</h1>\n"
        "<p>Vertrouwelijk. Open het bestand DICOMDIR met een DICOM-viewer; zie README.TXT.<br>\n"
        "Confidential. Open the file DICOMDIR in a DICOM viewer; see README.TXT.</p>\n"
    ]
    for index, study in enumerate(studies, start=1):
        series_list = [s for s in study.series if s.instances]
        if series_list:
            parts.append(_study_html(study, index, series_list))
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _study_html(study: ArchiveStudy, index: int, series_list: Sequence[ArchiveSeries]) -> str:
    title = " ".join(
        p for p in (study.date.isoformat() if study.date else "", study.description or "") if p
    )
    count = sum(len(s.instances) for s in series_list)
    lines = [
        f"<h2>{html.escape(title or f'Onderzoek / Study {index}')}</h2>",
        f"<p>{html.escape(', '.join(study.modalities))} &middot; {len(series_list)} series "
        f"&middot; {count} bestanden / files</p>",
        "<ul>",
    ]
    for position, series in enumerate(series_list, start=1):
        number = series.number if series.number is not None else position
        modality = f"({series.modality})" if series.modality else ""
        label = " ".join(p for p in (series.description or "", modality) if p)
        lines.append(
            f"<li>Serie / Series {number}{': ' if label else ''}{html.escape(label)} &ndash; "
            f"{len(series.instances)} bestanden / files</li>"
        )
    lines.append("</ul>\n")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the JPEG ZIP

# Characters Windows or macOS refuse (or treat as separators) in a file name.
_SEPARATORS = str.maketrans({"/": "-", "\\": "-", ":": "-"})
_UNSAFE = re.compile(r'[\x00-\x1f\x7f*?"<>|]')
_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{n}" for d in ("COM", "LPT") for n in range(10)}
NAME_LIMIT = 80


def safe_name(text: str, fallback: str) -> str:
    """Make ``text`` usable as one file or folder name on Windows and macOS."""
    name = unicodedata.normalize("NFC", text).translate(_SEPARATORS)
    name = " ".join(_UNSAFE.sub(" ", name).split())[:NAME_LIMIT].strip(" .")
    if not name:
        return fallback
    if name.split(".")[0].strip().upper() in _RESERVED:
        name = "_" + name
    return name


class _Names:
    """Hand out names unique in one folder, compared as case-insensitive file systems do."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def add(self, stem: str, suffix: str = "") -> str:
        name, copy = stem + suffix, 2
        while name.casefold() in self._taken:
            name, copy = f"{stem} ({copy}){suffix}", copy + 1
        self._taken.add(name.casefold())
        return name


def jpeg_zip(store: ObjectStore, studies: Sequence[ArchiveStudy]) -> ZipStream:
    """Put the preview JPEGs and the studies' reports in a sized ZIP with readable names."""
    entries: list[tuple[str, str]] = []
    reports: list[tuple[str, ArchiveInstance]] = []
    folders = _Names()
    for index, study in enumerate(studies, start=1):
        folder = folders.add(_study_folder(study, index))
        _study_entries(study, folder, entries, reports)
    sizes = _sizes(store, [key for _, key in entries])
    zs = ZipStream(compress_type=ZIP_STORED, sized=True)
    for (name, key), size in zip(entries, sizes, strict=True):
        if size is not None:
            zs.add(_object(store, key), name, size=size)
    if None in sizes:
        log.warning("%d preview objects are missing from the store", sizes.count(None))
    for name, instance in reports:
        data = _report_file(store, instance)
        if data is not None:
            zs.add(data, name)
    return zs


def _study_folder(study: ArchiveStudy, index: int) -> str:
    label = study.description or " ".join(study.modalities)
    text = " ".join(p for p in (study.date.isoformat() if study.date else "", label) if p)
    return safe_name(text, f"Onderzoek {index}")


def _study_entries(
    study: ArchiveStudy,
    folder: str,
    entries: list[tuple[str, str]],
    reports: list[tuple[str, ArchiveInstance]],
) -> None:
    """Name the study's preview JPEGs (added to ``entries``) and its reports."""
    names = _Names()
    for position, series in enumerate(study.series, start=1):
        for instance in series.instances:
            kind = is_report(instance.sop_class_uid)
            if kind is not None:
                suffix = ".pdf" if kind == "pdf" else ".txt"
                reports.append((f"{folder}/{names.add('report', suffix)}", instance))
        images = [i for i in series.instances if i.preview_done]
        if not images:
            continue
        number = series.number if series.number is not None else position
        label = safe_name(f"Series {number:03d} {series.description or ''}", "Series")
        sub = f"{folder}/{names.add(label)}"
        files = _Names()
        for image_no, instance in enumerate(images, start=1):
            stem = f"{instance.number if (instance.number or 0) > 0 else image_no:04d}"
            for frame in range(instance.frames):
                suffix = f"-{frame + 1:03d}.jpg" if instance.frames > 1 else ".jpg"
                key = preview_key(instance.object_key, "preview", frame)
                entries.append((f"{sub}/{files.add(stem, suffix)}", key))


def _sizes(store: ObjectStore, keys: Sequence[str]) -> list[int | None]:
    """Ask the store for each object's size in parallel; None for a missing object."""

    def size(key: str) -> int | None:
        try:
            return store.size(key)
        except KeyError:
            return None

    if not keys:
        return []
    with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="zip-size") as pool:
        return list(pool.map(size, keys))


def _report_file(store: ObjectStore, instance: ArchiveInstance) -> bytes | None:
    """The PDF, or the SR rendered as text; None when the report cannot be read."""
    if instance.bytes > REPORT_READ_LIMIT:
        return None
    try:
        ds = pydicom.dcmread(io.BytesIO(store.get_bytes(instance.object_key)))
        if is_report(instance.sop_class_uid) == "pdf":
            return encapsulated_pdf(ds)
        # CRLF and a BOM: Notepad on older Windows shows UTF-8 text correctly only so.
        return sr_text(ds).replace("\n", "\r\n").encode("utf-8-sig")
    except (KeyError, ValueError, TypeError, AttributeError, EOFError, OSError):
        log.warning("a report instance could not be read; left out of the JPEG download")
        return None


# --------------------------------------------------------------------------- streaming


async def stream_zip(
    zs: Iterable[bytes], *, batch_bytes: int = 1024 * 1024, queue_depth: int = 8
) -> AsyncIterator[bytes]:
    """Stream ``zs`` from one producer thread to the event loop in batches of ~1 MiB."""
    # One thread for the whole ZIP, not a hop per chunk; at most ``queue_depth`` batches wait
    # in memory. When the consumer stops early (client gone, ``aclose``), ``stop`` ends the
    # producer at its next chunk, and it closes the ZIP stream and the object it was reading.
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    slots = threading.Semaphore(queue_depth)
    stop = threading.Event()

    def hand_over(item: bytes | BaseException | None) -> bool:
        slots.acquire()
        if stop.is_set():
            return False
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            return False
        return True

    producer = threading.Thread(
        target=_produce, args=(zs, batch_bytes, hand_over, stop), name="zip-stream", daemon=True
    )
    producer.start()
    try:
        while (item := await queue.get()) is not None:
            slots.release()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        slots.release()  # wakes a producer waiting for room, which then sees ``stop``


def _produce(
    zs: Iterable[bytes],
    batch_bytes: int,
    hand_over: Callable[[bytes | BaseException | None], bool],
    stop: threading.Event,
) -> None:
    """Iterate the ZIP, joining chunks into batches; runs in the producer thread."""
    chunks = iter(zs)
    try:
        batch: list[bytes] = []
        size = 0
        for chunk in chunks:
            if stop.is_set():
                return
            batch.append(chunk)
            size += len(chunk)
            if size >= batch_bytes:
                if not hand_over(b"".join(batch)):
                    return
                batch, size = [], 0
        if batch and not hand_over(b"".join(batch)):
            return
        hand_over(None)
    except Exception as exc:  # handed to the consumer, which raises it in the request
        # zipstream's messages name the member (a study date and description): the error
        # that reaches the server log carries only the kind of failure.
        log.warning("archive stream failed: %s", type(exc).__name__)
        hand_over(RuntimeError(f"archive stream failed ({type(exc).__name__})"))
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
