"""The VM network's address pool: which address of the cluster's CIDR each instance holds.

Which address is whose is a fold of the log (each VM's `ip`, from `IPAllocated`/`IPReleased`), kept
here as an index the controller updates as it folds, plus what a decision took and has not yet come
back folded: reactions of different VMs run side by side, so an address is taken the moment a
decision picks it, before its append awaits (as `capacity.Capacity` holds a node's room). The
first host address of the CIDR is the network's gateway (the hosts' side of every node), never an
instance's.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Final

from events import model as m
from events.errors import ValidationError
from events.state import VMState

DEFAULT_CIDR: Final = "10.244.0.0/16"  # the pod network's usual default (flannel's)
CIDR_ENV: Final = "VIRTBUS_VMI_CIDR"


class PoolExhausted(Exception):
    """Every address of the pool is held."""


def configured_cidr(cidr: str | None = None) -> ipaddress.IPv4Network:
    """The pool: `cidr` (a setting), else $VIRTBUS_VMI_CIDR, else 10.244.0.0/16."""
    text = cidr or os.environ.get(CIDR_ENV) or DEFAULT_CIDR
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as err:
        raise ValidationError(f"vmi cidr: {text!r} is not an IPv4 network: {err}") from err
    if net.num_addresses < 4:
        raise ValidationError(f"vmi cidr: {text} is too small (a /30 at least)")
    return net


def mac_for(address: str) -> str:
    """The NIC's MAC, from its address: unique as the address is, stable across restarts of the
    controller (QEMU's 52:54 prefix, then the address's four bytes)."""
    return "52:54:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


def gateway(net: ipaddress.IPv4Network) -> str:
    return str(net.network_address + 1)


class AddressPool:
    def __init__(self, cidr: str | None = None) -> None:
        self.net = configured_cidr(cidr)
        self._held: dict[str, str] = {}  # VM key -> its address, as folded
        self._taken: dict[str, str] = {}  # address -> VM key (folded or decided)
        self._decided: dict[str, str] = {}  # VM key -> an address decided, not yet folded
        self._first = int(self.net.network_address) + 2  # past the network and the gateway
        self._last = int(self.net.broadcast_address) - 1
        self._next = self._first

    @property
    def cidr(self) -> str:
        return str(self.net)

    def folded(self, key: str, s: VMState) -> None:
        """Account the VM's address as the log now has it."""
        now = s.ip if s.ip and not s.deleted else ""
        if self._decided.get(key) == now:
            self._decided.pop(key)
        before = self._held.get(key, "")
        if before == now:
            return
        if before:
            del self._held[key]
            if self._taken.get(before) == key and before not in self._decided.values():
                del self._taken[before]
        if now:
            self._held[key] = now
            # The first holder keeps it: a second (two controllers racing) is a clash to repair.
            self._taken.setdefault(now, key)

    def allocate(self, key: str) -> str:
        """A free address for the VM `key`, taken at once; the same one while its decision is
        not yet folded (a reconcile run again before the append came back)."""
        if (mine := self._decided.get(key)) is not None:
            return mine
        span = self._last - self._first + 1
        for i in range(span):
            candidate = self._first + (self._next - self._first + i) % span
            address = str(ipaddress.IPv4Address(candidate))
            if address not in self._taken:
                self._next = candidate + 1 if candidate < self._last else self._first
                self._taken[address] = key
                self._decided[key] = address
                return address
        raise PoolExhausted(f"no free address in the VM network {self.net}")

    def allocation(self, key: str, vmi_uid: str) -> m.IPAllocated:
        """The instance `vmi_uid`'s address, taken now (see `allocate`), as its event."""
        address = self.allocate(key)
        return m.IPAllocated(address=address, vmi_uid=vmi_uid, mac=mac_for(address),
                             cidr=self.cidr)  # fmt: skip

    def release(self, key: str) -> None:
        """The decision that took an address lost (another controller appended first)."""
        address = self._decided.pop(key, None)
        if address is not None and self._held.get(key) != address:
            self._taken.pop(address, None)

    def of(self, key: str) -> VMAddresses:
        return VMAddresses(self, key)

    def clashes(self, key: str, address: str) -> bool:
        """Whether another VM held `address` first (the log gave it twice: two controllers
        deciding at once): the later holder is to give it back and take another."""
        return bool(address) and self._taken.get(address, key) != key


class VMAddresses:
    """The pool as one VM's reconcile sees it: its allocation, and whether its address clashes."""

    def __init__(self, pool: AddressPool, key: str) -> None:
        self.pool = pool
        self.key = key

    def allocation(self, vmi_uid: str) -> m.IPAllocated:
        return self.pool.allocation(self.key, vmi_uid)

    def clashes(self, address: str) -> bool:
        return self.pool.clashes(self.key, address)
