"""The recipient's download archives (zorgbericht.recipients.archive)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import shutil
import subprocess
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from fpdf import FPDF
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import (
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from sqlalchemy import event

from dicom_ingest.meta import read_meta
from dicom_ingest.previews import render_file
from dicom_ingest.synthetic import write_study
from zorgbericht.db import make_engine, make_sessionmaker
from zorgbericht.models import Base, Tenant
from zorgbericht.recipients import archive
from zorgbericht.recipients.archive import (
    ArchiveInstance,
    ArchiveSeries,
    ArchiveStudy,
    archive_studies,
    dicom_zip,
    jpeg_zip,
    safe_name,
    stream_zip,
)
from zorgbericht.recipients.reports import sr_text
from zorgbericht.staging import service as staging
from zorgbericht.staging.models import Study
from zorgbericht.staging.schemas import InstanceMeta, StoredInstance
from zorgbericht.storage.local import LocalStore

ROOT_FILES = {"DICOMDIR", "README.TXT", "INDEX.HTM"}
FILE_ID_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")
PATIENT = {"PatientName": "TEST^ARCHIVE", "PatientID": "ARC0001", "PatientBirthDate": "19800229"}


# --------------------------------------------------------------------------- staging helpers


@dataclass
class Staged:
    """An instance put in the store as the ingest would, with its original bytes."""

    meta: InstanceMeta
    instance: ArchiveInstance
    data: bytes


def _stage(store: LocalStore, path: Path, *, previews: bool = False) -> Staged:
    data = path.read_bytes()
    meta = read_meta(data)
    key = staging.instance_key(1, meta.study_uid, meta.sop_uid)
    store.put_bytes(key, data)
    done = False
    if previews:
        rendered = render_file(str(path))
        assert rendered.error is None and rendered.images
        for kind, frame, jpeg in rendered.images:
            store.put_bytes(staging.preview_key(key, kind, frame), jpeg)
        done = True
    instance = ArchiveInstance(
        sop_uid=meta.sop_uid,
        sop_class_uid=meta.sop_class_uid,
        transfer_syntax_uid=meta.transfer_syntax_uid,
        object_key=key,
        bytes=len(data),
        number=meta.instance_number,
        frames=meta.frames,
        preview_done=done,
        dir_record=meta.dir_record,
    )
    return Staged(meta, instance, data)


def _studies(staged: list[Staged]) -> list[ArchiveStudy]:
    """Group staged instances as the index does: study, series (by number), instance."""
    by_study: dict[str, dict[str, list[Staged]]] = {}
    for item in staged:
        by_study.setdefault(item.meta.study_uid, {}).setdefault(item.meta.series_uid, []).append(
            item
        )
    studies = []
    for study_uid, series in by_study.items():
        first = next(iter(series.values()))[0].meta
        series_out = []
        for series_uid, items in series.items():
            m = items[0].meta
            instances = tuple(i.instance for i in items)
            series_out.append(
                ArchiveSeries(
                    series_uid, m.series_number, m.series_description, m.modality, instances
                )
            )
        studies.append(
            ArchiveStudy(
                study_uid=study_uid,
                description=first.study_description,
                date=first.study_date,
                modalities=tuple(sorted({s.modality for s in series_out if s.modality})),
                patient_id=first.patient_id,
                patient_name=first.patient_name,
                accession_number=first.accession_number,
                series=tuple(series_out),
            )
        )
    return studies


def _into_study(ds: Dataset, study_uid: str, series_no: int, modality: str) -> Dataset:
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.SOPInstanceUID = generate_uid()
    # The same study attributes as dicom_ingest.synthetic writes.
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = (
        "20260101",
        "120000",
        "1",
        "DEMO0001",
    )
    ds.StudyDescription = "CT THORAX (DEMO)"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_no, 1
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _sr(study_uid: str, series_no: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    _into_study(ds, study_uid, series_no, "SR")
    ds.ContentDate, ds.ContentTime = "20260102", "083000"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    observer = Dataset()
    observer.VerificationDateTime = "20260102090000"
    observer.VerifyingObserverName = "ARTS^A"
    observer.VerifyingObserverIdentificationCodeSequence = []
    observer.VerifyingOrganization = "ZIEKENHUIS"
    ds.VerifyingObserverSequence = [observer]
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "TEXT"
    finding.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    finding.TextValue = "Geen afwijkingen."
    ds.ContentSequence = [finding]
    return ds


def _pdf_bytes() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Verslag CT thorax")
    data = bytes(pdf.output())
    return data if len(data) % 2 else data + b"\n"  # odd, so the DICOM value is padded


def _encapsulated_pdf(study_uid: str, series_no: int, pdf: bytes) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = EncapsulatedPDFStorage
    _into_study(ds, study_uid, series_no, "DOC")
    ds.ContentDate, ds.ContentTime = "20260102", "083000"
    ds.DocumentTitle, ds.BurnedInAnnotation = "Verslag", "YES"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Case:
    store: LocalStore
    staged: list[Staged]
    studies: list[ArchiveStudy]
    pdf: bytes


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", fsync=False)


@pytest.fixture
def case(tmp_path: Path, store: LocalStore) -> Case:
    """A CT study (2 series, previews), a multi-frame image, an SR and a PDF in one study."""
    study_uid = write_study(tmp_path / "ct", series=2, slices=3, size=64, patient=PATIENT)
    paths = sorted((tmp_path / "ct").glob("*.dcm"))
    staged = [_stage(store, p, previews=True) for p in paths]
    frames = _into_study(
        pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm")), study_uid, 3, "OT"
    )
    frames.file_meta.MediaStorageSOPInstanceUID = frames.SOPInstanceUID
    frames.save_as(tmp_path / "frames.dcm", enforce_file_format=True)
    staged.append(_stage(store, tmp_path / "frames.dcm", previews=True))
    for ds in (_sr(study_uid, 4), _encapsulated_pdf(study_uid, 5, pdf := _pdf_bytes())):
        staged.append(_stage(store, _save(ds, tmp_path / f"{ds.Modality}.dcm")))
    return Case(store, staged, _studies(staged), pdf)


def _collect(zs: archive.ZipStream) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in stream_zip(zs)])

    return asyncio.run(run())


def _unzip(data: bytes, folder: Path) -> zipfile.ZipFile:
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.testzip() is None
    zf.extractall(folder)
    return zf


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _records(dicomdir: Path) -> list[Dataset]:
    return list(pydicom.dcmread(dicomdir).DirectoryRecordSequence)


# --------------------------------------------------------------------------- DICOM ZIP


def test_dicom_zip_streams_exactly_its_announced_length(case: Case) -> None:
    zs = dicom_zip(case.store, case.studies)
    announced = len(zs)
    data = _collect(zs)
    assert len(data) == announced
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None


def test_dicomdir_references_every_instance_byte_for_byte(case: Case, tmp_path: Path) -> None:
    zf = _unzip(_collect(dicom_zip(case.store, case.studies)), tmp_path / "out")
    fs = FileSet(tmp_path / "out" / "DICOMDIR")
    originals = {s.meta.sop_uid: _sha(s.data) for s in case.staged}
    found = {}
    for instance in fs:
        path = Path(instance.path)
        assert path.is_file()
        found[instance.SOPInstanceUID] = _sha(path.read_bytes())
        assert path.relative_to(tmp_path / "out").as_posix() in zf.namelist()
    assert found == originals
    members = set(zf.namelist()) - ROOT_FILES
    assert len(members) == len(originals)  # nothing on the medium that the DICOMDIR misses


def test_every_member_is_stored_not_deflated(case: Case) -> None:
    for zs in (dicom_zip(case.store, case.studies), jpeg_zip(case.store, case.studies)):
        infos = zipfile.ZipFile(io.BytesIO(_collect(zs))).infolist()
        assert infos and {i.compress_type for i in infos} == {zipfile.ZIP_STORED}


def test_file_ids_are_short_upper_case_components_at_most_eight_levels(case: Case) -> None:
    data = _collect(dicom_zip(case.store, case.studies))
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names[0] == "DICOMDIR" and set(names) >= ROOT_FILES
    for name in set(names) - {"README.TXT", "INDEX.HTM"}:
        parts = name.split("/")
        assert len(parts) <= 8, name
        assert all(FILE_ID_COMPONENT.match(p) for p in parts), name


def test_dicomdir_record_file_ids_match_the_zip_members(case: Case, tmp_path: Path) -> None:
    zf = _unzip(_collect(dicom_zip(case.store, case.studies)), tmp_path / "out")
    leaves = [r for r in _records(tmp_path / "out" / "DICOMDIR") if "ReferencedFileID" in r]
    assert sorted("/".join(r.ReferencedFileID) for r in leaves) == sorted(
        set(zf.namelist()) - ROOT_FILES
    )
    types = {r.ReferencedSOPClassUIDInFile: r.DirectoryRecordType for r in leaves}
    assert types[ComprehensiveSRStorage] == "SR DOCUMENT"
    assert types[EncapsulatedPDFStorage] == "ENCAP DOC"
    assert types[SecondaryCaptureImageStorage] == "IMAGE"


def test_sr_record_carries_the_latest_verification_time(case: Case, tmp_path: Path) -> None:
    _unzip(_collect(dicom_zip(case.store, case.studies)), tmp_path / "out")
    (sr,) = [
        r for r in _records(tmp_path / "out" / "DICOMDIR") if r.DirectoryRecordType == "SR DOCUMENT"
    ]
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.VerificationDateTime == "20260102090000"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4"


def _dcmtk_and_dicom3tools_verdicts(folder: Path) -> None:
    dump = subprocess.run(["dcmdump", str(folder / "DICOMDIR")], capture_output=True, text=True)
    assert dump.returncode == 0 and dump.stderr == ""
    files = [str(p) for p in folder.rglob("*") if p.is_file() and p.parent != folder]
    files.append(str(folder / "DICOMDIR"))
    test = subprocess.run(["dcmftest", *files], capture_output=True, text=True)
    assert test.returncode == 0, test.stdout
    assert test.stdout.count("yes: ") == len(files)
    verify = subprocess.run(["dciodvfy", str(folder / "DICOMDIR")], capture_output=True, text=True)
    complaints = [
        line
        for line in (verify.stdout + verify.stderr).splitlines()
        if line.startswith(("Error", "Warning"))
    ]
    assert complaints == []


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dcmdump", "dcmftest", "dciodvfy")),
    reason="needs dcmtk and dicom3tools",
)
def test_dicomdir_passes_dcmtk_and_dicom3tools(case: Case, tmp_path: Path) -> None:
    _unzip(_collect(dicom_zip(case.store, case.studies)), tmp_path / "out")
    _dcmtk_and_dicom3tools_verdicts(tmp_path / "out")


def _bare_ct(tmp_path: Path, store: LocalStore) -> Staged:
    """A CT image that leaves out or empties every type 1 key a DICOMDIR record needs."""
    write_study(tmp_path / "bare", series=1, slices=1, size=32)
    path = next((tmp_path / "bare").glob("*.dcm"))
    ds = pydicom.dcmread(path)
    for keyword in ("StudyID", "StudyTime", "SeriesNumber", "InstanceNumber", "StudyDate"):
        delattr(ds, keyword)
    ds.PatientID, ds.Modality = "", ""
    ds.save_as(path, enforce_file_format=True)
    return _stage(store, path)


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="needs dicom3tools")
def test_missing_type_1_keys_are_invented_so_the_dicomdir_stays_valid(
    tmp_path: Path, store: LocalStore
) -> None:
    staged = _bare_ct(tmp_path, store)
    _unzip(_collect(dicom_zip(store, _studies([staged]))), tmp_path / "out")
    records = {r.DirectoryRecordType: r for r in _records(tmp_path / "out" / "DICOMDIR")}
    assert records["PATIENT"].PatientID == "UNKNOWN"
    assert (records["STUDY"].StudyDate, records["STUDY"].StudyTime) == ("19000101", "000000")
    assert records["STUDY"].StudyID == "1"
    assert (records["SERIES"].Modality, records["SERIES"].SeriesNumber) == ("OT", 1)
    assert records["IMAGE"].InstanceNumber == 1
    _dcmtk_and_dicom3tools_verdicts(tmp_path / "out")


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="needs dicom3tools")
def test_latin_1_names_reach_the_dicomdir_as_utf8(tmp_path: Path, store: LocalStore) -> None:
    patient = {"PatientName": "Müller^Jörg", "PatientID": "ÉÉN01", "PatientBirthDate": "19800229"}
    write_study(tmp_path / "latin", series=1, slices=1, size=32, patient=patient)
    path = next((tmp_path / "latin").glob("*.dcm"))
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet, ds.StudyDescription = "ISO_IR 100", "Echo bovenbuik é"
    ds.save_as(path, enforce_file_format=True)
    assert "Müller".encode("latin-1") in path.read_bytes()
    _unzip(_collect(dicom_zip(store, _studies([_stage(store, path)]))), tmp_path / "out")
    records = {r.DirectoryRecordType: r for r in _records(tmp_path / "out" / "DICOMDIR")}
    assert str(records["PATIENT"].PatientName) == "Müller^Jörg"
    assert records["PATIENT"].SpecificCharacterSet == "ISO_IR 192"
    assert records["STUDY"].StudyDescription == "Echo bovenbuik é"
    assert "SpecificCharacterSet" not in records["SERIES"]  # plain ASCII stays default
    _dcmtk_and_dicom3tools_verdicts(tmp_path / "out")


def test_studies_of_one_patient_share_one_patient_record(
    case: Case, tmp_path: Path, store: LocalStore
) -> None:
    write_study(tmp_path / "second", series=1, slices=2, size=32, patient=PATIENT)
    second = [_stage(store, p) for p in sorted((tmp_path / "second").glob("*.dcm"))]
    studies = case.studies + _studies(second)
    _unzip(_collect(dicom_zip(case.store, studies)), tmp_path / "out")
    records = _records(tmp_path / "out" / "DICOMDIR")
    kinds = [r.DirectoryRecordType for r in records]
    assert kinds.count("PATIENT") == 1 and kinds.count("STUDY") == 2
    fs = FileSet(tmp_path / "out" / "DICOMDIR")
    assert len(fs.find_values("StudyInstanceUID")) == 2
    assert len(fs) == len(case.staged) + len(second)


def test_instances_indexed_without_dir_record_are_read_from_the_store(
    case: Case, tmp_path: Path
) -> None:
    legacy = [
        replace(
            study,
            series=tuple(
                replace(s, instances=tuple(replace(i, dir_record=None) for i in s.instances))
                for s in study.series
            ),
        )
        for study in case.studies
    ]
    _unzip(_collect(dicom_zip(case.store, case.studies)), tmp_path / "new")
    _unzip(_collect(dicom_zip(case.store, legacy)), tmp_path / "old")
    old = [r.to_json_dict() for r in _records(tmp_path / "old" / "DICOMDIR")]
    assert old == [r.to_json_dict() for r in _records(tmp_path / "new" / "DICOMDIR")]
    assert {r["00041430"]["Value"][0] for r in old} >= {"IMAGE", "SR DOCUMENT", "ENCAP DOC"}


def test_readme_is_bilingual_plain_text_and_index_lists_studies_without_scripts(
    case: Case,
) -> None:
    zf = zipfile.ZipFile(io.BytesIO(_collect(dicom_zip(case.store, case.studies))))
    readme = zf.read("README.TXT")
    assert readme.isascii() and b"\r\n" in readme
    for phrase in (
        b"VERTROUWELIJK",
        b"CONFIDENTIAL",
        b"DICOM-viewer",
        b"DICOM viewer",
        b"DICOMDIR",
    ):
        assert phrase in readme
    page = zf.read("INDEX.HTM").decode("utf-8")
    assert "<script" not in page.lower() and "javascript:" not in page.lower()
    assert "2026-01-01 CT THORAX" in page
    assert "5 series" in page and f"{len(case.staged)} bestanden / files" in page


def test_index_escapes_descriptions(case: Case) -> None:
    study = replace(case.studies[0], description='<img src=x onerror="alert(1)">')
    page = archive.index_html([study])
    assert "<img" not in page and "&lt;img" in page


def test_archive_over_4_gib_uses_zip64_with_an_exact_length() -> None:
    huge = 4 * 1024**3 + 1024

    class Zeros:
        def open_stream(self, key: str, chunk_size: int = 1) -> Iterator[bytes]:
            block = bytes(4 * 1024 * 1024)
            for start in range(0, huge, len(block)):
                yield block[: min(len(block), huge - start)]

    instance = ArchiveInstance(
        generate_uid(), SecondaryCaptureImageStorage, ExplicitVRLittleEndian, "k", huge, 1, 1,
        False, {},
    )  # fmt: skip
    study = ArchiveStudy(
        generate_uid(), "BIG", None, ("OT",), "P", "N", None,
        (ArchiveSeries(generate_uid(), 1, None, "OT", (instance,)),),
    )  # fmt: skip
    zs = dicom_zip(Zeros(), [study])  # type: ignore[arg-type]
    total, tail = 0, b""
    for chunk in zs:
        total += len(chunk)
        tail = (tail + chunk)[-200:] if len(chunk) < 200 else chunk[-200:]
    assert total == len(zs)
    assert b"PK\x06\x06" in tail and b"PK\x06\x07" in tail  # ZIP64 end record and locator


# --------------------------------------------------------------------------- rows to archive


def test_archive_studies_loads_indexed_rows_in_three_queries(case: Case, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'zb.sqlite3'}")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        session.add(Tenant(id=1, slug="t", name="T", launch_secret="x" * 32))
        session.flush()
        items = [
            StoredInstance(s.meta, s.instance.object_key, len(s.data), "0" * 64)
            for s in case.staged
        ]
        staging.index_instances(session=session, tenant_id=1, items=items, now=datetime.now(UTC))
        study_id = session.query(Study.id).scalar()
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        (loaded,) = archive_studies(session, [study_id])
        assert len(statements) == 3
        assert archive_studies(session, []) == []
    (expected,) = case.studies
    assert [s.series_uid for s in loaded.series] == [s.series_uid for s in expected.series]
    got = {i.sop_uid: i for s in loaded.series for i in s.instances}
    for s in case.staged:
        row = got[s.meta.sop_uid]
        assert row.dir_record == s.meta.dir_record and row.dir_record  # written at ingest
        assert (row.object_key, row.bytes, row.frames) == (
            s.instance.object_key,
            len(s.data),
            s.meta.frames,
        )
    engine.dispose()


# --------------------------------------------------------------------------- JPEG ZIP


def test_jpeg_zip_names_previews_by_study_series_and_instance(case: Case) -> None:
    zs = jpeg_zip(case.store, case.studies)
    data = _collect(zs)
    assert len(data) == len(zs)
    zf = zipfile.ZipFile(io.BytesIO(data))
    pictures = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
    assert pictures == [
        "2026-01-01 CT THORAX (DEMO)/Series 001 AXIAL 1/0001.jpg",
        "2026-01-01 CT THORAX (DEMO)/Series 001 AXIAL 1/0002.jpg",
        "2026-01-01 CT THORAX (DEMO)/Series 001 AXIAL 1/0003.jpg",
        "2026-01-01 CT THORAX (DEMO)/Series 002 AXIAL 2/0001.jpg",
        "2026-01-01 CT THORAX (DEMO)/Series 002 AXIAL 2/0002.jpg",
        "2026-01-01 CT THORAX (DEMO)/Series 002 AXIAL 2/0003.jpg",
        "2026-01-01 CT THORAX (DEMO)/Series 003/0001-001.jpg",
        "2026-01-01 CT THORAX (DEMO)/Series 003/0001-002.jpg",
    ]
    for name in pictures:
        with Image.open(io.BytesIO(zf.read(name))) as picture:
            assert picture.format == "JPEG" and picture.size[0] > 0


def test_jpeg_zip_adds_reports_but_no_instances_without_previews(case: Case) -> None:
    zf = zipfile.ZipFile(io.BytesIO(_collect(jpeg_zip(case.store, case.studies))))
    others = sorted(n for n in zf.namelist() if not n.endswith(".jpg"))
    assert others == [
        "2026-01-01 CT THORAX (DEMO)/report.pdf",
        "2026-01-01 CT THORAX (DEMO)/report.txt",
    ]
    assert zf.read(others[0]) == case.pdf
    sr = next(s for s in case.staged if s.meta.modality == "SR")
    text = zf.read(others[1]).decode("utf-8-sig")
    assert text == sr_text(pydicom.dcmread(io.BytesIO(sr.data))).replace("\n", "\r\n")
    assert "Finding: Geen afwijkingen." in text


def test_jpeg_zip_gives_same_named_studies_and_series_unique_folders(case: Case) -> None:
    (study,) = case.studies
    twin = replace(study, study_uid=generate_uid())
    renamed = replace(
        study, series=tuple(replace(s, number=1, description="axial 1") for s in study.series[:2])
    )
    zf = zipfile.ZipFile(io.BytesIO(_collect(jpeg_zip(case.store, [study, twin, renamed]))))
    folders = {tuple(n.split("/")[:2]) for n in zf.namelist() if n.endswith(".jpg")}
    assert ("2026-01-01 CT THORAX (DEMO) (2)", "Series 001 AXIAL 1") in folders
    assert ("2026-01-01 CT THORAX (DEMO) (3)", "Series 001 axial 1") in folders
    assert ("2026-01-01 CT THORAX (DEMO) (3)", "Series 001 axial 1 (2)") in folders


def test_jpeg_zip_leaves_out_a_preview_missing_from_the_store(case: Case) -> None:
    first = case.studies[0].series[0].instances[0]
    case.store.delete(staging.preview_key(first.object_key, "preview", 0))
    zs = jpeg_zip(case.store, case.studies)
    data = _collect(zs)
    assert len(data) == len(zs)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "2026-01-01 CT THORAX (DEMO)/Series 001 AXIAL 1/0001.jpg" not in names
    assert "2026-01-01 CT THORAX (DEMO)/Series 001 AXIAL 1/0002.jpg" in names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('CT: thorax/abdomen <contrast> "spoed"?*|', "CT- thorax-abdomen contrast spoed"),
        ("  ..hidden and trailing dots...  ", "hidden and trailing dots"),
        ("tab\tand\nnewline", "tab and newline"),
        ("CON", "_CON"),
        ("com1.txt", "_com1.txt"),
        ("", "fallback"),
        ("???", "fallback"),
        ("e\u0301chographie", "\u00e9chographie"),  # NFD from a Mac becomes NFC
        ("x" * 200, "x" * archive.NAME_LIMIT),
    ],
)
def test_safe_name_suits_windows_and_macos(text: str, expected: str) -> None:
    assert safe_name(text, "fallback") == expected


# --------------------------------------------------------------------------- streaming


def _chunks(sizes: list[int]) -> list[bytes]:
    return [bytes([i % 251]) * n for i, n in enumerate(sizes)]


def test_stream_zip_yields_the_same_bytes_in_batches_of_about_a_mebibyte() -> None:
    chunks = _chunks([30_000] * 100 + [1, 2_000_000, 7] + [999] * 50)
    batch = 256 * 1024

    async def consume() -> list[bytes]:
        return [b async for b in stream_zip(iter(chunks), batch_bytes=batch, queue_depth=2)]

    batches = asyncio.run(consume())
    assert b"".join(batches) == b"".join(chunks)
    assert len(batches) > 5
    assert all(len(b) >= batch for b in batches[:-1])
    assert all(len(b) < batch + 2_000_000 for b in batches)


def test_stream_zip_of_a_zip_stream_equals_iterating_it_directly(case: Case) -> None:
    chunks = list(dicom_zip(case.store, case.studies))
    replayed = _collect(iter(chunks))  # type: ignore[arg-type]
    assert replayed == b"".join(chunks)


def _producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zip-stream"]


async def _producer_ends(seconds: float = 5) -> None:
    """Wait, with the event loop still running, for the producer thread to finish."""
    deadline = time.monotonic() + seconds
    while _producer_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert _producer_threads() == []


class Endless:
    """An endless stream that records how far it was read and whether it was closed."""

    def __init__(self, chunk: int = 64 * 1024) -> None:
        self.chunk, self.produced, self.closed = chunk, 0, False

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                self.produced += self.chunk
                yield bytes(self.chunk)
        finally:
            self.closed = True


def test_stopping_the_consumer_ends_the_producer_thread_and_closes_the_stream() -> None:
    source = Endless()

    async def consume() -> None:
        stream = stream_zip(source, batch_bytes=1024 * 1024)
        assert isinstance(stream, AsyncIterator)
        first = await anext(stream)
        assert len(first) >= 1024 * 1024
        assert len(_producer_threads()) == 1
        await stream.aclose()
        await _producer_ends()
        assert source.closed

    asyncio.run(consume())


def test_cancelled_consumer_ends_the_producer_thread() -> None:
    source = Endless()

    async def consume() -> None:
        async def read_all() -> None:
            async for _ in stream_zip(source, batch_bytes=64 * 1024):
                await asyncio.sleep(0.001)

        task = asyncio.create_task(read_all())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _producer_ends()
        assert source.closed

    asyncio.run(consume())


def test_slow_consumer_keeps_the_producer_a_bounded_distance_ahead() -> None:
    source = Endless()
    batch, depth = 256 * 1024, 4

    async def consume() -> None:
        stream = stream_zip(source, batch_bytes=batch, queue_depth=depth)
        await anext(stream)
        await asyncio.sleep(0.3)  # ample time to run away with memory, were it unbounded
        assert source.produced <= (depth + 2) * batch
        await stream.aclose()
        await _producer_ends()

    asyncio.run(consume())


def test_failure_while_zipping_reaches_the_consumer_without_member_names() -> None:
    def failing() -> Iterator[bytes]:
        yield b"x" * 10
        raise RuntimeError("Error adding '2026-01-01 CT THORAX/0001.jpg' to sized ZipStream")

    async def consume() -> None:
        with pytest.raises(
            RuntimeError, match=r"^archive stream failed \(RuntimeError\)$"
        ) as raised:
            async for _ in stream_zip(failing()):
                pass
        assert "THORAX" not in str(raised.value) and raised.value.__cause__ is None
        await _producer_ends()

    asyncio.run(consume())
