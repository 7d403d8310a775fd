"""Instance types at placement: the controller schedules and starts a VM's effective spec.

`events.instancetypes` resolves; this adapts it to the controller's folded maps (keyed by
subject prefix) and to the scheduler, so a VM whose instance type vanished before its placement
stays unschedulable with KubeVirt's words instead of running with defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from events.errors import ValidationError
from events.instancetypes import InstancetypeState, effective_spec
from events.state import VMState
from orchestrator.scheduler import Unschedulable


def _lookup(known: Mapping[str, InstancetypeState]) -> Callable[[str, str, str], Any]:
    return lambda aggregate, ns, name: known.get(f"virt.{aggregate}.{ns}.{name}")


def admit(spec: dict[str, Any], *, namespace: str, known: Mapping[str, InstancetypeState]) -> None:
    """Raise the ValidationError KubeVirt gives for a missing or conflicting instance type."""
    effective_spec(spec, namespace=namespace, lookup=_lookup(known))


def effective(
    s: VMState, *, known: Mapping[str, InstancetypeState]
) -> tuple[VMState, Callable[[], str]]:
    """`s` with its effective spec, and a placer guard that raises Unschedulable (with the
    resolution's message) when the spec cannot be resolved, else returns ""."""

    def fine() -> str:
        return ""

    if "instancetype" not in s.spec and "preference" not in s.spec:
        return s, fine
    try:
        spec = effective_spec(s.spec, namespace=s.namespace, lookup=_lookup(known))
    except ValidationError as err:
        message = err.message

        def refuse() -> str:
            raise Unschedulable(message, field="spec.instancetype")

        return s, refuse
    return msgspec.structs.replace(s, spec=spec), fine
