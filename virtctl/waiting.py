"""`wait KIND NAME --for ...`: kubectl wait's conditions, on every kind, driven by the log.

A VM or VMI is folded event by event from its own history (no polling: each event on its subjects
is applied as it arrives). The other kinds are read again whenever the log moves (and once a
second, since some are read through the read model, which trails the log a little). The
conditions are kubectl's: `condition=X[=value]`, `jsonpath={...}[=value]`, `delete`, `create`,
plus virtbus's older `status=X` and `phase=X` for VMs and VMIs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from bus.client import session
from bus.store import EventStore
from bus.vms import VMRepository
from events import render
from events.errors import ValidationError
from events.names import Ref
from events.state import VMState, apply
from virtctl import jsonpath
from virtctl.getting import is_vm, listing
from virtctl.kinds import VM, VMI, Kind

Check = Callable[[dict[str, Any] | None], bool]  # the object, or None while there is none

_UNDERSTOOD = "use condition=X, jsonpath={.path}=VALUE, delete, create, status=X or phase=X"


def _bad(condition: str) -> ValidationError:
    return ValidationError(f"--for: {condition!r} is not understood; {_UNDERSTOOD}", field="for")


def object_check(condition: str) -> Check:
    """kubectl wait's `--for` as a test of the object (None: it does not exist)."""
    key, _, value = condition.partition("=")
    if key == "delete" and not value:
        return lambda obj: obj is None
    if key == "create" and not value:
        return lambda obj: obj is not None
    if key == "condition" and value:
        ctype, _, want = value.partition("=")
        want = want or "True"

        def has(obj: dict[str, Any] | None) -> bool:
            conds = ((obj or {}).get("status") or {}).get("conditions") or []
            return any(
                c.get("type", "").lower() == ctype.lower()
                and str(c.get("status", "")).lower() == want.lower()
                for c in conds
            )

        return has
    if key == "jsonpath" and value:
        end = value.rfind("}")
        if not value.startswith("{") or end < 0:
            raise ValidationError(f"--for: jsonpath {value!r}: put the path in braces, as "
                                  "jsonpath={.status.phase}=Running", field="for")  # fmt: skip
        template, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith("="):
            raise _bad(condition)
        nodes = jsonpath.parse(template)
        paths = [n for n in nodes if n.kind == "path"]
        if len(paths) != 1 or len(nodes) != 1:
            raise ValidationError(f"--for: jsonpath {template!r}: give one path", field="for")
        expected = rest[1:] if rest else None

        def matches(obj: dict[str, Any] | None) -> bool:
            if obj is None:
                return False
            found = jsonpath.evaluate(paths[0].steps, obj)
            if expected is None:
                return bool(found)
            return len(found) == 1 and jsonpath.execute(nodes, obj) == expected

        return matches
    raise _bad(condition)


def vm_check(kind: Kind, condition: str) -> Callable[[VMState], bool]:
    """The condition on a folded VM: its VM object (`vm`) or its VMI object (`vmi`)."""
    key, _, value = condition.partition("=")
    if key == "status" and value:
        return lambda s: s.status == value
    if key == "phase" and value:
        return lambda s: s.phase == value
    check = object_check(condition)
    if kind is VMI:
        return lambda s: check(render.vmi_object(s) if s.exists else None)
    return lambda s: check(render.vm_object(s) if s.exists and is_vm(s) else None)


def parse(kind: Kind, condition: str) -> None:
    """Raise the usage error of a bad `--for` before anything connects."""
    if kind in (VM, VMI):
        vm_check(kind, condition)
    else:
        object_check(condition)


async def wait(
    url: str, *, kind: Kind, name: str, namespace: str, condition: str, timeout_s: float
) -> bool:
    """True once the condition holds, False when `timeout_s` passed first."""
    async with session(url) as nc:
        store = EventStore(nc)
        try:
            async with asyncio.timeout(timeout_s):
                if kind in (VM, VMI):
                    await _fold_until(store, kind=kind, ref=Ref.vm(name, namespace),
                                      ok=vm_check(kind, condition))  # fmt: skip
                    return True
                ok = object_check(condition)
                while True:
                    position = await store.position()
                    found = await listing(nc, kind, name=name, namespace=namespace)
                    if ok(found.items[0].obj if found.items else None):
                        return True
                    await _next_event(store, after=position)
        except TimeoutError:
            return False


async def _fold_until(store: EventStore, *, kind: Kind, ref: Ref, ok: Callable[[VMState], bool]
                      ) -> None:  # fmt: skip
    s, _ = await VMRepository(store).get(ref)
    position = (await store.head(ref)).seq
    if ok(s):
        return
    tail = store.follow(from_seq=position + 1, subjects=[ref.wildcard])
    async with contextlib.aclosing(tail):  # closed on return: its consumer goes with it
        async for rec in tail:
            if rec.subject.startswith(ref.prefix + "."):
                s = apply(s, rec.envelope)
                if ok(s):
                    return


async def _next_event(store: EventStore, *, after: int) -> None:
    """Until the log moves past `after`, or a second passes (the read model may trail it)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            async with contextlib.aclosing(store.follow(from_seq=after + 1)) as tail:
                async for _ in tail:
                    return
