"""The SmsSender port: write JSON files (embedded default) or send through Twilio."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests
from pydantic import SecretStr
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from zorgbericht.delivery.templates import _environment
from zorgbericht.settings import Settings

log = logging.getLogger(__name__)

# Twilio error codes that mean our account or sender is misconfigured, not the recipient's number:
# authentication, unknown account, invalid or unusable sender, messaging service, geo permissions.
OPERATOR_ERRORS = frozenset({20003, 20404, 21212, 21408, 21606, 21659, 21660, 21701, 21703, 21704})


class SmsError(RuntimeError):
    """The message was not accepted; the reason never carries the number or the text."""


class SmsUnavailable(SmsError):
    """The provider could not take the message now; the caller may try again later."""


class SmsRejected(SmsError):
    """The provider refused this message for good (e.g. the number is invalid)."""


class SmsSender(Protocol):
    """Hand one text message to the SMS provider.

    ``to`` is an E.164 number; the return value is the provider's message id. Returns only once
    the provider (or the folder) has accepted the message. Raises ``SmsUnavailable`` when the
    provider cannot be reached or fails transiently (5xx, 429, timeout) and also when it refuses
    our own configuration (wrong token, unknown account, unusable sender): that is an operator
    problem, logged as such, and a retry after the fix will succeed. Raises ``SmsRejected`` when
    the provider refuses this message for good (invalid or unreachable number); retrying is
    pointless. Neither the number nor the text (it carries a code) ever reaches a log or an
    exception message.
    """

    def send(self, *, to: str, body: str) -> str: ...


class FileSms:
    """One JSON file per message in ``<data_dir>/sms/``, named so that they sort by time."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "sms"

    def send(self, *, to: str, body: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(json.dumps({"to": to, "body": body}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.folder / f"{name}.json")
        log.info("SMS written to %s.json", name)
        return name


class _TwilioHttp(TwilioHttpClient):
    """Twilio's HTTP client, optionally aimed at another base URL, logging no headers."""

    def __init__(self, api_url: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base = urlsplit(api_url) if api_url else None

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if self.base:
            parts = urlsplit(url)
            path = self.base.path.rstrip("/") + parts.path
            url = urlunsplit((self.base.scheme, self.base.netloc, path, parts.query, ""))
        return super().request(method, url, *args, **kwargs)

    # The stock client logs every request and response at INFO; ours says enough on failure.
    def log_request(self, kwargs: dict[str, Any]) -> None:
        log.debug("Twilio API %s %s", kwargs["method"], urlsplit(kwargs["url"]).path)

    def log_response(self, status_code: int, response: Any) -> None:
        log.debug("Twilio API answered %s", status_code)


class TwilioSms:
    """Send through Twilio's Messages API (or a stand-in at ``api_url``)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str | SecretStr,
        from_: str | None = None,
        messaging_service_sid: str | None = None,
        api_url: str | None = None,
        timeout: float = 10,
    ) -> None:
        if not (from_ or messaging_service_sid):
            raise ValueError("Twilio needs a sender number or a messaging service sid")
        if api_url and urlsplit(api_url).scheme not in ("http", "https"):
            raise ValueError("the Twilio API URL must look like https://host[:port]")
        self.account_sid = account_sid
        self.auth_token = SecretStr(auth_token) if isinstance(auth_token, str) else auth_token
        self.from_ = from_
        self.messaging_service_sid = messaging_service_sid
        self.api_url = api_url
        self.timeout = timeout

    def send(self, *, to: str, body: str) -> str:
        sender: dict[str, str] = {}
        if self.from_:
            sender["from_"] = self.from_
        if self.messaging_service_sid:
            sender["messaging_service_sid"] = self.messaging_service_sid
        # A fresh session per message: nothing to close at shutdown, safe across worker threads,
        # and a handful of SMS per share never needs a warm connection pool.
        http = _TwilioHttp(self.api_url, self.timeout)
        client = Client(self.account_sid, self.auth_token.get_secret_value(), http_client=http)
        try:
            message = client.messages.create(to=to, body=body, **sender)
        except TwilioException as exc:
            # Not chained: Twilio's message may quote the number.
            raise _classify(exc) from None
        except (requests.RequestException, ValueError) as exc:
            raise SmsUnavailable(f"Twilio unreachable or garbled: {type(exc).__name__}") from exc
        finally:
            if http.session is not None:
                http.session.close()
        if not message.sid:
            raise SmsUnavailable("Twilio answered without a message sid")
        return message.sid


def _classify(exc: TwilioException) -> SmsError:
    """Turn a Twilio error answer into unavailable (retry, or operator) or rejected (for good)."""
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    reason = f"Twilio HTTP {status} code {code}"
    if status in (401, 403, 404) or code in OPERATOR_ERRORS:
        log.error("%s: Twilio refuses our configuration; check the ZB_TWILIO_* settings", reason)
        return SmsUnavailable(f"{reason} (configuration)")
    if status is None or status == 429 or status >= 500:
        return SmsUnavailable(reason)
    return SmsRejected(reason)


def make_sms(settings: Settings) -> SmsSender:
    """Pick the SMS backend named by ``ZB_SMS_BACKEND``."""
    if settings.sms_backend == "file":
        return FileSms(settings.data_dir)
    if settings.sms_backend == "twilio":
        return _twilio_sms(settings)
    raise ValueError(f"ZB_SMS_BACKEND must be 'file' or 'twilio', not {settings.sms_backend!r}")


def _twilio_sms(settings: Settings) -> TwilioSms:
    """Build the Twilio backend, naming every setting it still lacks."""
    sid = settings.twilio_account_sid
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    missing = [
        name
        for name, value in (
            ("ZB_TWILIO_ACCOUNT_SID", sid),
            ("ZB_TWILIO_AUTH_TOKEN", token),
            (
                "ZB_TWILIO_FROM or ZB_TWILIO_MESSAGING_SERVICE_SID",
                settings.twilio_from or settings.twilio_messaging_service_sid,
            ),
        )
        if not value
    ]
    if missing or not sid:
        raise ValueError(f"ZB_SMS_BACKEND=twilio needs {', '.join(missing)}")
    return TwilioSms(
        sid,
        token,
        from_=settings.twilio_from,
        messaging_service_sid=settings.twilio_messaging_service_sid,
        api_url=settings.twilio_api_url,
        timeout=settings.twilio_timeout_seconds,
    )


def render_sms(*, language: str, code: str, minutes: int) -> str:
    """Render the SMS code message in ``language``."""
    template = _environment().get_template(f"sms/{language}/body.txt")
    return template.render(code=code, minutes=minutes).strip()
