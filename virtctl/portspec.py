"""`port-forward`'s port specs, virtctl's `[PROTOCOL/][LOCAL:]REMOTE`: pure, apart from the
forwarding itself so a Service's lookup (`virtctl/services.py`) can map them without importing
the pipes.
"""

from __future__ import annotations

from typing import NamedTuple

from events.errors import ValidationError


class PortSpec(NamedTuple):
    protocol: str  # tcp or udp
    local: int  # 0: any free port
    remote: int


PROTOCOLS = ("tcp", "udp")
_SPEC = "[tcp/|udp/][LOCAL:]REMOTE"


def port_spec(text: str) -> PortSpec:
    """virtctl's `[PROTOCOL/][LOCAL:]REMOTE` (`udp/53`, `5353:53`, `udp/0:53`; tcp by default)."""
    protocol, slash, ports = text.rpartition("/")
    if slash and protocol not in PROTOCOLS:
        raise ValidationError(f"port: protocol {protocol!r} of {text!r} is not tcp or udp",
                              field="port")  # fmt: skip
    local, _, remote = ports.rpartition(":")
    try:
        spec = PortSpec(protocol or "tcp", int(local) if local else int(remote), int(remote))
    except ValueError:
        raise ValidationError(f"port: {text!r} is not {_SPEC}", field="port") from None
    if not (0 <= spec.local < 65536 and 0 < spec.remote < 65536):
        raise ValidationError(f"port: {text!r} is out of range (LOCAL 0-65535, REMOTE 1-65535)",
                              field="port")  # fmt: skip
    return spec
