"""A local stand-in for Twilio's Messages API, for the real ``twilio`` client to talk to.

Use the ``twilio_standin`` fixture (import it into the test module) or ``with TwilioStandIn() as
server:``; ``server.sender()`` is a ``TwilioSms`` aimed at it and ``server.settings()`` the
``ZB_*`` values that make ``make_sms`` build one.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from zorgbericht.delivery.sms import TwilioSms

SID = "AC" + "0" * 32
TOKEN = "test-token"
SENDER = "+3197010000000"
INVALID_NUMBER = "+15005550001"  # Twilio's magic "invalid number"
_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC\w+)/Messages\.json$")


@dataclass(frozen=True)
class Received:
    path: str
    user: str
    password: str
    to: str | None
    from_: str | None
    messaging_service_sid: str | None
    body: str | None
    user_agent: str


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive like Twilio, so a client that leaks sockets shows
    server: _Server

    def handle(self) -> None:
        self.server.standin.count_connection(+1)
        try:
            super().handle()
        finally:
            self.server.standin.count_connection(-1)

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        standin = self.server.standin
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        user, _, password = _basic_auth(self.headers.get("Authorization", ""))
        standin.record(
            Received(
                path=self.path,
                user=user,
                password=password,
                to=form.get("To", [None])[0],
                from_=form.get("From", [None])[0],
                messaging_service_sid=form.get("MessagingServiceSid", [None])[0],
                body=form.get("Body", [None])[0],
                user_agent=self.headers.get("User-Agent", ""),
            )
        )
        if standin.hang:
            standin.released.wait(60)  # never answer; the client must give up on its own
            return
        status, reply = standin.answer(self.path, user, password, form)
        self._reply(status, reply)

    def _reply(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: TwilioStandIn


def _basic_auth(header: str) -> tuple[str, str, str]:
    """Split ``Basic base64(user:password)``; empty parts when absent or malformed."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return "", "", ""
    try:
        return base64.b64decode(value).decode().partition(":")
    except ValueError:
        return "", "", ""


def _error(status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
    info = f"https://www.twilio.com/docs/errors/{code}"
    return status, {"code": code, "message": message, "status": status, "more_info": info}


class TwilioStandIn:
    """Answer like Twilio; ``status`` forces an error answer, ``hang`` never answers."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.open_connections = 0
        self.status: int | None = None
        self.hang = False
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> TwilioStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def count_connection(self, change: int) -> None:
        with self._lock:
            self.open_connections += change

    def record(self, request: Received) -> None:
        with self._lock:
            self.received.append(request)

    def answer(
        self, path: str, user: str, password: str, form: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        """Decide Twilio's answer to one Messages request."""
        if self.status is not None:
            return _error(self.status, 20000 + self.status, "Forced by the stand-in")
        if (user, password) != (SID, TOKEN):
            return _error(401, 20003, "Authenticate")
        match = _MESSAGES.match(path)
        if not match or match["sid"] != SID:
            return _error(404, 20404, "The requested resource was not found")
        to = form.get("To", [""])[0]
        if not form.get("Body") or not (form.get("From") or form.get("MessagingServiceSid")):
            return _error(400, 21602, "Message body and a sender are required.")
        if to == INVALID_NUMBER:
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        return 201, _message(form)

    def sender(self, **overrides: Any) -> TwilioSms:
        """A ``TwilioSms`` aimed at this stand-in."""
        values: dict[str, Any] = {
            "account_sid": SID,
            "auth_token": TOKEN,
            "from_": SENDER,
            "api_url": self.url,
            "timeout": 5,
        }
        return TwilioSms(**{**values, **overrides})

    def settings(self) -> dict[str, object]:
        """``Settings`` values (as for ``make_settings(**...)``) selecting this stand-in."""
        return {
            "sms_backend": "twilio",
            "twilio_account_sid": SID,
            "twilio_auth_token": TOKEN,
            "twilio_from": SENDER,
            "twilio_api_url": self.url,
            "twilio_timeout_seconds": 5.0,
        }


def _message(form: dict[str, list[str]]) -> dict[str, Any]:
    """Twilio's 201 reply to a queued message."""
    first = {key: values[0] for key, values in form.items()}
    sid = f"SM{uuid.uuid4().hex}"
    return {
        "sid": sid,
        "account_sid": SID,
        "to": first["To"],
        "from": first.get("From"),
        "messaging_service_sid": first.get("MessagingServiceSid"),
        "body": first["Body"],
        "status": "queued",
        "num_segments": "1",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "date_created": "Thu, 01 Jan 2024 00:00:00 +0000",
        "price": None,
        "error_code": None,
        "uri": f"/2010-04-01/Accounts/{SID}/Messages/{sid}.json",
    }


@pytest.fixture
def twilio_standin() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as server:
        yield server
