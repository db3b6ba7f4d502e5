"""The trail and the share in words for the admin pages: times, actors, events, masks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from zorgbericht.audit.models import AuditEvent
from zorgbericht.delivery.service import AMSTERDAM
from zorgbericht.shares.models import Share

DOT = "\u2022"
# Detail values that say nothing to a reader of the timeline.
_QUIET_DETAILS = frozenset({"outbox_id", "template", "page", "series"})
# Details whose values have words of their own: the key and the prefix of those texts.
_NAMED_VALUES = {"recipient": "admin_to_", "delivery": "admin_delivery_", "language": "lang_"}
_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def mask_email(email: str | None) -> str | None:
    """``jan@example.nl`` as ``j•••@example.nl``: enough to recognise, not to copy."""
    if not email:
        return None
    local, _, domain = email.partition("@")
    return f"{local[:1]}{DOT * 3}@{domain}"


def mask_phone(phone: str | None) -> str | None:
    """A phone number as its last two digits, like the email to the recipient says it."""
    if not phone:
        return None
    return f"{DOT * 4} {phone[-2:]}"


@dataclass(frozen=True)
class Words:
    """Bound to one page's texts and the tenant's staff and API keys."""

    t: dict[str, str]
    people: dict[str, tuple[str, str]]

    def when(self, moment: datetime | None, seconds: bool = False) -> str:
        """A moment in Amsterdam time as ``31-12-2026 14:05``."""
        if moment is None:
            return "\u2013"
        local = moment.astimezone(AMSTERDAM)
        return local.strftime("%d-%m-%Y %H:%M:%S" if seconds else "%d-%m-%Y %H:%M")

    def person(self, ref: str | None) -> str:
        """A creator or actor id (``staff:3``, ``apikey:2``) by name."""
        kind, _, number = (ref or "").partition(":")
        known = self.people.get(ref or "")
        if kind == "apikey":
            return self.t["actor_apikey"].format(name=known[1] if known else f"#{number}")
        if kind == "staff":
            return known[1] if known else self.t["actor_staff"].format(id=number)
        return self.t.get("actor_" + kind, ref or "\u2013")

    def actor(self, event: AuditEvent) -> str:
        """Who acted, in words."""
        if event.actor_kind in ("staff", "apikey") and event.actor_id:
            return self.person(event.actor_id)
        if event.actor_kind == "recipient":
            session = (event.actor_id or "").rpartition(":")[2]
            who = self.t.get(f"admin_to_{event.on_behalf_of}", self.t["admin_recipient"])
            if not session:
                return who
            return self.t["actor_recipient"].format(who=who, id=session)
        if event.actor_kind == "system":
            return self.t["actor_system"]
        label = self.t.get("actor_" + event.actor_kind, event.actor_kind)
        return f"{label} {event.actor_id}" if event.actor_id else label

    def lock_reason(self, share: Share) -> str:
        """What locked the share: the latest kind of failure."""
        dob, sms = share.dob_failed_at, share.sms_failed_at
        by_dob = dob is not None and (sms is None or dob >= sms)
        return self.t["admin_locked_by_dob" if by_dob else "admin_locked_by_sms"]

    def event(self, name: str) -> str:
        return self.t.get("ev_" + name, name)

    def outcome(self, value: int) -> str:
        return self.t.get(f"outcome_{value}", str(value))

    def details(self, event: AuditEvent) -> str:
        """The event's details as ``key: value`` pairs (the trail never holds secrets)."""
        pairs = [
            f"{self.t.get('detail_' + key, key)}: {self._value(key, value)}"
            for key, value in sorted((event.details or {}).items())
            if key not in _QUIET_DETAILS and value not in (None, "", [], {})
        ]
        return " \u00b7 ".join(pairs)

    def _value(self, key: str, value: object) -> str:
        named = _NAMED_VALUES.get(key)
        if named and f"{named}{value}" in self.t:
            return self.t[f"{named}{value}"]
        if isinstance(value, bool):
            return self.t["admin_yes" if value else "admin_no"]
        if isinstance(value, str) and _MOMENT.match(value):
            try:
                return self.when(datetime.fromisoformat(value))
            except ValueError:
                return value
        return str(value)
