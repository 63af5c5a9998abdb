"""Domain errors raised by serving code. They know nothing of gRPC: the interceptor in
`coded_invnet.rpc.grpc_errors` holds the one table from these classes to status codes. `reason` names
the kind of failure in metrics and logs."""

from __future__ import annotations


class ServingError(Exception):
    """Unexpected failure inside a service (an INTERNAL error)."""

    reason = "internal"


class InvalidInput(ServingError):
    """The request is malformed: wrong shape or dtype, empty, NaN/Inf, garbage bytes."""

    reason = "invalid_input"


class NotFound(ServingError):
    """The request names a model (or other entity) this service does not have."""

    reason = "not_found"


class Overloaded(ServingError):
    """A bounded queue or size limit is exceeded; the caller may retry later or send less."""

    reason = "overloaded"


class Unavailable(ServingError):
    """A dependency or this service cannot answer now (down, not ready, injected failure)."""

    reason = "unavailable"


class PermissionDenied(ServingError):
    """The call is known but this service is not set up to allow it (e.g. an admin RPC switched off)."""

    reason = "permission_denied"


class DeadlineExceeded(ServingError):
    """The answer could not be produced before the caller's deadline."""

    reason = "deadline_exceeded"


class Cancelled(ServingError):
    """The caller withdrew the request (e.g. a straggling batch that was decoded instead)."""

    reason = "cancelled"


class ConfigError(ValueError):
    """A setting (env var or CLI flag) is invalid; the message names the setting."""


QUOTE_LIMIT = 128  # characters of a client-supplied string that an error message repeats


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` for an error message: repr'd and cut to `limit` characters, so that a huge name sent by a
    client cannot blow an error message past gRPC's metadata limit."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"
