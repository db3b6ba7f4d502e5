"""Share API bodies (DESIGN §8)."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from zorgbericht.shares.contact import email_address, mobile_e164

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class ShareIn(BaseModel):
    study_uids: list[str] = Field(
        min_length=1, max_length=100, description="Study Instance UIDs, all of one patient"
    )
    recipient: Literal["patient", "provider"]
    delivery: Literal["email", "letter", "url"] = "email"
    email: str | None = Field(None, description="required for delivery `email`")
    phone: str = Field(description="mobile number for the SMS code; Dutch without +31 is fine")
    language: Literal["nl", "en"] | None = Field(
        None, description="of the email, letter and SMS; default: the institution's language"
    )
    birth_date: date | None = Field(None, description="must match the studies when given")

    @field_validator("study_uids")
    @classmethod
    def _uids(cls, value: list[str]) -> list[str]:
        cleaned = [uid.strip() for uid in value]
        for uid in cleaned:
            if len(uid) > 64 or not _UID.match(uid):
                raise ValueError(f"{uid[:70]!r} is not a DICOM UID")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("a study is listed twice")
        return cleaned

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str) -> str:
        return mobile_e164(value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return email_address(value) if value else None

    @model_validator(mode="after")
    def _email_for_email_delivery(self) -> ShareIn:
        if self.delivery == "email" and not self.email:
            raise ValueError("delivery 'email' needs an email address")
        return self


class ShareOut(BaseModel):
    id: int
    state: str
    recipient: str
    delivery: str
    language: str
    study_uids: list[str]
    created_at: datetime
    ready_at: datetime | None
    expires_at: datetime
    downloads_today: int = 0
    failed_reason: str | None = None
    url: str | None = Field(None, description="only for delivery url and letter, only at creation")
    letter_url: str | None = None
