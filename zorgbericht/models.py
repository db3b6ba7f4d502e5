"""Every table, imported in one place for Alembic and for create-on-start."""

from zorgbericht.audit.models import AuditEvent, AuditHead
from zorgbericht.db import Base
from zorgbericht.staging.models import Instance, Series, Study
from zorgbericht.tenants.models import ApiKey, StaffUser, Tenant, TenantAETitle

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "Base",
    "Instance",
    "Series",
    "StaffUser",
    "Study",
    "Tenant",
    "TenantAETitle",
]
