"""Build the configured ObjectStore."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from zorgbericht.settings import Settings
from zorgbericht.storage.base import ObjectStore
from zorgbericht.storage.local import LocalStore
from zorgbericht.storage.s3 import S3Store


def make_store(settings: Settings) -> ObjectStore:
    """Pick the store from ``ZB_STORAGE_URL``: ``file://PATH`` or ``s3://bucket/prefix``."""
    url = urlsplit(settings.resolved_storage_url)
    if url.scheme == "file":
        return LocalStore(Path(unquote(url.path)), fsync=settings.spool_fsync)
    if url.scheme == "s3":
        if not url.netloc:
            raise ValueError("ZB_STORAGE_URL s3://bucket/prefix needs a bucket")
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        return S3Store(
            url.netloc,
            url.path,
            endpoint_url=settings.s3_endpoint_url,
            access_key=settings.s3_access_key,
            secret_key=secret,
            region=settings.s3_region,
        )
    raise ValueError(f"ZB_STORAGE_URL scheme {url.scheme!r} is not supported (file:// or s3://)")
