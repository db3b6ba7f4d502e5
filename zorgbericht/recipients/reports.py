"""Reports in a study: DICOM SR as plain text, Encapsulated PDF as the PDF itself."""

from __future__ import annotations

from typing import Literal

from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

ReportKind = Literal["sr", "pdf"]

# The general-purpose SR classes carry what a radiologist writes. Key Object Selection only
# flags images, and the dose, CAD and measurement SR classes are machine output that reads
# as a wall of numbers, so none of those is shown to a patient as "the report".
REPORT_SR_CLASSES = frozenset(
    {
        uid.BasicTextSRStorage,
        uid.EnhancedSRStorage,
        uid.ComprehensiveSRStorage,
        uid.Comprehensive3DSRStorage,
        uid.ExtensibleSRStorage,
    }
)
MAX_DEPTH = 32  # a content tree deeper than this is malformed or hostile; stop there
INDENT = "  "
_REFERENCE_LABELS = {
    "IMAGE": "(image)",
    "COMPOSITE": "(linked object)",
    "WAVEFORM": "(waveform)",
    "SCOORD": "(image coordinates)",
    "SCOORD3D": "(3D coordinates)",
    "TCOORD": "(time points)",
}
# What reading a malformed element value can raise; one bad item must not hide the rest.
_BAD_VALUE = (AttributeError, IndexError, KeyError, TypeError, ValueError)


def is_report(sop_class_uid: str) -> ReportKind | None:
    """Tell whether instances of this SOP class are a report to show, and of which kind."""
    if sop_class_uid in REPORT_SR_CLASSES:
        return "sr"
    if sop_class_uid == uid.EncapsulatedPDFStorage:
        return "pdf"
    return None


def encapsulated_pdf(ds: Dataset) -> bytes:
    """Return the document of an Encapsulated PDF instance without its padding byte."""
    if "EncapsulatedDocument" not in ds:
        raise ValueError("the instance holds no encapsulated document")
    mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "").strip().lower()
    if mime and mime != "application/pdf":
        raise ValueError("the encapsulated document is not a PDF")
    data = bytes(ds.EncapsulatedDocument or b"")
    length = ds.get("EncapsulatedDocumentLength")
    if isinstance(length, int) and 0 < length <= len(data):
        return data[:length]  # the sender told us the exact size (PS3.3 C.24.2.1)
    # Without a length, an odd-sized document was padded to even length with one NUL.
    if data.endswith(b"\x00"):
        return data[:-1]
    return data


def sr_text(ds: Dataset) -> str:
    """Render an SR document's content tree as indented plain text."""
    title = _code_meaning(ds.get("ConceptNameCodeSequence")) or "Report"
    lines = [title, "=" * len(title)]
    lines += _header_lines(ds)
    for item in ds.get("ContentSequence") or []:
        lines += _item_lines(item, 0)
    return "\n".join(lines).rstrip() + "\n"


def _header_lines(ds: Dataset) -> list[str]:
    lines = []
    when = " ".join(
        part for part in (_date(ds.get("ContentDate")), _time(ds.get("ContentTime"))) if part
    )
    if when:
        lines.append(f"Date: {when}")
    status = [str(ds.get(k) or "").strip() for k in ("CompletionFlag", "VerificationFlag")]
    if any(status):
        lines.append("Status: " + ", ".join(s for s in status if s))
    return [*lines, ""] if lines else lines


def _item_lines(item: Dataset, depth: int) -> list[str]:
    if depth > MAX_DEPTH:
        return [INDENT * depth + "..."]
    indent = INDENT * depth
    try:
        name = _code_meaning(item.get("ConceptNameCodeSequence"))
        value_type = str(item.get("ValueType") or "").strip().upper()
        if value_type == "CONTAINER":
            lines = ([""] if depth == 0 else []) + [indent + (name or "Section")]
        else:
            value = _value(item, value_type)
            label = f"{name}: " if name and value else ""
            text = label + value if value else name
            lines = _hanging(text, indent, len(label)) if text else []
    except _BAD_VALUE:
        return [indent + "(unreadable item)"]
    for child in item.get("ContentSequence") or []:
        lines += _item_lines(child, depth + 1)
    return lines


def _value(item: Dataset, value_type: str) -> str:
    if "ReferencedContentItemIdentifier" in item:
        target = item.ReferencedContentItemIdentifier
        path = ".".join(str(n) for n in ([target] if isinstance(target, int) else target))
        return f"(see item {path})"
    if value_type == "TEXT":
        return str(item.get("TextValue") or "").strip()
    if value_type == "CODE":
        return _code_meaning(item.get("ConceptCodeSequence"))
    if value_type == "NUM":
        return _numeric(item)
    if value_type == "DATE":
        return _date(item.get("Date"))
    if value_type == "TIME":
        return _time(item.get("Time"))
    if value_type == "DATETIME":
        return _datetime(item.get("DateTime"))
    if value_type == "PNAME":
        return _person(item.get("PersonName"))
    if value_type == "UIDREF":
        return str(item.get("UID") or "").strip()
    return _REFERENCE_LABELS.get(value_type, "")


def _numeric(item: Dataset) -> str:
    measured = item.get("MeasuredValueSequence") or []
    if not measured:
        return _code_meaning(item.get("NumericValueQualifierCodeSequence")) or "(no value)"
    number = str(measured[0].get("NumericValue") or "").strip()
    units = _units(measured[0].get("MeasurementUnitsCodeSequence"))
    return f"{number} {units}".strip() if number else "(no value)"


def _units(sequence: object) -> str:
    code = _first(sequence)
    if code is None:
        return ""
    value = str(code.get("CodeValue") or "").strip()
    # UCUM codes ("mm", "cm2") read better than their meaning; "1" means unitless.
    if str(code.get("CodingSchemeDesignator") or "").upper() == "UCUM" and value:
        return "" if value == "1" else value
    return str(code.get("CodeMeaning") or value).strip()


def _first(sequence: object) -> Dataset | None:
    if not sequence:
        return None
    item = sequence[0]  # type: ignore[index]
    return item if isinstance(item, Dataset) else None


def _code_meaning(sequence: object) -> str:
    code = _first(sequence)
    if code is None:
        return ""
    return str(code.get("CodeMeaning") or code.get("CodeValue") or "").strip()


def _date(value: object) -> str:
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _time(value: object) -> str:
    text = str(value or "").strip().split(".")[0].replace(":", "")
    if len(text) >= 4 and text.isdigit():
        return ":".join(text[i : i + 2] for i in range(0, min(len(text), 6), 2))
    return text


def _datetime(value: object) -> str:
    text = str(value or "").strip()
    # Drop a UTC offset ("+0100"): the patient reads local wall-clock times.
    core = text.split("+")[0].split("-")[0] if text[:8].isdigit() else text
    if len(core) >= 8 and core[:8].isdigit():
        return " ".join(p for p in (_date(core[:8]), _time(core[8:])) if p)
    return text


def _person(value: object) -> str:
    if not value:
        return ""
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    parts = (
        name.name_prefix,
        name.given_name,
        name.middle_name,
        name.family_name,
        name.name_suffix,
    )
    text = " ".join(p.strip() for p in parts if p and p.strip())
    return text or str(name).replace("^", " ").strip()


def _hanging(text: str, indent: str, hang: int) -> list[str]:
    # Continuation lines of a long text line up under its value, apart from child items.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    pad = indent + " " * max(hang, len(INDENT))
    return [indent + lines[0]] + [pad + line if line.strip() else "" for line in lines[1:]]
