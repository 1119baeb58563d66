"""Domain errors raised by operations; each surface maps them once.

OperationError            base: `code` (stable, machine-readable) and a human message
├── NotFoundError         the target does not exist (REST 404)
├── ConflictError         the target's state forbids the action (REST 409)
│   ├── NotRetryableError       the DLQ entry is not active
│   ├── ConfigurationGoneError  the endpoint or its configuration was deleted
│   └── AlreadyInFlightError    a retry for the entry is already queued or running
├── ValidationError       bad input, naming the field and the rule (REST 422)
└── PermissionDeniedError the actor's role does not allow the action (REST 403)
"""

from __future__ import annotations

from typing import Any


class OperationError(Exception):
    code = "operation_error"
    status = 400

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class NotFoundError(OperationError):
    code = "not_found"
    status = 404


class ConflictError(OperationError):
    code = "conflict"
    status = 409


class NotRetryableError(ConflictError):
    code = "not_retryable"


class ConfigurationGoneError(ConflictError):
    code = "configuration_gone"


class AlreadyInFlightError(ConflictError):
    code = "already_in_flight"


class ValidationError(OperationError):
    code = "validation_error"
    status = 422


class PermissionDeniedError(OperationError):
    code = "forbidden"
    status = 403
