"""Every table, imported in one place for Alembic and for create-on-start."""

from zorgbericht.audit.models import AuditEvent, AuditHead
from zorgbericht.db import Base
from zorgbericht.delivery.models import OutboxMessage
from zorgbericht.recipients.models import (
    CodeProbe,
    Download,
    RecipientSession,
    SeriesView,
    SmsChallenge,
    ThrottleWindow,
)
from zorgbericht.shares.models import PullJob, Share, ShareStudy
from zorgbericht.staging.models import Instance, Series, Study
from zorgbericht.tenants.models import ApiKey, StaffUser, Tenant, TenantAETitle

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "Base",
    "CodeProbe",
    "Download",
    "Instance",
    "OutboxMessage",
    "PullJob",
    "RecipientSession",
    "Series",
    "SeriesView",
    "Share",
    "ShareStudy",
    "SmsChallenge",
    "StaffUser",
    "Study",
    "Tenant",
    "TenantAETitle",
    "ThrottleWindow",
]
