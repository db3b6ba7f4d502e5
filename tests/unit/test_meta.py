"""Index fields read from instance headers (dicom_ingest.meta)."""

from __future__ import annotations

import io
import json
import random
import warnings
from datetime import date

import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dicom_ingest.meta import (
    BSN_ISSUER,
    UndecodableInstance,
    is_valid_bsn,
    meta_from_dataset,
    read_meta,
)
from zorgbericht.recipients.archive import DIR_RECORD_LIMIT

VALID_BSN = "123456782"
VALID_8_DIGIT_BSN = "12345672"  # 012345672 passes the 11-check


def _dataset(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    # Set explicitly so that a data set without SOP UIDs can still be written.
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _other_id(patient_id: str, issuer: str | None) -> Dataset:
    item = Dataset()
    item.PatientID = patient_id
    if issuer is not None:
        item.IssuerOfPatientID = issuer
    item.TypeOfPatientID = "TEXT"
    return item


def _unvalidated(ds: Dataset, keyword: str, vr: str, value: str) -> Dataset:
    """Set a value pydicom would warn about (invalid date, over-long UID) as a sender might."""
    ds.add(DataElement(keyword, vr, value, validation_mode=config.IGNORE))
    return ds


# --------------------------------------------------------------------------- is_valid_bsn


def _elfproef(nine_digits: str) -> bool:
    """Independent reference: 9*d1 + 8*d2 + ... + 2*d8 - 1*d9 is a multiple of 11."""
    weights = [9, 8, 7, 6, 5, 4, 3, 2, -1]
    return sum(w * int(d) for w, d in zip(weights, nine_digits, strict=True)) % 11 == 0


@pytest.mark.parametrize(
    "value", [VALID_BSN, "111222333", "012345672", VALID_8_DIGIT_BSN, " 123456782 "]
)
def test_bsn_passing_the_eleven_check_is_valid(value: str) -> None:
    assert is_valid_bsn(value)


@pytest.mark.parametrize("value", ["123456789", "111222334", "12345678", "000000000", "00000000"])
def test_bsn_failing_the_eleven_check_or_all_zeros_is_invalid(value: str) -> None:
    assert not is_valid_bsn(value)


@pytest.mark.parametrize(
    "value",
    ["", "1234567", "1234567820", "12345678a", "12345-782", "1234 5678", "+23456782", "12345678.0"],
)
def test_bsn_with_wrong_length_or_non_digits_is_invalid(value: str) -> None:
    assert not is_valid_bsn(value)


def test_eight_digit_bsn_is_checked_as_if_padded_with_a_leading_zero() -> None:
    for number in range(10_000_000, 10_000_000 + 500):
        eight = str(number)
        assert is_valid_bsn(eight) == is_valid_bsn("0" + eight) == _elfproef("0" + eight)


def test_eleven_check_agrees_with_an_independent_reference() -> None:
    rng = random.Random(11)
    samples = [f"{rng.randrange(1, 10**9):09d}" for _ in range(3000)]
    assert sum(_elfproef(s) for s in samples) > 100  # both outcomes are exercised
    for sample in samples:
        assert is_valid_bsn(sample) == _elfproef(sample), sample


def test_bsn_with_a_unicode_digit_lookalike_is_invalid_not_an_error() -> None:
    assert is_valid_bsn("12345678\u00b2") is False


# --------------------------------------------------------------------------- BSN from headers


def test_bsn_from_other_patient_ids_with_the_bsn_issuer() -> None:
    ds = _dataset(
        PatientID="MRN0001",
        IssuerOfPatientID="HOSPITAL",
        OtherPatientIDsSequence=[_other_id(VALID_BSN, BSN_ISSUER)],
    )
    meta = meta_from_dataset(ds, ExplicitVRLittleEndian)
    assert meta.bsn == VALID_BSN
    assert meta.patient_id == "MRN0001"  # the local ID is untouched


def test_bsn_found_in_a_later_other_patient_ids_item() -> None:
    ds = _dataset(
        PatientID="MRN0001",
        OtherPatientIDsSequence=[_other_id("999", "HOSPITAL"), _other_id("111222333", BSN_ISSUER)],
    )
    assert meta_from_dataset(ds, ExplicitVRLittleEndian).bsn == "111222333"


def test_bsn_from_the_main_patient_id_when_its_issuer_is_the_bsn_issuer() -> None:
    ds = _dataset(PatientID=VALID_BSN, IssuerOfPatientID=BSN_ISSUER)
    assert meta_from_dataset(ds, ExplicitVRLittleEndian).bsn == VALID_BSN


def test_eight_digit_bsn_is_stored_padded_to_nine_digits() -> None:
    main = _dataset(PatientID=VALID_8_DIGIT_BSN, IssuerOfPatientID=BSN_ISSUER)
    other = _dataset(OtherPatientIDsSequence=[_other_id(VALID_8_DIGIT_BSN, BSN_ISSUER)])
    assert meta_from_dataset(main, ExplicitVRLittleEndian).bsn == "012345672"
    assert meta_from_dataset(other, ExplicitVRLittleEndian).bsn == "012345672"


@pytest.mark.parametrize("number", ["123456789", "000000000", "BSN123456"])
def test_bsn_failing_the_eleven_check_is_ignored(number: str) -> None:
    main = _dataset(PatientID=number, IssuerOfPatientID=BSN_ISSUER)
    other = _dataset(OtherPatientIDsSequence=[_other_id(number, BSN_ISSUER)])
    assert meta_from_dataset(main, ExplicitVRLittleEndian).bsn is None
    assert meta_from_dataset(other, ExplicitVRLittleEndian).bsn is None


@pytest.mark.parametrize("issuer", ["HOSPITAL", "NLMINBIZ", "nlminbiza", None])
def test_valid_number_with_another_or_no_issuer_is_not_a_bsn(issuer: str | None) -> None:
    other = _dataset(PatientID="MRN0001", OtherPatientIDsSequence=[_other_id(VALID_BSN, issuer)])
    main = _dataset(PatientID=VALID_BSN)
    if issuer is not None:
        main.IssuerOfPatientID = issuer
    assert meta_from_dataset(other, ExplicitVRLittleEndian).bsn is None
    assert meta_from_dataset(main, ExplicitVRLittleEndian).bsn is None


def test_invalid_main_bsn_falls_back_to_a_valid_other_patient_id() -> None:
    ds = _dataset(
        PatientID="123456789",
        IssuerOfPatientID=BSN_ISSUER,
        OtherPatientIDsSequence=[_other_id("111222333", BSN_ISSUER)],
    )
    assert meta_from_dataset(ds, ExplicitVRLittleEndian).bsn == "111222333"


def test_bsn_survives_encoding_and_read_meta() -> None:
    ds = _dataset(PatientID="MRN0001", OtherPatientIDsSequence=[_other_id(VALID_BSN, BSN_ISSUER)])
    assert read_meta(_encode(ds)).bsn == VALID_BSN


def test_bsn_with_leading_padding_is_stored_as_nine_digits() -> None:
    ds = _dataset(PatientID=" " + VALID_8_DIGIT_BSN, IssuerOfPatientID=BSN_ISSUER)
    meta = read_meta(_encode(ds))
    assert meta.patient_id == VALID_8_DIGIT_BSN  # the header text itself is stripped
    assert meta.bsn == "012345672"


def test_bsn_issuer_without_patient_id_is_not_an_error() -> None:
    ds = _dataset(IssuerOfPatientID=BSN_ISSUER)
    assert read_meta(_encode(ds)).bsn is None


def test_patient_id_with_a_digit_lookalike_does_not_make_the_instance_undecodable() -> None:
    ds = _dataset(
        SpecificCharacterSet="ISO_IR 192", PatientID="12345678\u00b2", IssuerOfPatientID=BSN_ISSUER
    )
    assert read_meta(_encode(ds)).bsn is None


# --------------------------------------------------------------------------- dates


def test_dates_are_parsed() -> None:
    ds = _dataset(PatientBirthDate="19800229", StudyDate="20260101")
    meta = read_meta(_encode(ds))
    assert meta.birth_date == date(1980, 2, 29)
    assert meta.study_date == date(2026, 1, 1)


@pytest.mark.parametrize("value", ["19801332", "19810229", "", "1980", "198002291", "1980-02-2"])
def test_invalid_date_gives_none_rather_than_an_error(value: str) -> None:
    ds = _unvalidated(_dataset(StudyDate="20260101"), "PatientBirthDate", "DA", value)
    assert meta_from_dataset(ds, ExplicitVRLittleEndian).birth_date is None
    meta = read_meta(_encode(ds))
    assert meta.birth_date is None
    assert meta.study_date == date(2026, 1, 1)  # the other date is still read


def test_absent_dates_are_none() -> None:
    meta = meta_from_dataset(_dataset(), ExplicitVRLittleEndian)
    assert meta.birth_date is None and meta.study_date is None


# --------------------------------------------------------------------------- identifiers


@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
def test_missing_uid_raises_undecodable_instance_naming_an_identifier(keyword: str) -> None:
    ds = _dataset()
    delattr(ds, keyword)
    with pytest.raises(UndecodableInstance, match="identifier"):
        meta_from_dataset(ds, ExplicitVRLittleEndian)
    with pytest.raises(UndecodableInstance, match="identifier"):
        read_meta(_encode(ds))


def test_empty_uid_raises_undecodable_instance_naming_an_identifier() -> None:
    ds = _dataset(StudyInstanceUID="")
    with pytest.raises(UndecodableInstance, match="identifier"):
        read_meta(_encode(ds))


def test_uid_longer_than_64_characters_is_rejected() -> None:
    ds = _unvalidated(_dataset(), "SeriesInstanceUID", "UI", "1.2." + "3" * 62)
    with pytest.raises(UndecodableInstance, match="identifier"):
        meta_from_dataset(ds, ExplicitVRLittleEndian)
    ok = _unvalidated(_dataset(), "SeriesInstanceUID", "UI", "1.2." + "3" * 60)
    assert meta_from_dataset(ok, ExplicitVRLittleEndian).series_uid == "1.2." + "3" * 60


def test_undecodable_instance_is_a_value_error() -> None:
    assert issubclass(UndecodableInstance, ValueError)


@pytest.mark.parametrize("seed", range(8))
def test_garbage_after_the_dicm_prefix_raises_undecodable_instance(seed: int) -> None:
    rng = random.Random(seed)
    data = b"\0" * 128 + b"DICM" + rng.randbytes(rng.choice([0, 7, 64, 512]))
    with pytest.raises(UndecodableInstance):
        read_meta(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"\0" * 128 + b"DICX" + b"\0" * 64],
    ids=["empty", "short", "bad-prefix"],
)
def test_non_dicom_bytes_raise_undecodable_instance(data: bytes) -> None:
    with pytest.raises(UndecodableInstance):
        read_meta(data)


