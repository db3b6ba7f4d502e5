"""The Dutch citizen service number (BSN): recognise it, and never keep more than its tail."""

from __future__ import annotations


def is_valid_bsn(value: str) -> bool:
    """The BSN 11-check (elfproef) on 8 or 9 ASCII digits."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) not in (8, 9):
        return False
    digits = digits.zfill(9)
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True))
    return (total - int(digits[8])) % 11 == 0 and digits != "000000000"


def masked(value: str) -> str:
    """What may be shown or kept of a BSN: its last three digits."""
    return f"******{value.strip()[-3:]}"
