"""Objects as files under a local folder (the embedded default)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from zorgbericht.storage.base import StorageUnavailable

DEFAULT_CHUNK = 1024 * 1024


class LocalStore:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError("object key escapes the store")
        return path

    def _write(self, key: str, writer) -> None:  # type: ignore[no-untyped-def]
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageUnavailable(f"local store: {exc.strerror}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> None:
        self._write(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: Path, content_type: str = "") -> None:
        if self._link(key, path):
            return

        def copy(fh) -> None:  # type: ignore[no-untyped-def]
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, DEFAULT_CHUNK)

        self._write(key, copy)

    def _link(self, key: str, path: Path) -> bool:
        """Hard-link an immutable file into the store (same file system): no copy at all."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".link-{os.getpid()}-{threading.get_ident()}-{target.name}")
            os.link(path, tmp)
            os.replace(tmp, target)
        except OSError:
            return False
        return True

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def open_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise KeyError(key) from None
        return _chunks(fh, chunk_size)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix.rstrip("/"))
        if base.is_file():
            base.unlink()
            return 1
        if not base.is_dir():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base, ignore_errors=True)
        return count

    def presign(self, key: str, expires_seconds: int) -> str | None:
        return None

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable("local store is not writable")


def _chunks(fh, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    with fh:
        while chunk := fh.read(chunk_size):
            yield chunk
