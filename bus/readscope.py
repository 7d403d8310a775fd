"""What one set of credentials may read of the log, said once for the server and for the reader.

The server checks subjects, not request bodies. A direct get carries its subject filter in the
body, and an unnamed consumer create (`$JS.API.CONSUMER.CREATE.<stream>`) takes its name from the
body, so either lets a client read any subject, and the second updates another's durable consumer
(the intake's, the dispatcher's) by naming it. So a user or a node creates consumers only under
its own slot names (`rd_<name>_<k>`), pulls and deletes only those, and never acks: its reads stay
its own. A user reads only by consumer, with the filter in the API subject
(`$JS.API.CONSUMER.CREATE.<stream>.<slot>.<filter>`), where its permissions allow only its
namespaces' subject trees and its own user record. A node may also direct-get (it runs every
namespace's VMs and reads their trees whole).

`read_permissions` writes those subjects for `bus/roles.py`; `ReadScope.of_claims` reads them back
out of a connection's JWT, so that the readers (`bus/consumers.py`) shape each read to fit rather
than meet a permissions violation.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
from nats.aio.client import Client

from bus.credentials import claims_of, read_creds
from events.names import AGGREGATES, CLUSTER, CLUSTER_SCOPED, COMMANDS_STREAM, EVENTS_STREAM

SLOTS: Final = 4  # concurrent reads per identity (a `watch` holds one; a `history` two at once)
READ_STREAMS: Final = (EVENTS_STREAM, COMMANDS_STREAM)
# the aggregates a namespace holds, and the cluster's that every user reads (KubeVirt's cluster
# instance types and preferences are readable by any authenticated user)
NAMESPACED: Final = tuple(k for k in AGGREGATES if k not in CLUSTER_SCOPED)
FOR_EVERYONE: Final = ("clusterinstancetype", "clusterpreference")
_API: Final = "$JS.API"
_CREATE: Final = f"{_API}.CONSUMER.CREATE."
_NEXT: Final = f"{_API}.CONSUMER.MSG.NEXT.*."
_DIRECT: Final = f"{_API}.DIRECT.GET."


def slot_names(name: str) -> tuple[str, ...]:
    return tuple(f"rd_{name}_{k}" for k in range(SLOTS))


def families(name: str, namespaces: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The subject trees a user of `namespaces` (empty: all of them) reads, per stream."""
    if namespaces:  # a namespace is a DNS label, never the cluster token: `*` is one of its kinds
        events = [f"virt.*.{ns}.>" for ns in namespaces]
        commands = [f"virt.cmd.*.{ns}.>" for ns in namespaces]
    else:  # every namespace, and so no cluster-scoped tree (nodes, webhooks, users, audit)
        events = [f"virt.{kind}.*.>" for kind in NAMESPACED]
        commands = [f"virt.cmd.{kind}.*.>" for kind in NAMESPACED]
    events += [f"virt.{kind}.{CLUSTER}.>" for kind in FOR_EVERYONE]
    events.append(f"virt.user.{CLUSTER}.{name}.>")  # whoami: its own record
    return {EVENTS_STREAM: tuple(events), COMMANDS_STREAM: tuple(commands)}


def read_permissions(
    name: str, *, trees: dict[str, tuple[str, ...]] | None, direct: bool
) -> tuple[str, ...]:
    """The publish subjects of reading: consumers under `name`'s slots, filtered to `trees` per
    stream (None: any filter), and direct gets if `direct`."""
    out = [f"{_API}.INFO", f"{_API}.STREAM.NAMES"]
    for slot in slot_names(name):
        out += [f"{_NEXT}{slot}", f"{_API}.CONSUMER.DELETE.*.{slot}"]
        if trees is None:
            out += [s for st in READ_STREAMS
                    for s in (f"{_CREATE}{st}.{slot}", f"{_CREATE}{st}.{slot}.>")]  # fmt: skip
        else:
            out += [f"{_CREATE}{st}.{slot}.{tree}" for st, ts in trees.items() for tree in ts]
    if direct:
        for st in READ_STREAMS:
            out += [f"{_DIRECT}{st}", f"{_DIRECT}{st}.>", f"{_API}.STREAM.INFO.{st}"]
    return tuple(out)


def meet(a: str, b: str) -> str | None:
    """The subject filter both `a` and `b` match (the narrower, token by token), or None."""
    x, y = a.split("."), b.split(".")
    out: list[str] = []
    for i in range(max(len(x), len(y))):
        if i == len(x) or i == len(y):
            return None
        p, q = x[i], y[i]
        if p == ">":
            return ".".join(out + y[i:])
        if q == ">":
            return ".".join(out + x[i:])
        if p in ("*", q):
            out.append(q)
        elif q == "*":
            out.append(p)
        else:
            return None
    return ".".join(out)


class ReadScope(msgspec.Struct, frozen=True):
    """How a connection reads: under which consumer names (none: any), which subject trees per
    stream (None: all), and whether by direct get."""

    slots: tuple[str, ...] = ()
    trees: dict[str, tuple[str, ...]] | None = None
    direct: bool = True

    @property
    def confined(self) -> bool:
        """Its consumers' filters must name one allowed tree each, in the API subject."""
        return self.trees is not None

    def narrow(self, stream: str, filters: Iterable[str] | None) -> list[str] | None:
        """`filters` (None: the whole stream) cut down to what this scope reads of `stream`:
        None when it reads everything asked, [] when it reads none of it."""
        if self.trees is None:
            return None if filters is None else list(filters)
        out: list[str] = []
        for f in [">"] if filters is None else filters:
            for tree in self.trees.get(stream, ()):
                if (m := meet(f, tree)) is not None and m not in out:
                    out.append(m)
        return out

    @classmethod
    def of_claims(cls, claims: dict[str, Any]) -> ReadScope:
        allow = claims.get("nats", {}).get("pub", {}).get("allow")
        if allow is None or ">" in allow:
            return cls()  # an admin's JWT, or the orchestrator's: every subject it reads
        slots = tuple(s.removeprefix(_NEXT) for s in allow if s.startswith(_NEXT))
        direct = f"{_DIRECT}{EVENTS_STREAM}" in allow
        trees: dict[str, tuple[str, ...]] | None = None
        if slots and f"{_CREATE}{EVENTS_STREAM}.{slots[0]}.>" not in allow:
            trees = {}
            for st in READ_STREAMS:
                head = f"{_CREATE}{st}.{slots[0]}."
                trees[st] = tuple(s.removeprefix(head) for s in allow if s.startswith(head))
        return cls(slots=slots, trees=trees, direct=direct)


_SCOPES: weakref.WeakKeyDictionary[Client, ReadScope] = weakref.WeakKeyDictionary()


def read_scope(nc: Client) -> ReadScope:
    """The scope of `nc`'s credentials (a `.creds` file nats-py logged in with; none: an open
    bus, every subject)."""
    if (known := _SCOPES.get(nc)) is not None:
        return known
    creds = getattr(nc, "_user_credentials", None)
    scope = ReadScope()
    if isinstance(creds, str | Path):
        scope = ReadScope.of_claims(claims_of(read_creds(Path(creds))[0]))
    _SCOPES[nc] = scope
    return scope


def set_scope(nc: Client, scope: ReadScope) -> None:
    """`nc` reads as `scope` (a login whose JWT the client does not hold: `bus/roles.py`)."""
    _SCOPES[nc] = scope
