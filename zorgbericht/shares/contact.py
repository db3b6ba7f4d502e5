"""Validate the recipient's mobile number and email address."""

from __future__ import annotations

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

# EU member states plus the EEA (Iceland, Liechtenstein, Norway).
EU_EEA = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
        "IS",
        "LI",
        "NO",
    ]
)
_MOBILE = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)


def mobile_e164(text: str) -> str:
    """Parse a mobile number: Dutch without +31 is fine, others need their country code.

    Raises ``ValueError`` with a message staff can act on.
    """
    cleaned = text.strip()
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    try:
        number = phonenumbers.parse(cleaned, None if cleaned.startswith("+") else "NL")
    except NumberParseException:
        raise ValueError("not a phone number; use 06 12345678 or +32 470 12 34 56") from None
    if not phonenumbers.is_valid_number(number):
        hint = "" if cleaned.startswith("+") else " (a foreign number needs its country code)"
        raise ValueError(f"not a valid mobile number{hint}")
    region = phonenumbers.region_code_for_number(number)
    if region not in EU_EEA:
        raise ValueError("only mobile numbers from the EU or EEA can receive the SMS code")
    if phonenumbers.number_type(number) not in _MOBILE:
        raise ValueError("this is not a mobile number; the SMS code needs a mobile phone")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def email_address(text: str) -> str:
    """Normalise an email address; raise ``ValueError`` saying what is wrong."""
    try:
        return validate_email(text.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
