"""Reports in a study: SR as text, Encapsulated PDF as the PDF (zorgbericht.recipients.reports)."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ChestCADSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EncapsulatedCDAStorage,
    EncapsulatedPDFStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ExtensibleSRStorage,
    KeyObjectSelectionDocumentStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)

from zorgbericht.recipients.reports import MAX_DEPTH, encapsulated_pdf, is_report, sr_text

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"  # 47 bytes: odd, so padded


# --------------------------------------------------------------------------- is_report


@pytest.mark.parametrize(
    "sop_class",
    [
        BasicTextSRStorage,
        EnhancedSRStorage,
        ComprehensiveSRStorage,
        Comprehensive3DSRStorage,
        ExtensibleSRStorage,
    ],
)
def test_general_purpose_sr_classes_are_reports(sop_class: str) -> None:
    assert is_report(sop_class) == "sr"


def test_encapsulated_pdf_is_a_pdf_report() -> None:
    assert is_report(EncapsulatedPDFStorage) == "pdf"


@pytest.mark.parametrize(
    "sop_class",
    [
        KeyObjectSelectionDocumentStorage,  # flags images, says nothing
        XRayRadiationDoseSRStorage,  # machine output
        ChestCADSRStorage,
        EncapsulatedCDAStorage,
        CTImageStorage,
        "1.2.3.4",
        "",
    ],
)
def test_other_classes_are_not_reports(sop_class: str) -> None:
    assert is_report(sop_class) is None


# --------------------------------------------------------------------------- sr_text


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _item(value_type: str, name: str | None, relationship: str = "CONTAINS", **attrs) -> Dataset:  # type: ignore[no-untyped-def]
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    if name is not None:
        item.ConceptNameCodeSequence = [_code("99", "99TEST", name)]
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def _measurement(value: str, unit: str, scheme: str = "UCUM", meaning: str = "") -> Dataset:
    measured = Dataset()
    measured.NumericValue = value
    measured.MeasurementUnitsCodeSequence = [_code(unit, scheme, meaning or unit)]
    return measured


def _report() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    ds.ContentDate, ds.ContentTime = "20260102", "083015.123"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    size = _item("NUM", "Diameter", MeasuredValueSequence=[_measurement("12.5", "mm")])
    size.ContentSequence = [_item("CODE", "Site", "HAS CONCEPT MOD", ConceptCodeSequence=[
        _code("39607008", "SCT", "Lung")])]  # fmt: skip
    findings = _item("CONTAINER", "Findings")
    findings.ContentSequence = [
        _item("TEXT", "Finding", TextValue="Kleine nodus.\r\nGeen andere afwijkingen."),
        size,
        _item("NUM", "Ratio", MeasuredValueSequence=[_measurement("0.8", "1")]),
        _item(
            "NUM", "Count", MeasuredValueSequence=[_measurement("3", "{nodules}", "DCM", "nodules")]
        ),
    ]
    ds.ContentSequence = [
        _item("PNAME", "Observer", "HAS OBS CONTEXT", PersonName="Jansen^Piet^^dr."),
        _item("DATE", "Study date", Date="20260101"),
        _item("TIME", "Time", Time="0930"),
        _item("DATETIME", "Signed", DateTime="20260102091500+0100"),
        _item("UIDREF", "Study", UID="1.2.3.4"),
        findings,
        _item("CONTAINER", "Conclusion"),
        _item("IMAGE", "Key image"),
    ]
    return ds


EXPECTED = """\
Diagnostic imaging report
=========================
Date: 2026-01-02 08:30:15
Status: COMPLETE, VERIFIED

Observer: dr. Piet Jansen
Study date: 2026-01-01
Time: 09:30
Signed: 2026-01-02 09:15:00
Study: 1.2.3.4

Findings
  Finding: Kleine nodus.
           Geen andere afwijkingen.
  Diameter: 12.5 mm
    Site: Lung
  Ratio: 0.8
  Count: 3 nodules

