"""Share emails through a real SMTP server (aiosmtpd): relay outages delay, never lose or double."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import select

from infra.peers import free_port
from tests.integration.test_shares import body, events, stage
from zorgbericht import worker
from zorgbericht.app import create_app
from zorgbericht.db import transaction, utcnow
from zorgbericht.delivery.mailer import SmtpMailer
from zorgbericht.delivery.models import OutboxMessage
from zorgbericht.runtime import Runtime
from zorgbericht.tenants import service as tenants

pytestmark = pytest.mark.peers


class Relay:
    """An SMTP server that answers 451 (try again later) to the first ``refuse`` messages."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.received: list[email.message.EmailMessage] = []
        self.refused = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        if self.refused < self.refuse:
            self.refused += 1
            return "451 4.3.0 Mail server temporarily unavailable"
        self.received.append(
            email.message_from_bytes(
                envelope.original_content or envelope.content, policy=email.policy.default
            )
        )
        return "250 OK"


@pytest.fixture
def relay() -> Iterator[tuple[Relay, int]]:
    handler, port = Relay(refuse=3), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def _api(rt: Runtime) -> TestClient:
    with transaction(rt.sessions) as db:
        key = tenants.create_api_key(
            session=db, tenant=tenants.get_tenant(session=db, slug="acme")
        )[0]
    client = TestClient(create_app(runtime=rt))
    client.headers["Authorization"] = f"Bearer {key}"
    return client


def _outbox(rt: Runtime) -> OutboxMessage:
    with rt.sessions() as db:
        return db.scalar(select(OutboxMessage))


def test_a_refusing_relay_delays_the_mail_which_then_arrives_exactly_once(
    runtime: Runtime, tenant_id: int, relay: tuple[Relay, int], tmp_path: Path
) -> None:
    handler, port = relay
    runtime.settings.public_url = "https://zb.example"
    runtime.mailer = SmtpMailer(f"smtp://127.0.0.1:{port}")
    uid = stage(runtime, tenant_id, tmp_path / "s")
    with _api(runtime) as api:
        share = api.post(
            "/api/v1/shares", json=body([uid], delivery="email", email="patient@example.nl")
        ).json()
    assert share["state"] == "ready"
    moment = utcnow()
    for attempt in range(1, 4):  # the relay answers 451 three times
        worker.run_once(runtime, now=moment)
        message = _outbox(runtime)
        assert (message.state, message.attempts) == ("pending", attempt)
        assert message.last_error == "SMTPDataError 451" and not handler.received
        worker.run_once(runtime, now=moment)  # not due again yet: nothing is tried
        assert _outbox(runtime).attempts == attempt
        moment = message.next_attempt_at
    worker.run_once(runtime, now=moment)
    for later in range(3):
        worker.run_once(runtime, now=moment + timedelta(hours=later + 1))
    assert len(handler.received) == 1
    mail = handler.received[0]
    assert mail["To"] == "patient@example.nl" and "https://zb.example/?code=" in str(
        mail.get_body(("plain",)).get_content()
    )
    assert _outbox(runtime).state == "sent" and _outbox(runtime).attempts == 4
    trail = [(e.event, e.outcome, e.details.get("reason")) for e in events(runtime, share["id"])]
    mail_events = [t for t in trail if t[0].startswith("mail.")]
    assert mail_events == [
        ("mail.queued", 0, None),
        *[("mail.failed", 4, "SMTPDataError 451")] * 3,
        ("mail.sent", 0, None),
    ]


def test_no_relay_at_all_keeps_the_mail_for_later(
    runtime: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    runtime.mailer = SmtpMailer(f"smtp://127.0.0.1:{free_port()}", timeout=2)
    uid = stage(runtime, tenant_id, tmp_path / "s")
    with _api(runtime) as api:
        api.post("/api/v1/shares", json=body([uid], delivery="email", email="gp@example.nl"))
    worker.run_once(runtime)
    message = _outbox(runtime)
    assert message.state == "pending" and message.attempts == 1
    assert message.last_error == "ConnectionRefusedError" and message.body_text
    assert message.next_attempt_at > utcnow()
