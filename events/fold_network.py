"""The VM fold's network handlers: the instance's address allocated and released.

Kept apart from the lifecycle handlers because the address outlives the instance's steps: an
instance that ended still holds its address until the controller releases it (an event), so the
pool, a fold of every VM, never frees an address the log has not freed.
"""

from __future__ import annotations

from msgspec.structs import replace

from events import model as m
from events.envelope import Stamped
from events.vmstate import VMState


def ip_allocated(s: VMState, e: m.IPAllocated, env: Stamped) -> VMState:
    return replace(s, ip=e.address, ip_vmi=e.vmi_uid, mac=e.mac, cidr=e.cidr)


def ip_released(s: VMState, e: m.IPReleased, env: Stamped) -> VMState:
    if e.address != s.ip:
        return s  # a late release of an address the VM no longer holds
    return replace(s, ip="", ip_vmi="", mac="", cidr="")
