"""Which failures are worth retrying.

Spot capacity and object stores fail in ways that go away (a node reclaimed, a
connection reset, S3 throttling or a 5xx); bad data fails the same way every
time. Retrying the second kind only delays its verdict, so retries are for the
first kind alone.
"""

from __future__ import annotations

import errno

# OS errors that say "the machine or the network", not "this file"
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ENOSPC, errno.ENOMEM,
                     errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
                     errno.EPIPE, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                     errno.ESTALE, errno.EDQUOT}
_TRANSIENT_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                       "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
                       "503", "500", "502", "504"}


class CapacityLost(RuntimeError):
    """The node is going away (a Spot reclaim's SIGTERM); what was done is saved and a
    retry continues from it."""


def is_transient(exc: BaseException) -> bool:
    """True for failures of capacity or the network (worth a retry), False for failures
    that the same input will cause again (bad data, bad config, a bug)."""
    try:
        import botocore.exceptions as bce
    except ImportError:  # pragma: no cover - boto3 is a dependency
        bce = None
    if bce is not None:
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return err.get("Code") in _TRANSIENT_S3_CODES or status >= 500
        if isinstance(exc, bce.EndpointConnectionError | bce.ConnectionClosedError
                      | bce.ReadTimeoutError | bce.ConnectTimeoutError):
            return True
    if isinstance(exc, ConnectionError | TimeoutError | CapacityLost):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    cause = exc.__cause__ or exc.__context__
    # deltalake/object_store errors carry the network failure only in their text
    text = str(exc)
    if any(s in text for s in ("Connection refused", "connection reset", "timed out",
                               "dns error", "503 Service Unavailable", "SlowDown")):
        return True
    return cause is not None and cause is not exc and is_transient(cause)
