"""Create institutions, staff and API keys; resolve callers to their tenant."""

from __future__ import annotations

import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.db import utcnow
from zorgbericht.errors import Conflict, Invalid, NotFound
from zorgbericht.tenants.models import ApiKey, StaffUser, Tenant, TenantAETitle

# OWASP password storage cheat sheet: argon2id, m=19 MiB, t=2, p=1.
PASSWORDS = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
ROLES = ("staff", "admin")
_AE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PACS = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


def normalise_ae(title: str) -> str:
    """Validate a DICOM AE title (1-16 printable characters, no backslash)."""
    title = title.strip()
    if not _AE.match(title):
        raise Invalid(f"AE title {title!r} must be 1-16 printable characters without '\\'")
    return title


def parse_pacs(spec: str) -> tuple[str, str, int]:
    """Parse ``AET@HOST:PORT``."""
    match = _PACS.match(spec.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise Invalid(f"PACS {spec!r} must look like AET@HOST:PORT")
    return normalise_ae(match["ae"]), match["host"], int(match["port"])


def create_tenant(
    *,
    session: Session,
    slug: str,
    name: str,
    ae_titles: list[str],
    pacs: str | None = None,
    language: str = "nl",
) -> Tenant:
    """Create an institution with the AE titles allowed to send to us."""
    if not _SLUG.match(slug):
        raise Invalid("slug must be lower-case letters, digits and '-', at most 63 characters")
    if session.scalar(select(Tenant.id).where(Tenant.slug == slug)):
        raise Conflict(f"tenant {slug!r} exists already")
    titles = sorted({normalise_ae(t) for t in ae_titles})
    taken = session.scalars(
        select(TenantAETitle.ae_title).where(TenantAETitle.ae_title.in_(titles))
    )
    if clash := list(taken):
        raise Conflict(f"AE title(s) {', '.join(clash)} already belong to another tenant")
    pacs_ae, pacs_host, pacs_port = parse_pacs(pacs) if pacs else (None, None, None)
    tenant = Tenant(
        slug=slug,
        name=name,
        default_language=language,
        pacs_ae_title=pacs_ae,
        pacs_host=pacs_host,
        pacs_port=pacs_port,
        launch_secret=secrets.token_urlsafe(32),
        ae_titles=[TenantAETitle(ae_title=t) for t in titles],
    )
    session.add(tenant)
    session.flush()
    audit.record(
        session=session,
        event=audit.Ev.tenant_created,
        actor=audit.SYSTEM,
        tenant_id=tenant.id,
        details={"slug": slug, "ae_titles": titles},
    )
    return tenant


def get_tenant(*, session: Session, slug: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"no tenant {slug!r}")
    return tenant


def tenant_for_ae(*, session: Session, ae_title: str) -> Tenant | None:
    """The tenant a calling AE title belongs to, or None when it is unknown."""
    return session.scalar(
        select(Tenant).join(TenantAETitle).where(TenantAETitle.ae_title == ae_title.strip())
    )


def create_user(
    *, session: Session, tenant: Tenant, email: str, password: str, role: str, name: str = ""
) -> StaffUser:
    """Create a staff account with an argon2id password hash."""
    email = email.strip().lower()
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    if "@" not in email or len(email) > 320:
        raise Invalid("a staff account needs a valid email address")
    if len(password) < 12:
        raise Invalid("the password must be at least 12 characters")
    if session.scalar(select(StaffUser.id).where(StaffUser.email == email)):
        raise Conflict("a staff account with this email exists already")
    user = StaffUser(
        tenant_id=tenant.id,
        email=email,
        name=name,
        password_hash=PASSWORDS.hash(password),
        role=role,
    )
    session.add(user)
    session.flush()
    audit.record(
        session=session,
        event=audit.Ev.staff_created,
        actor=audit.SYSTEM,
        tenant_id=tenant.id,
        details={"user_id": user.id, "role": role},
    )
    return user


def check_password(user: StaffUser, password: str) -> bool:
    try:
        return PASSWORDS.verify(user.password_hash, password)
    except VerificationError:
        return False


def _key_hash(key: str) -> str:
    # API keys carry 256 random bits: a plain hash is enough, no slow KDF needed.
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(*, session: Session, tenant: Tenant, label: str = "") -> tuple[str, ApiKey]:
    """Create an API key; the clear key is returned once and never stored."""
    prefix = secrets.token_hex(4)
    key = f"zb_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=_key_hash(key), label=label)
    session.add(row)
    session.flush()
    audit.record(
        session=session,
        event=audit.Ev.apikey_created,
        actor=audit.SYSTEM,
        tenant_id=tenant.id,
        details={"api_key_id": row.id, "prefix": prefix, "label": label},
    )
    return key, row


def tenant_for_api_key(*, session: Session, key: str) -> tuple[Tenant, ApiKey] | None:
    """Resolve a presented API key, or None when it is unknown or revoked."""
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == _key_hash(key), ApiKey.revoked_at.is_(None))
    )
    if row is None:
        return None
    tenant = session.get(Tenant, row.tenant_id)
    assert tenant is not None
    return tenant, row


def revoke_api_key(*, session: Session, api_key: ApiKey) -> None:
    api_key.revoked_at = utcnow()
