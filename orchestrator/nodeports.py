"""The nodePort pool: which port of 30000-32767 each NodePort (or LoadBalancer) Service holds.

Kubernetes' API server allocates a Service's nodePorts when it creates it; here the intake does,
judging each Service against this pool. Which port is whose is a fold of the log (each Service's
`spec.ports[].nodePort`, released when it is deleted), kept here as an index the controller
updates as it folds, plus what a judgement took and has not yet come back folded: the intake
judges commands for different Services side by side, so a port is taken the moment a decision
picks it, before its append awaits (as `ipam.AddressPool` does for VM addresses).
"""

from __future__ import annotations

import random

from events.errors import ValidationError
from events.names import Ref
from events.services import (
    NODE_PORT_RANGE,
    ServiceState,
    already_allocated,
    node_ports,
    out_of_range,
)


class NodePortPool:
    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._held: dict[str, tuple[int, ...]] = {}  # Service key -> its ports, as folded
        self._owner: dict[int, str] = {}  # port -> Service key (folded or decided)
        self._decided: dict[str, tuple[int, ...]] = {}  # Service key -> taken, not yet folded
        self._rng = rng or random.Random()  # random, as the API server's: fewer clashes on a host

    def folded(self, key: str, s: ServiceState) -> None:
        """Account the Service's ports as the log now has them."""
        now = tuple(node_ports(s))
        if self._decided.get(key) == now:
            del self._decided[key]
        before = self._held.pop(key, ())
        mine = self._decided.get(key, ())
        for port in before:
            if self._owner.get(port) == key and port not in now and port not in mine:
                del self._owner[port]
        if now:
            self._held[key] = now
            for port in now:  # the first holder keeps it (see `events.services.holders`)
                self._owner.setdefault(port, key)

    def take(self, key: str, asked: list[int | None]) -> list[int]:
        """A nodePort for each of the Service `key`'s ports, taken at once: the one asked, else
        a free one; the same ones while its decision is not yet folded (judged again after a
        conflict)."""
        if (mine := self._decided.get(key)) is not None:
            same = len(mine) == len(asked)
            if same and all(a in (None, m) for a, m in zip(asked, mine, strict=True)):
                return list(mine)
            self.forget(key)  # another judgement's: not this one's to keep
        for i, port in enumerate(asked):
            if port is None:
                continue
            if port not in NODE_PORT_RANGE:
                raise out_of_range(i, port)
            if self._owner.get(port, key) != key:
                raise already_allocated(i, port)
        chosen = [p for p in asked if p is not None]
        picked = [p if p is not None else self._free(exclude=chosen) for p in asked]
        for port in picked:
            self._owner[port] = key
        self._decided[key] = tuple(picked)
        return picked

    def _free(self, *, exclude: list[int]) -> int:
        span = len(NODE_PORT_RANGE)
        start = self._rng.randrange(span)
        for i in range(span):
            port = NODE_PORT_RANGE[(start + i) % span]
            if port not in self._owner and port not in exclude:
                exclude.append(port)
                return port
        raise ValidationError("Internal error occurred: failed to allocate a nodePort: range is "
                              "full", field="spec.ports")  # fmt: skip

    def forget(self, key: str) -> None:
        """The judgement that took ports did not record them (refused, or lost a race)."""
        for port in self._decided.pop(key, ()):
            if self._owner.get(port) == key and port not in self._held.get(key, ()):
                del self._owner[port]

    def of(self, ref: Ref) -> ServicePorts:
        return ServicePorts(self, ref.prefix)


class ServicePorts:
    """The pool as one Service's judgement sees it (events.services.PortPicker)."""

    def __init__(self, pool: NodePortPool, key: str) -> None:
        self.pool = pool
        self.key = key

    def take(self, asked: list[int | None]) -> list[int]:
        return self.pool.take(self.key, asked)
