"""A real pynetdicom SCU for tests (the modality side), plus helpers to wait on staging."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification


def store(
    port: int, datasets: list[Dataset], *, calling: str = "TESTSCU", abort_after: int | None = None
) -> list[int | None]:
    """Send datasets over one association; return each C-STORE status (None: no answer)."""
    ae = AE(ae_title=calling)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ZORGBERICHT")
    if not assoc.is_established:
        raise ConnectionRefusedError("association rejected")
    statuses: list[int | None] = []
    for index, ds in enumerate(datasets):
        if abort_after is not None and index == abort_after:
            assoc.abort()
            return statuses
        status = assoc.send_c_store(ds)
        statuses.append(int(status.Status) if status else None)
    assoc.release()
    return statuses


def echo(port: int, calling: str = "TESTSCU") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ZORGBERICHT")
    if not assoc.is_established:
        return False
    ok = bool(assoc.send_c_echo())
    assoc.release()
    return ok


def load(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` is truthy; return its value or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


__all__ = ["StoragePresentationContexts", "echo", "load", "store", "wait_until"]


def store_files(port: int, paths: list[Path], *, calling: str = "TESTSCU") -> list[int | None]:
    """Send files' data sets exactly as they are on disk (no decode, no re-encode)."""
    from pynetdicom import _config

    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    ae = AE(ae_title=calling)
    for ds in headers:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ZORGBERICHT")
    if not assoc.is_established:
        raise ConnectionRefusedError("association rejected")
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        statuses = []
        for path in paths:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if status else None)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    return statuses