def _corrupt_vr_of_sop_instance_uid() -> bytes:
    data = bytearray(_encode(_dataset(PatientID="X")))
    at = data.index(b"\x08\x00\x18\x00UI")  # (0008,0018) explicit VR "UI"
    data[at + 5] = ord(".")  # VR "U." is unknown; only detected when the value is read
    return bytes(data)


def _corrupt_file_meta_group_length() -> bytes:
    data = bytearray(_encode(_dataset(PatientID="X")))
    assert data[132:138] == b"\x02\x00\x00\x00UL"
    data[138] = 3  # (0002,0000) UL with a 3-byte value
    return bytes(data)


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_vr_of_sop_instance_uid, _corrupt_file_meta_group_length],
    ids=["unknown-vr", "bad-group-length"],
)
def test_corrupted_header_raises_undecodable_instance(corrupt) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UndecodableInstance):
        read_meta(corrupt())


# --------------------------------------------------------------------------- other fields


def test_frames_come_from_number_of_frames() -> None:
    assert read_meta(_encode(_dataset(NumberOfFrames=5))).frames == 5
    assert read_meta(_encode(_dataset())).frames == 1


@pytest.mark.parametrize("value", ["0", ""])
def test_zero_or_empty_number_of_frames_counts_as_one_frame(value: str) -> None:
    ds = _unvalidated(_dataset(), "NumberOfFrames", "IS", value)
    assert meta_from_dataset(ds, ExplicitVRLittleEndian).frames == 1


