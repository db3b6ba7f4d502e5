"""Domain errors carry their HTTP status; one handler turns them into responses."""

from __future__ import annotations


class DomainError(Exception):
    status_code = 400
    # A refusal whose bookkeeping must survive it (a failure counted, a lock set, an
    # audit event written): the request's transaction is committed, not rolled back.
    keep_changes = False

    def __init__(
        self, detail: str, *, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class Invalid(DomainError):
    status_code = 422


class Unauthorized(DomainError):
    status_code = 401


class Refusal(DomainError):
    """A counted refusal: the failure counters and the audit trail keep what happened."""

    keep_changes = True


class WrongAnswer(Refusal):
    status_code = 400


class Locked(Refusal):
    status_code = 423


class Gone(Refusal):
    status_code = 410


class TooMany(Refusal):
    status_code = 429


class Unavailable(Refusal):
    status_code = 503


class Forbidden(DomainError):
    status_code = 403


class Unreadable(DomainError):
    status_code = 422
