"""Domain errors raised by serving code. They know nothing of gRPC: `grpc_errors` maps each class to a
status code at the edge (INVALID_ARGUMENT, UNAVAILABLE, ...), named here in `status` for that mapping."""

from __future__ import annotations


class ServingError(Exception):
    """Unexpected failure inside a service (an INTERNAL error)."""

    status = "INTERNAL"


class InvalidInput(ServingError):
    """The request is malformed: wrong shape or dtype, empty, NaN/Inf, garbage bytes."""

    status = "INVALID_ARGUMENT"


class NotFound(ServingError):
    """The request names a model (or other entity) this service does not have."""

    status = "NOT_FOUND"


class Overloaded(ServingError):
    """A bounded queue or size limit is exceeded; the caller may retry later or send less."""

    status = "RESOURCE_EXHAUSTED"


class Unavailable(ServingError):
    """A dependency or this service cannot answer now (down, not ready, injected failure)."""

    status = "UNAVAILABLE"


class PermissionDenied(ServingError):
    """The call is known but this service is not set up to allow it (e.g. an admin RPC switched off)."""

    status = "PERMISSION_DENIED"


class DeadlineExceeded(ServingError):
    """The answer could not be produced before the caller's deadline."""

    status = "DEADLINE_EXCEEDED"


class Cancelled(ServingError):
    """The caller withdrew the request (e.g. a straggling batch that was decoded instead)."""

    status = "CANCELLED"


class ConfigError(ValueError):
    """A setting (env var or CLI flag) is invalid; the message names the setting."""


QUOTE_LIMIT = 128  # characters of a client-supplied string that an error message repeats


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` for an error message: repr'd and cut to `limit` characters, so that a huge name sent by a
    client cannot blow an error message past gRPC's metadata limit."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"