def test_has_pixels_depends_on_rows_and_columns() -> None:
    assert read_meta(_encode(_dataset())).has_pixels is False
    assert read_meta(_encode(_dataset(Rows=2))).has_pixels is False
    assert read_meta(_encode(_dataset(Rows=2, Columns=2))).has_pixels is True


def test_read_meta_does_not_need_the_pixel_data() -> None:
    ds = _dataset(
        Rows=64,
        Columns=64,
        BitsAllocated=16,
        BitsStored=16,
        HighBit=15,
        PixelRepresentation=0,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        PixelData=b"\0" * (64 * 64 * 2),
    )
    data = _encode(ds)
    truncated = data[: data.index(b"\xe0\x7f\x10\x00") + 20]  # pixel data cut short
    meta = read_meta(truncated)
    assert meta.sop_uid == ds.SOPInstanceUID and meta.has_pixels is True


def test_index_fields_are_read_from_the_header() -> None:
    ds = _dataset(
        PatientID="MRN0001",
        IssuerOfPatientID="HOSPITAL",
        PatientName="DOE^JANE",
        StudyDescription="CT THORAX",
        AccessionNumber="A1",
        Modality="CT",
        SeriesDescription="AXIAL 1mm",
        SeriesNumber=3,
        InstanceNumber=17,
    )
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta = read_meta(_encode(ds))
    assert (meta.study_uid, meta.series_uid, meta.sop_uid, meta.sop_class_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        CTImageStorage,
    )
    assert meta.transfer_syntax_uid == ImplicitVRLittleEndian
    assert (meta.patient_id, meta.issuer_of_patient_id, meta.patient_name) == (
        "MRN0001",
        "HOSPITAL",
        "DOE^JANE",
    )
    assert (meta.study_description, meta.accession_number, meta.modality) == (
        "CT THORAX",
        "A1",
        "CT",
    )
    assert (meta.series_description, meta.series_number, meta.instance_number) == (
        "AXIAL 1mm",
        3,
        17,
    )
    assert meta.bsn is None


