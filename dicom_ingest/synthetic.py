"""A synthetic CT study (body phantom, no real patient) for the demo and for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DEMO_PATIENT = {
    "PatientName": "DEMO^PATIENT",
    "PatientID": "DEMO0001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
}


def phantom_slice(index: int, size: int) -> np.ndarray:
    """One axial slice in stored values (HU + 1024): air, body, lungs, spine, noise."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    hu = np.full((size, size), -1000.0)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    hu[body] = 40
    for cx in (-0.35, 0.35):
        hu[((x - cx) / 0.25) ** 2 + ((y + 0.05) / 0.4) ** 2 < 1] = -800
    radius = 0.08 + 0.02 * np.sin(index / 15)
    hu[(x**2 + (y - 0.45) ** 2) < radius**2] = 700
    hu += rng.normal(0, 12, hu.shape) * body
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def write_study(
    out: Path,
    *,
    series: int = 2,
    slices: int = 40,
    size: int = 256,
    patient: dict[str, str] | None = None,
    bsn: str | None = None,
) -> str:
    """Write a CT study as Part 10 files under ``out``; return its Study Instance UID."""
    out.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    for s in range(series):
        series_uid = generate_uid()
        for i in range(slices):
            ds = _slice_dataset(study_uid, series_uid, s + 1, i, size, patient or DEMO_PATIENT, bsn)
            ds.save_as(out / f"s{s + 1:02d}_i{i + 1:04d}.dcm", enforce_file_format=True)
    return study_uid


def _slice_dataset(
    study_uid: str,
    series_uid: str,
    series_no: int,
    index: int,
    size: int,
    patient: dict[str, str],
    bsn: str | None,
) -> Dataset:
    ds = Dataset()
    for keyword, value in patient.items():
        setattr(ds, keyword, value)
    if bsn:
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = bsn, "NLMINBIZA", "TEXT"
        ds.OtherPatientIDsSequence = [other]
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber, ds.StudyID = "DEMO0001", "1"
    ds.StudyDescription, ds.SeriesDescription = "CT THORAX (DEMO)", f"AXIAL {series_no}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_no, index + 1
    ds.ImagePositionPatient = [-179.2, -179.2, -float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [360 / size, 360 / size], 1.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = phantom_slice(index, size).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
