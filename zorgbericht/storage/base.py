"""What the domain needs from an object store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol


class StorageUnavailable(RuntimeError):
    """The store could not be reached or refused the operation; the caller may retry later."""


class ObjectStore(Protocol):
    """Keyed blobs: DICOM files, previews, thumbnails.

    Keys are opaque ``/``-separated paths that never carry patient data. A ``put`` returns
    only once the object is durable in the store; every failure to reach the store is
    raised as ``StorageUnavailable`` so callers can answer "out of resources" and retry,
    and a missing key is ``KeyError``.
    """

    def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> None: ...

    def put_file(self, key: str, path: Path, content_type: str = ...) -> None:
        """Store the file at ``path`` under ``key``; the file itself is left in place."""
        ...

    def get_bytes(self, key: str) -> bytes: ...

    def open_stream(self, key: str, chunk_size: int = ...) -> Iterator[bytes]:
        """Yield the object in chunks, without holding it whole in memory."""
        ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing key is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""
        ...

    def presign(self, key: str, expires_seconds: int) -> str | None:
        """A time-limited direct URL, or None when the store cannot give one."""
        ...

    def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the store answers now."""
        ...
