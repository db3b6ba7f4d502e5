"""Objects in any S3-compatible store (AWS S3, MinIO, SeaweedFS) through boto3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from zorgbericht.storage.base import StorageUnavailable

DEFAULT_CHUNK = 1024 * 1024
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        timeout: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=min(timeout, 3.0),
            read_timeout=timeout,
            max_pool_connections=32,
        )
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )
        self.transfer = TransferConfig(multipart_threshold=64 * 1024 * 1024, use_threads=False)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise KeyError(kwargs.get("Key", "")) from None
            raise StorageUnavailable(f"s3: {exc.response.get('Error', {}).get('Code')}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"s3: {type(exc).__name__}") from exc

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._call(
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ContentType=content_type,
        )

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None:
        self._call(
            self.client.upload_file,
            str(path),
            self.bucket,
            self._key(key),
            ExtraArgs={"ContentType": content_type},
            Config=self.transfer,
        )

    def get_bytes(self, key: str) -> bytes:
        body = self._call(self.client.get_object, Bucket=self.bucket, Key=self._key(key))["Body"]
        with body:
            return body.read()

    def open_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        body = self._call(self.client.get_object, Bucket=self.bucket, Key=self._key(key))["Body"]
        return _chunks(body, chunk_size)

    def size(self, key: str) -> int:
        head = self._call(self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except KeyError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)))
        )
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self._call(
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": keys, "Quiet": True},
                )
                deleted += len(keys)
        return deleted

    def presign(self, key: str, expires_seconds: int) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_seconds,
            )
        )

    def check(self) -> None:
        self._call(self.client.head_bucket, Bucket=self.bucket)


def _chunks(body, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    with body:
        yield from body.iter_chunks(chunk_size)
