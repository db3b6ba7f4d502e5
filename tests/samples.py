"""Test instances: pydicom's shipped files re-labelled into one study, in many syntaxes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

# (file shipped with pydicom / pydicom-data, what it exercises)
SAMPLES = {
    "CT_small.dcm": "explicit VR little endian, signed CT",
    "MR_small_implicit.dcm": "implicit VR little endian",
    "MR_small_bigendian.dcm": "explicit VR big endian",
    "image_dfl.dcm": "deflated explicit VR little endian",
    "MR_small_RLE.dcm": "RLE lossless",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline, YBR_FULL",
    "JPGExtended.dcm": "JPEG extended 12-bit",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless SV1, RGB",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless",
    "SC_rgb_jls_lossy_line.dcm": "JPEG-LS near-lossless, RGB",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless",
    "693_J2KI.dcm": "JPEG 2000",
    "emri_small_jpeg_2k_lossless.dcm": "enhanced MR multi-frame, JPEG 2000",
}
PATIENT = {"PatientName": "TEST^MIXED", "PatientID": "MIX0001", "PatientBirthDate": "19800229"}
VALID_BSN = "123456782"


def relabel(ds: Dataset, study_uid: str, series_uid: str, number: int) -> Dataset:
    """Put an instance into our test study without touching its pixel data bytes."""
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber, ds.InstanceNumber = number, 1
    ds.StudyDescription = "MIXED SYNTAX TEST"
    return ds


def mixed_study(out: Path, with_process14: bool = True) -> tuple[str, list[Path]]:
    """Write one study with one series per sample file; return its UID and the files."""
    out.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    files = []
    for number, name in enumerate(SAMPLES, start=1):
        ds = pydicom.dcmread(get_testdata_file(name))
        relabel(ds, study_uid, generate_uid(), number)
        path = out / f"{number:02d}_{Path(name).stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    if with_process14 and shutil.which("dcmcjpeg"):
        source = files[0]
        target = out / "99_CT_process14.dcm"
        subprocess.run(["dcmcjpeg", "+el", "+sv", "2", str(source), str(target)], check=True)
        ds = pydicom.dcmread(target)
        relabel(ds, study_uid, generate_uid(), 99)
        ds.save_as(target, enforce_file_format=True)
        files.append(target)
    return study_uid, files


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file: everything after the file meta group."""
    data = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta_length = int(ds.file_meta.FileMetaInformationGroupLength)
    return data[132 + 12 + meta_length :]


def storescu_config(files: list[Path], target: Path) -> Path:
    """A dcmtk association profile proposing each file's exact SOP class and syntax."""
    pairs = sorted(
        {
            (
                str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID),
                str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID),
            )
            for f in files
        }
    )
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Mixed]"]
    for i, (sop, ts) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{i} = {sop}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[Mixed]", "PresentationContexts = Mixed"]
    target.write_text("\n".join(lines) + "\n")
    return target
