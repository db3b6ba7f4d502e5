"""The real ``twilio`` client against a local stand-in of Twilio's API: accepted, refused, down."""

from __future__ import annotations

import gc
import logging
import time
import warnings
from pathlib import Path

import pytest

from tests.twilio_standin import INVALID_NUMBER, SENDER, SID, TOKEN, TwilioStandIn
from zorgbericht.delivery.sms import SmsRejected, SmsUnavailable, TwilioSms, make_sms
from zorgbericht.settings import Settings

NUMBER = "+31612345678"
TEXT = "Uw code is 246810."


def assert_private(caplog: pytest.LogCaptureFixture) -> None:
    assert "612345678" not in caplog.text and "246810" not in caplog.text


def test_accepted_message_returns_twilios_sid_and_reaches_the_api(
    twilio_standin: TwilioStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        message_id = twilio_standin.sender().send(to=NUMBER, body=TEXT)
    (seen,) = twilio_standin.received
    assert message_id.startswith("SM") and len(message_id) == 34
    assert seen.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert (seen.user, seen.password) == (SID, TOKEN)
    assert (seen.to, seen.from_, seen.body) == (NUMBER, SENDER, TEXT)
    assert seen.user_agent.startswith("twilio-python/")
    assert_private(caplog)


def test_a_messaging_service_sends_without_a_from_number(twilio_standin: TwilioStandIn) -> None:
    twilio_standin.sender(from_=None, messaging_service_sid="MG" + "2" * 32).send(
        to=NUMBER, body=TEXT
    )
    (seen,) = twilio_standin.received
    assert (seen.from_, seen.messaging_service_sid) == (None, "MG" + "2" * 32)


def test_settings_select_twilio_aimed_at_the_stand_in(
    twilio_standin: TwilioStandIn, tmp_path: Path
) -> None:
    values = {"environment": "test", "data_dir": tmp_path, **twilio_standin.settings()}
    make_sms(Settings(**values)).send(to=NUMBER, body=TEXT)  # type: ignore[arg-type]
    assert [r.to for r in twilio_standin.received] == [NUMBER]


def test_an_invalid_number_is_rejected_for_good(
    twilio_standin: TwilioStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SmsRejected, match="400 code 21211") as raised:
        twilio_standin.sender().send(to=INVALID_NUMBER, body=TEXT)
    # Twilio's own message quotes the number: it must not travel with ours.
    assert "5005550001" not in str(raised.value) and raised.value.__cause__ is None
    assert raised.value.__suppress_context__


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_failing_provider_is_unavailable(twilio_standin: TwilioStandIn, status: int) -> None:
    twilio_standin.status = status
    with pytest.raises(SmsUnavailable, match=f"HTTP {status}"):
        twilio_standin.sender().send(to=NUMBER, body=TEXT)


def test_a_hanging_provider_is_unavailable_within_the_timeout(
    twilio_standin: TwilioStandIn,
) -> None:
    twilio_standin.hang = True
    started = time.monotonic()
    with pytest.raises(SmsUnavailable, match="Timeout"):
        twilio_standin.sender(timeout=0.5).send(to=NUMBER, body=TEXT)
    assert time.monotonic() - started < 3
    assert len(twilio_standin.received) == 1


def test_an_unreachable_provider_is_unavailable() -> None:
    with TwilioStandIn() as gone:
        url = gone.url
    sender = TwilioSms(SID, TOKEN, from_=SENDER, api_url=url, timeout=2)
    with pytest.raises(SmsUnavailable, match="ConnectionError"):
        sender.send(to=NUMBER, body=TEXT)


def test_a_wrong_token_is_an_operator_problem_logged_without_number_or_text(
    twilio_standin: TwilioStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(SmsUnavailable, match="401 code 20003"):
        twilio_standin.sender(auth_token="wrong").send(to=NUMBER, body=TEXT)
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "ZB_TWILIO_" in error.getMessage() and "401" in error.getMessage()
    assert_private(caplog)
    assert "wrong" not in caplog.text


def test_a_wrong_account_sid_is_an_operator_problem(twilio_standin: TwilioStandIn) -> None:
    with pytest.raises(SmsUnavailable, match="configuration"):
        twilio_standin.sender(account_sid="AC" + "9" * 32).send(to=NUMBER, body=TEXT)


def test_sending_closes_its_connections_and_leaks_no_socket(
    twilio_standin: TwilioStandIn,
) -> None:
    sender = twilio_standin.sender()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        sender.send(to=NUMBER, body=TEXT)
        with pytest.raises(SmsRejected):
            sender.send(to=INVALID_NUMBER, body=TEXT)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    deadline = time.monotonic() + 2
    while twilio_standin.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert twilio_standin.open_connections == 0  # closed by us, not left to the collector