def test_absent_optional_fields_are_none() -> None:
    meta = read_meta(_encode(_dataset(PatientID="", SeriesNumber=None)))
    assert meta.patient_id is None
    assert meta.series_number is None and meta.instance_number is None
    assert meta.modality is None and meta.accession_number is None


# --------------------------------------------------------------------------- DICOMDIR record


def _dir_record_keys(record: dict[str, object] | None) -> set[str]:
    assert record is not None
    return {elem.keyword for elem in Dataset.from_json(record)}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def test_dir_record_holds_only_the_keys_the_dicomdir_records_need() -> None:
    ds = _dataset(
        PatientID="MRN0001",
        PatientName="DOE^JANE",
        PatientBirthDate="19800229",
        OtherPatientIDsSequence=[_other_id(VALID_BSN, BSN_ISSUER)],
        StudyDate="20260101",
        StudyTime="120000",
        StudyID="1",
        StudyDescription="CT THORAX",
        AccessionNumber="A1",
        Modality="CT",
        SeriesNumber=3,
        SeriesDescription="AXIAL",
        InstanceNumber=17,
        ImageType=["ORIGINAL", "PRIMARY"],
        Rows=2,
        Columns=2,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelRepresentation=0,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        PixelData=b"\0" * 4,
    )
    meta = read_meta(_encode(ds))
    assert _dir_record_keys(meta.dir_record) == {
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "StudyDescription",
        "AccessionNumber",
        "StudyInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesInstanceUID",
        "InstanceNumber",
    }
    text = json.dumps(meta.dir_record)
    assert VALID_BSN not in text and "19800229" not in text  # no more patient data than needed
    assert Dataset.from_json(meta.dir_record).InstanceNumber == 17


def _observer(stamp: str) -> Dataset:
    observer = Dataset()
    observer.VerificationDateTime = stamp
    observer.VerifyingObserverName = "ARTS^A"
    return observer


