"""One vocabulary of failures; foreign exceptions are translated where they enter."""

from __future__ import annotations


class AutopilotError(Exception):
    """Base of our own errors. Messages never carry secrets."""


class DecodeError(AutopilotError):
    """A message that is not an alarm: parked at once, never retried."""


class RetryableError(AutopilotError):
    """A failure worth trying again: network, timeout, 429, 5xx. ``unanswered``: the request
    may have reached the server and been carried out, but no answer came back (a timeout, a
    connection dropped after it was sent), so whether it was done is unknown."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        max_delay: float | None = None,
        unanswered: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        # The longest wait before the next try when the server named none (429: 60 s).
        self.max_delay = max_delay
        self.unanswered = unanswered


class BusyError(RetryableError):
    """CloudAMQP is still configuring the instance (422 "Please wait for your cluster to be
    configured", 423 Locked, or ``ready: false``): wait until it is ready and try again,
    without spending an attempt."""


class PermanentError(AutopilotError):
    """A failure that another try will not fix (other 4xx): parked at once."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class BrokerUnavailable(AutopilotError):
    """The broker did not take a message (down, unroutable, not confirmed)."""


class StoreError(AutopilotError):
    """The state store is unreachable or misconfigured."""
