"""Link codes: 12 Crockford base32 characters (60 bits) shown as XXXX-XXXX-XXXX."""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_code() -> str:
    """A fresh random code from ``secrets``, grouped for reading aloud."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def normalise(text: str) -> str | None:
    """The canonical form of a typed code (case, dashes, O/I/L look-alikes), or None."""
    raw = text.upper().replace("-", "").replace(" ", "").translate(_READ_AS)
    if len(raw) != 12 or any(ch not in ALPHABET for ch in raw):
        return None
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def code_hmac(code: str, secret: str) -> str:
    """What the database keeps instead of the code."""
    key = hashlib.sha256(b"zorgbericht link code\0" + secret.encode()).digest()
    return hmac.new(key, code.encode(), hashlib.sha256).hexdigest()


def share_url(public_url: str, code: str) -> str:
    return f"{public_url.rstrip('/')}/?code={code}"
