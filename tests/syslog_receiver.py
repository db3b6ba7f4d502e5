"""A strict local syslog collector for the ATNA tests: TCP or TLS, octet-counted frames.

Each connection is read as RFC 5425 / RFC 6587 frames (``MSG-LEN SP SYSLOG-MSG``) and each
frame parsed as an RFC 5424 message. Anything malformed is recorded in ``errors`` and the
connection dropped; ``check()`` (run when the fixture ends) then fails the test. Over TLS
the receiver asks for a client certificate, records its subject, and answers the sender's
close_notify with its own (RFC 5425 section 4.4).

Use the ``syslog_receiver`` fixture, a factory: ``syslog_receiver(tls=pki)`` starts one;
``syslog_pki`` makes a throw-away CA with server and client certificates (openssl CLI).
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BOM = b"\xef\xbb\xbf"
MAX_FRAME = 64 * 1024
_PRINT = rb"[\x21-\x7e]"
_HEADER = re.compile(
    rb"<(?P<pri>0|[1-9][0-9]{0,2})>(?P<version>[1-9][0-9]{0,2}) "
    rb"(?P<timestamp>-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    rb"(?:Z|[+-][0-9]{2}:[0-9]{2})) "
    rb"(?P<hostname>" + _PRINT + rb"{1,255}) (?P<app_name>" + _PRINT + rb"{1,48}) "
    rb"(?P<procid>" + _PRINT + rb"{1,128}) (?P<msgid>" + _PRINT + rb"{1,32}) "
    rb"(?P<sd>-|(?:\[[^\]\s=\x22]{1,32}(?: [^\]\s=\x22]{1,32}=\x22(?:[^\x22\\\]]|\\.)*\x22)*\])+)"
    rb"(?: (?P<msg>.*))?\Z",
    re.S,
)


class SyslogError(AssertionError):
    """A frame or message that breaks RFC 5424/5425/6587."""


@dataclass(frozen=True)
class Message:
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes  # without a BOM
    bom: bool
    peer_cn: str | None
    connection: int

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8


def parse(frame: bytes, *, peer_cn: str | None = None, connection: int = 0) -> Message:
    """Parse one SYSLOG-MSG strictly (RFC 5424 section 6); raise SyslogError if malformed."""
    match = _HEADER.match(frame)
    if match is None:
        raise SyslogError(f"not an RFC 5424 message: {frame[:120]!r}")
    if int(match["pri"]) > 191:
        raise SyslogError(f"PRI out of range: {match['pri']!r}")
    msg = match["msg"] or b""
    bom = msg.startswith(BOM)
    if bom:
        msg = msg[len(BOM) :]
        msg.decode("utf-8")  # MSG-UTF8 must be UTF-8; raises UnicodeDecodeError
    text = {k: (v or b"").decode("ascii") for k, v in match.groupdict().items() if k != "msg"}
    return Message(
        pri=int(text["pri"]),
        version=int(text["version"]),
        timestamp=text["timestamp"],
        hostname=text["hostname"],
        app_name=text["app_name"],
        procid=text["procid"],
        msgid=text["msgid"],
        structured_data=text["sd"],
        msg=msg,
        bom=bom,
        peer_cn=peer_cn,
        connection=connection,
    )


def read_frames(stream: Callable[[int], bytes]) -> Iterator[bytes]:
    """Yield octet-counted frames from ``stream`` (a recv) until a clean end between frames."""
    buffer = b""
    while True:
        while b" " not in buffer[:12]:
            if len(buffer) >= 12:
                raise SyslogError(f"no MSG-LEN SP at the start of a frame: {buffer[:12]!r}")
            chunk = stream(65536)
            if not chunk:
                if buffer:
                    raise SyslogError(f"connection ended inside a frame header: {buffer!r}")
                return
            buffer += chunk
        digits, _, buffer = buffer.partition(b" ")
        if not re.fullmatch(rb"[1-9][0-9]*", digits) or int(digits) > MAX_FRAME:
            raise SyslogError(f"bad MSG-LEN {digits[:12]!r}")
        while len(buffer) < int(digits):
            chunk = stream(65536)
            if not chunk:
                raise SyslogError(f"connection ended {int(digits) - len(buffer)} octets short")
            buffer += chunk
        yield buffer[: int(digits)]
        buffer = buffer[int(digits) :]


@dataclass
class Pki:
    """A throw-away CA, a server and a client certificate it signed, and a rogue CA's server."""

    folder: Path
    ca: Path = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)
    client_cert: Path = field(init=False)
    client_key: Path = field(init=False)
    rogue_server_cert: Path = field(init=False)
    rogue_server_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ca = self._authority("ca", "Test ATNA CA")
        self.server_cert, self.server_key = self._leaf("server", "ca", "localhost", "serverAuth")
        self.client_cert, self.client_key = self._leaf(
            "client", "ca", "zorgbericht-client", "clientAuth"
        )
        self._authority("rogue", "Rogue CA")
        self.rogue_server_cert, self.rogue_server_key = self._leaf(
            "rogue-server", "rogue", "localhost", "serverAuth"
        )

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.folder, check=True, capture_output=True)

    def _authority(self, name: str, cn: str) -> Path:
        self._openssl(
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2"),
            *("-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        )
        return self.folder / f"{name}.pem"

    def _leaf(self, name: str, ca: str, cn: str, usage: str) -> tuple[Path, Path]:
        (self.folder / f"{name}.ext").write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            f"extendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\n"
            "basicConstraints=critical,CA:FALSE\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        )
        self._openssl(
            *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}"),
        )
        self._openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key"),
            *("-CAcreateserial", "-out", f"{name}.pem", "-days", "2"),
            *("-extfile", f"{name}.ext"),
        )
        return self.folder / f"{name}.pem", self.folder / f"{name}.key"


