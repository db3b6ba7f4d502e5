"""The SMS port without a network: the file backend, backend choice and the message text."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from zorgbericht.delivery.sms import FileSms, TwilioSms, make_sms, render_sms
from zorgbericht.settings import Settings

# GSM 03.38: the basic set counts one septet, the extension table two.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = "^{}\\[~]|€\f"


def gsm7_length(text: str) -> int:
    """Count septets; fail on a character GSM-7 cannot carry."""
    unknown = {c for c in text if c not in GSM7_BASIC and c not in GSM7_EXTENSION}
    assert not unknown, f"not GSM-7: {unknown}"
    return sum(2 if c in GSM7_EXTENSION else 1 for c in text)


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(environment="test", data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_file_sms_writes_one_json_file_with_only_to_and_body(tmp_path: Path) -> None:
    message_id = FileSms(tmp_path).send(to="+31612345678", body="Uw code is 123456.")
    (written,) = (tmp_path / "sms").iterdir()
    assert written.name == f"{message_id}.json"
    assert json.loads(written.read_text(encoding="utf-8")) == {
        "to": "+31612345678",
        "body": "Uw code is 123456.",
    }


def test_file_sms_names_are_unique_and_sort_in_sending_order(tmp_path: Path) -> None:
    sender = FileSms(tmp_path)
    ids = [sender.send(to="+31612345678", body=f"message {n}") for n in range(50)]
    assert len(set(ids)) == 50
    files = sorted((tmp_path / "sms").iterdir())
    bodies = [json.loads(f.read_text(encoding="utf-8"))["body"] for f in files]
    assert bodies == [f"message {n}" for n in range(50)]


def test_file_sms_leaves_no_temporary_file_and_replaces_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def recording_replace(src: str | Path, dst: str | Path) -> None:
        replaced.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    message_id = FileSms(tmp_path).send(to="+31612345678", body="x")
    assert replaced == [(f".{message_id}.tmp", f"{message_id}.json")]
    assert [p.name for p in (tmp_path / "sms").iterdir()] == [f"{message_id}.json"]


def test_file_sms_logs_the_file_name_but_never_the_number_or_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        message_id = FileSms(tmp_path).send(to="+31612345678", body="Uw code is 654321.")
    assert caplog.messages == [f"SMS written to {message_id}.json"]
    assert "612345678" not in caplog.text and "654321" not in caplog.text


def test_file_backend_is_the_default(tmp_path: Path) -> None:
    sender = make_sms(settings(tmp_path))
    assert isinstance(sender, FileSms)
    assert sender.folder == tmp_path / "sms"


def test_twilio_backend_is_built_from_the_settings(tmp_path: Path) -> None:
    sender = make_sms(
        settings(
            tmp_path,
            sms_backend="twilio",
            twilio_account_sid="AC123",
            twilio_auth_token="token",
            twilio_messaging_service_sid="MG123",
            twilio_api_url="http://127.0.0.1:9",
            twilio_timeout_seconds=3,
        )
    )
    assert isinstance(sender, TwilioSms)
    assert (sender.account_sid, sender.messaging_service_sid, sender.from_) == (
        "AC123",
        "MG123",
        None,
    )
    assert sender.auth_token.get_secret_value() == "token"
    assert (sender.api_url, sender.timeout) == ("http://127.0.0.1:9", 3)


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({}, "ZB_TWILIO_ACCOUNT_SID, ZB_TWILIO_AUTH_TOKEN, ZB_TWILIO_FROM or"),
        ({"twilio_account_sid": "AC1", "twilio_auth_token": ""}, "ZB_TWILIO_AUTH_TOKEN,"),
        ({"twilio_account_sid": "AC1", "twilio_auth_token": "t"}, "ZB_TWILIO_FROM or ZB_TWIL"),
        ({"twilio_auth_token": "t", "twilio_from": "+3197010000000"}, "ZB_TWILIO_ACCOUNT_SID"),
    ],
)
def test_twilio_backend_refuses_missing_settings(
    tmp_path: Path, values: dict[str, object], missing: str
) -> None:
    with pytest.raises(ValueError, match=f"needs {missing}"):
        make_sms(settings(tmp_path, sms_backend="twilio", **values))


def test_an_unknown_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be 'file' or 'twilio', not 'carrier-pigeon'"):
        make_sms(settings(tmp_path, sms_backend="carrier-pigeon"))


def test_twilio_sms_refuses_a_sender_less_or_odd_configuration() -> None:
    with pytest.raises(ValueError, match="sender number or a messaging service"):
        TwilioSms("AC1", "token")
    with pytest.raises(ValueError, match="API URL"):
        TwilioSms("AC1", "token", from_="+3197010000000", api_url="127.0.0.1:8080")


@pytest.mark.parametrize("language", ["nl", "en"])
@pytest.mark.parametrize("minutes", [1, 5, 15])
def test_sms_text_fits_one_gsm7_segment_and_holds_only_the_code_and_minutes(
    language: str, minutes: int
) -> None:
    text = render_sms(language=language, code="987654", minutes=minutes)
    assert gsm7_length(text) <= 160
    assert re.findall(r"\d+", text) == ["987654", str(minutes)]
    assert text == text.strip() and "\n" not in text


def test_sms_text_speaks_the_recipients_language() -> None:
    assert render_sms(language="nl", code="123456", minutes=5) == (
        "Uw code voor het bekijken van de beelden is 123456. De code is 5 minuten geldig. "
        "Deel deze code met niemand."
    )
    assert render_sms(language="en", code="123456", minutes=5) == (
        "Your code to view the images is 123456. The code is valid for 5 minutes. "
        "Do not share this code with anyone."
    )
