"""Read what the index needs from an instance header, without touching pixel data."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from zorgbericht.bsn import is_valid_bsn
from zorgbericht.recipients.archive import dir_record_from_dataset
from zorgbericht.staging.schemas import InstanceMeta

__all__ = [
    "StudyRef",
    "UndecodableInstance",
    "is_valid_bsn",
    "meta_from_dataset",
    "read_meta",
    "study_ref",
]

BSN_ISSUER = "NLMINBIZA"
NON_IMAGE_CLASSES = {
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
}


class UndecodableInstance(ValueError):
    """The data set cannot be parsed or lacks the identifiers every instance must carry."""


def _bsn(ds: Dataset) -> str | None:
    candidates = []
    if ds.get("IssuerOfPatientID") == BSN_ISSUER:
        candidates.append(ds.get("PatientID"))
    candidates += [
        item.get("PatientID")
        for item in ds.get("OtherPatientIDsSequence", [])
        if item.get("IssuerOfPatientID") == BSN_ISSUER
    ]
    for candidate in candidates:
        number = str(candidate or "").strip()
        if is_valid_bsn(number):
            return number.zfill(9)
    return None


def _date(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    return str(value).strip()[:limit] or None


def meta_from_dataset(ds: Dataset, transfer_syntax_uid: str) -> InstanceMeta:
    """Extract index fields; raise ``UndecodableInstance`` when the UIDs are missing."""
    try:
        uids = (
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
            str(ds.SOPClassUID),
        )
    except AttributeError as exc:
        raise UndecodableInstance(f"missing identifier: {exc}") from None
    if not all(uids) or any(len(u) > 64 for u in uids):
        raise UndecodableInstance("an identifier is empty or longer than 64 characters")
    return InstanceMeta(
        study_uid=uids[0],
        series_uid=uids[1],
        sop_uid=uids[2],
        sop_class_uid=uids[3],
        transfer_syntax_uid=transfer_syntax_uid,
        patient_id=_text(ds, "PatientID", 64),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        birth_date=_date(ds.get("PatientBirthDate")),
        bsn=_bsn(ds),
        study_description=_text(ds, "StudyDescription", 64),
        study_date=_date(ds.get("StudyDate")),
        accession_number=_text(ds, "AccessionNumber", 16),
        modality=_text(ds, "Modality", 16),
        series_description=_text(ds, "SeriesDescription", 64),
        series_number=_int(ds.get("SeriesNumber")),
        instance_number=_int(ds.get("InstanceNumber")),
        frames=max(1, _int(ds.get("NumberOfFrames")) or 1),
        has_pixels="Rows" in ds and "Columns" in ds,
        dir_record=dir_record_from_dataset(ds),
    )


def read_meta(data: bytes) -> InstanceMeta:
    """Parse a Part 10 byte stream's header (stops before the pixel data)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
        return meta_from_dataset(ds, ts)
    except UndecodableInstance:
        raise
    except Exception as exc:  # whatever a malformed stream makes pydicom raise
        raise UndecodableInstance(f"cannot parse data set: {type(exc).__name__}") from None


@dataclass(frozen=True)
class StudyRef:
    """The study and patient of a refused instance, as far as its header could be read."""

    study_uid: str = ""  # "" when unreadable
    patient_id: str | None = None
    bsn: str | None = None

    @classmethod
    def of(cls, meta: InstanceMeta) -> StudyRef:
        return cls(meta.study_uid, meta.patient_id, meta.bsn)


def study_ref(data: bytes) -> StudyRef:
    """Read what a refused instance says about its study; empty when the header is unreadable."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        study_uid = str(ds.get("StudyInstanceUID") or "").strip()
        if not UID(study_uid).is_valid:
            return StudyRef()
        return StudyRef(study_uid, _text(ds, "PatientID", 64), _bsn(ds))
    except Exception:  # whatever a malformed stream makes pydicom raise
        return StudyRef()


def read_meta_file(path: str) -> InstanceMeta:
    with open(path, "rb") as fh:
        head = fh.read()
    return read_meta(head)