class SyslogReceiver:
    """Listen on 127.0.0.1 (``port`` or any free one); plain TCP, or TLS with ``pki``."""

    def __init__(
        self,
        *,
        pki: Pki | None = None,
        port: int = 0,
        rogue: bool = False,
        answer_close_notify: bool = True,
        reset_after: int | None = None,
    ) -> None:
        self.answer_close_notify = answer_close_notify  # False: close as rsyslog 8.2302 does
        self.reset_after = reset_after  # reset the connection after this many frames, once
        self.messages: list[Message] = []
        self.errors: list[str] = []
        self.handshake_failures: list[str] = []
        self.closed_in_order = 0
        self._context = _server_context(pki, rogue) if pki else None
        self._lock = threading.Lock()
        self._connections = 0
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'tls' if self._context else 'tcp'}://localhost:{self.port}"

    def __enter__(self) -> SyslogReceiver:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(10)
        self._listener.close()

    def check(self) -> None:
        """Fail loudly if anything malformed arrived."""
        if self.errors:
            raise SyslogError("; ".join(self.errors))

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count or self.errors:
                    break
            time.sleep(0.02)
        self.check()
        with self._lock:
            return list(self.messages)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._connections += 1
                number = self._connections
            self._spawn(self._serve, conn, number)

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(10)
        try:
            peer_cn, conn = self._handshake(conn)
        except (ssl.SSLError, OSError) as exc:
            with self._lock:
                self.handshake_failures.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            return
        try:
            for frame in read_frames(conn.recv):
                message = parse(frame, peer_cn=peer_cn, connection=number)
                with self._lock:
                    self.messages.append(message)
                if self.reset_after is not None and len(self.messages) >= self.reset_after:
                    self.reset_after = None
                    _reset(conn)
                    return
            self._close_in_order(conn)
        except (SyslogError, UnicodeDecodeError, OSError) as exc:
            with self._lock:
                self.errors.append(f"connection {number}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def _handshake(self, conn: socket.socket) -> tuple[str | None, socket.socket]:
        if self._context is None:
            return None, conn
        tls = self._context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        subject = dict(item[0] for item in (tls.getpeercert() or {}).get("subject", ()))
        return subject.get("commonName"), tls

    def _close_in_order(self, conn: socket.socket) -> None:
        """Count an orderly end from the sender; over TLS answer its close_notify (RFC 5425 4.4)."""
        with self._lock:
            self.closed_in_order += 1
        if isinstance(conn, ssl.SSLSocket) and self.answer_close_notify:
            conn.unwrap()


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset, as a collector that crashes with data unread would."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _server_context(pki: Pki, rogue: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as IHE ATNA wants
    if rogue:
        context.load_cert_chain(str(pki.rogue_server_cert), str(pki.rogue_server_key))
    else:
        context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    return context


@pytest.fixture(scope="session")
def syslog_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def syslog_receiver() -> Iterator[Callable[..., SyslogReceiver]]:
    """A factory of started receivers; each is stopped and checked at the end of the test."""
    started: list[SyslogReceiver] = []

    def start(**options: Any) -> SyslogReceiver:
        receiver = SyslogReceiver(**options).__enter__()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()
    for receiver in started:
        receiver.check()
