"""One error tree for all of virtbus: workers map any failure to ack, nak or term by `retryable`."""

from __future__ import annotations


class VirtbusError(Exception):
    """Base of every error virtbus raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, field: str = "", retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if retryable is not None:
            self.retryable = retryable


class ValidationError(VirtbusError):
    """Input that can never succeed as given; `field` names the offending path."""


class ConcurrencyConflict(VirtbusError):
    """Someone appended to the same aggregate first; reload and decide again."""

    retryable = True

    def __init__(self, message: str, *, expected_version: int, actual_version: int) -> None:
        super().__init__(message)
        self.expected_version = expected_version
        self.actual_version = actual_version


class TamperDetected(VirtbusError):
    """The per-aggregate hash chain or version sequence is broken."""

    def __init__(self, message: str, *, subject: str, seq: int) -> None:
        super().__init__(message)
        self.subject = subject
        self.seq = seq


class BusUnavailable(VirtbusError):
    """NATS or JetStream did not answer; the same call may work later."""

    retryable = True


class ConfigConflict(VirtbusError):
    """An existing stream or bucket has a config we would have to change to proceed."""


class HypervisorError(VirtbusError):
    """libvirt refused or failed an operation."""


def stale(resource: str, name: str) -> str:
    """The API server's words for a write made on a version that is no longer the latest (a
    patch's read-modify-write raced by another write: the CLI reads again and retries)."""
    return (
        f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
