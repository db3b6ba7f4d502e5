"""Stage a folder, a DICOMDIR or a ZIP of DICOM files through the same pipeline as C-STORE."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from dicom_ingest.meta import NON_IMAGE_CLASSES, UndecodableInstance, read_meta
from dicom_ingest.pipeline import PREAMBLE, Pipeline
from zorgbericht.audit import service as audit

Source = tuple[str, Callable[[], bytes]]


@dataclass
class ImportResult:
    staged: int = 0
    skipped: int = 0
    refused: int = 0
    studies: set[str] = field(default_factory=set)


def iter_sources(path: Path) -> Iterator[Source]:
    """Yield (name, reader) for every candidate file under ``path``."""
    if path.is_file() and zipfile.is_zipfile(path):
        yield from _zip_sources(path)
    elif path.is_file() and path.name.upper() == "DICOMDIR":
        yield from _dicomdir_sources(path)
    elif path.is_file():
        yield path.name, path.read_bytes
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield str(file.relative_to(path)), file.read_bytes
    else:
        raise FileNotFoundError(f"{path} is not a file, folder, DICOMDIR or ZIP")


def _zip_sources(path: Path) -> Iterator[Source]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.is_dir():
                yield info.filename, lambda info=info: archive.read(info)


def _dicomdir_sources(path: Path) -> Iterator[Source]:
    directory = pydicom.dcmread(path)
    for record in directory.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if file_id:
            parts = [file_id] if isinstance(file_id, str) else list(file_id)
            file = path.parent.joinpath(*parts)
            yield str(file.relative_to(path.parent)), file.read_bytes


def import_path(
    *,
    path: Path,
    tenant_id: int,
    pipeline: Pipeline,
    actor: audit.Actor,
    progress: Callable[[str], None] | None = None,
) -> ImportResult:
    """Stage every DICOM Part 10 file found; files that are not DICOM are skipped."""
    result = ImportResult()
    batch = pipeline.open_batch(tenant_id=tenant_id, actor=actor, kind="import")
    try:
        for name, read in iter_sources(path):
            outcome = _stage_one(read(), batch, pipeline, result)
            if progress:
                progress(outcome)
            del name
    finally:
        pipeline.end_batch(batch, aborted=False)
    batch.finalized.wait()
    pipeline.drain(timeout=3600)
    return result


def _stage_one(data: bytes, batch, pipeline: Pipeline, result: ImportResult) -> str:  # type: ignore[no-untyped-def]
    if len(data) < 132 or data[128:132] != b"DICM":
        result.skipped += 1
        return "skipped"
    data = PREAMBLE + data[128:]
    try:
        meta = read_meta(data)
    except UndecodableInstance:
        result.refused += 1
        return "refused"
    if meta.sop_class_uid in NON_IMAGE_CLASSES:
        result.skipped += 1
        return "skipped"
    pipeline.accept(batch, meta, data)
    result.staged += 1
    result.studies.add(meta.study_uid)
    return "staged"
