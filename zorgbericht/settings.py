"""One typed settings object per process, read from ``ZB_*`` environment variables."""

from __future__ import annotations

import enum
import re
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AUDIT_RETENTION_MINIMUM_DAYS = 5 * 365 + 2  # five years, leap days included
PLACEHOLDER_SECRET = "change-me-in-production"  # noqa: S105 - refused in production below

_ISO_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class Environment(enum.StrEnum):
    development = "development"
    test = "test"
    production = "production"


def parse_duration(value: object) -> timedelta:
    """Parse an ISO 8601 duration (``P14D``, ``PT5M``) or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    text = str(value).strip().upper()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    match = _ISO_DURATION.match(text)
    if not match or text in ("P", "PT"):
        raise ValueError(f"not a duration: {value!r} (use ISO 8601 like P14D, or seconds)")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return timedelta(**parts)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    """Everything a zorgbericht process can be told from its environment."""

    model_config = SettingsConfigDict(env_prefix="ZB_", extra="ignore")

    environment: Environment = Environment.development
    data_dir: Path = Path("./var")
    database_url: str | None = None
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    public_url: str = "http://localhost:8000"
    secret_key: SecretStr = SecretStr(PLACEHOLDER_SECRET)

    smtp_url: str | None = None
    mail_from: str = "no-reply@zorgbericht.invalid"
    unshared_retention: Duration = timedelta(days=2)
    pull_attempts: int = 3
    pull_retry_seconds: float = 60.0
    sms_backend: str = "file"  # file | twilio
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None  # a sender number or alphanumeric sender id
    twilio_messaging_service_sid: str | None = None  # instead of twilio_from
    twilio_api_url: str | None = None  # another base URL for Twilio's API (a local stand-in)
    twilio_timeout_seconds: float = 10.0

    dicom_ae_title: str = Field("ZORGBERICHT", max_length=16)
    dicom_host: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens for modalities on the LAN
    dicom_port: int = 11112
    dicom_max_pdu: int = 4 * 1024 * 1024
    spool_fsync: bool = True
    spool_max_bytes: int = 20 * 1024**3
    upload_threads: int = 4
    preview_processes: int = 1

    share_ttl: Duration = timedelta(days=14)
    study_quiet_seconds: float = 30.0
    daily_download_limit: int = 10
    recipient_idle: Duration = timedelta(minutes=30)
    recipient_max_age: Duration = timedelta(hours=12)
    recipient_lock: Duration = timedelta(hours=24)
    sms_code_ttl: Duration = timedelta(minutes=5)
    sms_per_day: int = 5
    # Per-address throttle on the recipient gate (open, birth date, SMS code, resend):
    # a second line of defence behind the per-share counters.
    recipient_ip_limit: int = 40
    recipient_ip_window: Duration = timedelta(minutes=15)
    worker_interval_seconds: float = 2.0
    # The audit trail is kept 5 years (NEN 7513 access logs); older events are removed.
    audit_retention: Duration = timedelta(days=AUDIT_RETENTION_MINIMUM_DAYS)
    # IHE ATNA forwarding of the trail (RFC 5424 syslog carrying DICOM PS3.15 A.5 XML):
    # unset: off; tcp://host:port; tls://host:port (RFC 5425, checked against atna_ca_file,
    # with a client certificate when atna_cert_file and atna_key_file are set).
    atna_url: str | None = None
    atna_ca_file: Path | None = None
    atna_cert_file: Path | None = None
    atna_key_file: Path | None = None
    atna_source_id: str | None = None  # AuditSourceID; default: the DICOM AE title
    atna_timeout_seconds: float = 10.0
    atna_batch: int = 500
    log_level: str = "INFO"

    @field_validator("atna_url")
    @classmethod
    def _atna_scheme(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"(tcp|tls)://[^/:]+:[0-9]{1,5}/?", value):
            raise ValueError("ZB_ATNA_URL must look like tcp://host:port or tls://host:port")
        return value or None

    @field_validator("audit_retention")
    @classmethod
    def _five_years_at_least(cls, value: timedelta) -> timedelta:
        # The database refuses to delete younger events anyway (see the audit migrations).
        if value < timedelta(days=AUDIT_RETENTION_MINIMUM_DAYS):
            raise ValueError("ZB_AUDIT_RETENTION must be at least 5 years (P1827D)")
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment is Environment.production:
            if self.secret_key.get_secret_value() in (PLACEHOLDER_SECRET, ""):
                raise ValueError("ZB_SECRET_KEY must be set to a real secret in production")
            if len(self.secret_key.get_secret_value()) < 32:
                raise ValueError("ZB_SECRET_KEY must be at least 32 characters in production")
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'zorgbericht.sqlite3').resolve()}"

    @cached_property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"
