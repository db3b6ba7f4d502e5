"""The Mailer port: write .eml files (embedded default) or send through an SMTP relay."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit


class MailerUnavailable(RuntimeError):
    """The relay could not take the message now; the outbox tries again later."""


class Mailer(Protocol):
    """Hand one message to the mail system.

    Returns only once the relay (or the folder) has accepted it; raises
    ``MailerUnavailable`` for anything that a later attempt may fix.
    """

    def send(self, message: EmailMessage) -> None: ...


class FileMailer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, message: EmailMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = message["Message-ID"].strip("<>").split("@")[0]
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(bytes(message))
        tmp.replace(self.folder / f"{name}.eml")


class SmtpMailer:
    """``smtp://[user:password@]host[:port][?starttls=true]`` or ``smtps://...``."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("ZB_SMTP_URL must look like smtp://host:port or smtps://host:port")
        self.secure = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.secure else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = parse_qs(parts.query).get("starttls", ["false"])[0] == "true"
        self.timeout = timeout

    def send(self, message: EmailMessage) -> None:
        try:
            with self._connect() as client:
                if self.user and self.password:
                    client.login(self.user, self.password)
                client.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise MailerUnavailable(_describe(exc)) from exc

    def _connect(self) -> smtplib.SMTP:
        if self.secure:
            return smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.starttls:
            client.starttls(context=ssl.create_default_context())
        return client


def _describe(exc: Exception) -> str:
    """A short reason without addresses (they are recipients' data)."""
    code = getattr(exc, "smtp_code", None)
    return f"{type(exc).__name__}{f' {code}' if code else ''}"


def make_mailer(smtp_url: str | None, data_dir: Path) -> Mailer:
    return SmtpMailer(smtp_url) if smtp_url else FileMailer(data_dir / "mail")
