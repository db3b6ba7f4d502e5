"""The port through which shares ask the tenant's PACS about studies not staged yet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Protocol


class PacsUnavailable(RuntimeError):
    """The PACS did not answer or refused the query."""


@dataclass(frozen=True)
class RemoteStudy:
    study_uid: str
    patient_id: str | None
    issuer_of_patient_id: str | None
    birth_date: date | None
    instance_count: int | None


class PacsFinder(Protocol):
    """C-FIND at study level against the tenant's PACS.

    ``find_study`` returns None when the PACS does not know the study and raises
    ``PacsUnavailable`` when it cannot be asked; implemented by ``dicom_ingest.pull``.
    """

    def find_study(
        self, *, ae_title: str, host: str, port: int, study_uid: str
    ) -> RemoteStudy | None: ...