def test_dir_record_of_an_sr_keeps_its_title_modifiers_but_not_its_findings() -> None:
    modifier = Dataset()
    modifier.RelationshipType, modifier.ValueType = "HAS CONCEPT MOD", "CODE"
    modifier.ConceptNameCodeSequence = [_code("G-C0E3", "SRT", "Finding Site")]
    modifier.ConceptCodeSequence = [_code("39607008", "SCT", "Lung")]
    modifier.ContentSequence = [Dataset()]  # a subtree the record must not carry
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "TEXT"
    finding.TextValue = "Vertrouwelijke bevinding"
    ds = _dataset(
        SOPClassUID=ComprehensiveSRStorage,
        Modality="SR",
        InstanceNumber=1,
        CompletionFlag="COMPLETE",
        VerificationFlag="VERIFIED",
        ContentDate="20260102",
        ContentTime="0830",
        ConceptNameCodeSequence=[_code("18748-4", "LN", "Diagnostic imaging report")],
        VerifyingObserverSequence=[_observer("20260102091500"), _observer("20260103100000")],
        ContentSequence=[finding, modifier],
    )
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    record = Dataset.from_json(read_meta(_encode(ds)).dir_record)
    assert record.VerificationDateTime == "20260103100000"  # the latest verification
    assert record.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert len(record.ContentSequence) == 1
    assert record.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning == "Lung"
    assert "ContentSequence" not in record.ContentSequence[0]
    assert "Vertrouwelijke" not in json.dumps(read_meta(_encode(ds)).dir_record)


def test_dir_record_of_an_encapsulated_pdf_has_its_mime_type_not_the_document() -> None:
    ds = _dataset(
        SOPClassUID=EncapsulatedPDFStorage,
        Modality="DOC",
        InstanceNumber=1,
        DocumentTitle="Verslag",
        MIMETypeOfEncapsulatedDocument="application/pdf",
        EncapsulatedDocument=b"%PDF-1.4 " + b"x" * 100_000 + b" %%EOF",
    )
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta = read_meta(_encode(ds))
    record = Dataset.from_json(meta.dir_record)
    assert record.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert record.DocumentTitle == "Verslag"
    assert "EncapsulatedDocument" not in record
    assert len(json.dumps(meta.dir_record)) < 2000


def test_dir_record_holds_text_decoded_from_the_instance_character_set() -> None:
    ds = _dataset(
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Jörg",
        StudyDescription="Echografie bovenbuik é",
    )
    data = _encode(ds)
    assert "Müller".encode("latin-1") in data  # really encoded as Latin-1
    record = Dataset.from_json(read_meta(data).dir_record)
    assert str(record.PatientName) == "Müller^Jörg"
    assert record.StudyDescription == "Echografie bovenbuik é"


def test_dir_record_drops_an_unbounded_optional_sequence_to_stay_small() -> None:
    references = []
    for _ in range(400):
        image = Dataset()
        image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = CTImageStorage, generate_uid()
        series = Dataset()
        series.SeriesInstanceUID, series.ReferencedImageSequence = generate_uid(), [image]
        references.append(series)
    ds = _dataset(
        SOPClassUID=GrayscaleSoftcopyPresentationStateStorage,
        Modality="PR",
        InstanceNumber=1,
        ContentLabel="ANNOTATIE",
        PresentationCreationDate="20260101",
        PresentationCreationTime="120000",
        ReferencedSeriesSequence=references,
    )
    meta = read_meta(_encode(ds))
    assert meta.dir_record is not None
    assert len(json.dumps(meta.dir_record)) <= DIR_RECORD_LIMIT
    record = Dataset.from_json(meta.dir_record)
    assert "ReferencedSeriesSequence" not in record
    assert record.ContentLabel == "ANNOTATIE" and record.PresentationCreationDate == "20260101"


def test_unconvertible_header_value_leaves_no_dir_record_yet_the_instance_is_indexed() -> None:
    data = _encode(_dataset(PatientID="X", InstanceNumber="4242"))
    data = data.replace(b"4242", b"abcd")  # an IS that is no number, as some senders write
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # in production pydicom only warns about it
        meta = read_meta(data)
    assert meta.patient_id == "X" and meta.instance_number is None
    assert meta.dir_record is None  # the archive then reads the header itself