Conclusion
Key image: (image)
"""


def test_sr_text_renders_the_content_tree_as_indented_text() -> None:
    assert sr_text(_report()) == EXPECTED


def test_sr_text_survives_encoding_and_a_latin_1_character_set() -> None:
    ds = _report()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ContentSequence[5].ContentSequence[
        0
    ].TextValue = "Geen afwijkingen in de longhilus; één nodus."
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    text = sr_text(pydicom.dcmread(io.BytesIO(out.getvalue())))
    assert "  Finding: Geen afwijkingen in de longhilus; één nodus.\n" in text


def test_sr_text_tolerates_missing_names_values_and_unknown_types() -> None:
    ds = Dataset()  # no title, no dates, no flags
    ds.ContentSequence = [
        _item("TEXT", None, TextValue="Alleen tekst."),
        _item("TEXT", "Empty"),
        _item("CODE", "No code"),
        _item("NUM", "No value"),
        _item("NUM", "No units", MeasuredValueSequence=[Dataset()]),
        _item("PNAME", "No name"),
        _item("WHATEVER", "Unknown type"),
        Dataset(),  # no value type at all
        _item("CONTAINER", None),
    ]
    assert sr_text(ds) == (
        "Report\n======\n"
        "Alleen tekst.\nEmpty\nNo code\nNo value: (no value)\nNo units: (no value)\nNo name\n"
        "Unknown type\n\nSection\n"
    )


def test_sr_text_shows_a_malformed_number_as_sent_and_goes_on() -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ComprehensiveSRStorage, generate_uid()
    ds.ContentSequence = [
        _item("NUM", "Size", MeasuredValueSequence=[_measurement("4242", "mm")]),
        _item("TEXT", "Next", TextValue="still here"),
    ]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    broken = out.getvalue().replace(b"4242", b"abcd")  # a DS that is no number
    text = sr_text(pydicom.dcmread(io.BytesIO(broken)))
    assert "Size: abcd mm\nNext: still here\n" in text


def test_sr_text_stops_at_a_pathologically_deep_tree() -> None:
    root = Dataset()
    node = root
    for depth in range(MAX_DEPTH + 20):
        child = _item("CONTAINER", f"Level {depth}")
        node.ContentSequence = [child]
        node = child
    lines = sr_text(root).splitlines()
    assert any(line.strip() == "..." for line in lines)
    assert f"Level {MAX_DEPTH + 5}" not in "\n".join(lines)


def test_sr_text_shows_by_reference_items_as_pointers() -> None:
    ds = Dataset()
    ds.ContentSequence = [
        _item("CODE", "Inferred", ReferencedContentItemIdentifier=[1, 2, 3]),
        _item("CODE", "Root", ReferencedContentItemIdentifier=1),  # one value is no list
    ]
    assert sr_text(ds).endswith("Inferred: (see item 1.2.3)\nRoot: (see item 1)\n")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test-SR.dcm", ["Diagnosis", "Status: COMPLETE, VERIFIED", "Diameter: 3 Length Unit"]),
        ("reportsi.dcm", ["Document Title", "Report Text: Enter text", "(image)"]),
    ],
)
def test_sr_text_renders_real_sample_reports(name: str, expected: list[str]) -> None:
    text = sr_text(pydicom.dcmread(get_testdata_file(name)))
    for phrase in expected:
        assert phrase in text


# --------------------------------------------------------------------------- encapsulated_pdf


def _pdf_instance(
    document: bytes, length: int | None = None, mime: str = "application/pdf"
) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = EncapsulatedPDFStorage, generate_uid()
    ds.MIMETypeOfEncapsulatedDocument = mime
    ds.EncapsulatedDocument = document
    if length is not None:
        ds.EncapsulatedDocumentLength = length
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_odd_sized_pdf_comes_back_without_its_padding_byte() -> None:
    ds = pydicom.dcmread(io.BytesIO(_pdf_instance(PDF)))
    assert len(ds.EncapsulatedDocument) == len(PDF) + 1  # padded on the wire
    assert encapsulated_pdf(ds) == PDF


def test_even_sized_pdf_comes_back_unchanged() -> None:
    even = PDF + b"\n"
    assert encapsulated_pdf(pydicom.dcmread(io.BytesIO(_pdf_instance(even)))) == even


def test_document_length_decides_where_the_pdf_ends() -> None:
    padded_with_nul_content = PDF + b"\x00"  # even: a NUL that belongs to the document
    ds = pydicom.dcmread(io.BytesIO(_pdf_instance(padded_with_nul_content, length=len(PDF) + 1)))
    assert encapsulated_pdf(ds) == padded_with_nul_content
    ds = pydicom.dcmread(io.BytesIO(_pdf_instance(PDF, length=len(PDF))))
    assert encapsulated_pdf(ds) == PDF


def test_implausible_document_length_falls_back_to_the_padding_rule() -> None:
    ds = pydicom.dcmread(io.BytesIO(_pdf_instance(PDF, length=10 * len(PDF))))
    assert encapsulated_pdf(ds) == PDF


def test_non_pdf_or_missing_document_is_refused() -> None:
    with pytest.raises(ValueError, match="not a PDF"):
        encapsulated_pdf(pydicom.dcmread(io.BytesIO(_pdf_instance(b"<xml/>", mime="text/xml"))))
    with pytest.raises(ValueError, match="no encapsulated document"):
        encapsulated_pdf(Dataset())
