"""Kubernetes resource quantities ("2G", "512Mi", "1.5Gi", 1024): one parser for both sides.

The orchestrator checks manifests with it and node workers size domains with it, so a VM's memory
means the same number everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Final

from events.errors import ValidationError
from events.fields import short

_QUANTITY_RE: Final = re.compile(
    r"^(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE](?P<exp>[+-]?\d+))?$"
)
_MAX: Final = 2**63 - 1
# The most guest memory libvirt can express: 2**53 - 1 KiB (its "unlimited"), about 8 EiB.
MAX_GUEST_MEMORY: Final = (2**53 - 1) * 1024
_SUFFIX: Final[dict[str, Decimal]] = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10), "Mi": Decimal(2**20),
    "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip


def parse_quantity(value: Any, *, field: str = "quantity") -> int:
    """`value` in base units, rounded up; a ValidationError naming `field` when it is not one."""
    # YAML reads `memory: 1024` as an int, which is a valid quantity too.
    ok = isinstance(value, str | int) and not isinstance(value, bool)
    match = _QUANTITY_RE.match(str(value).strip()) if ok else None
    shown = short(value)
    if match is None:
        raise ValidationError(
            f"{field}: {shown} is not a quantity (like 2G, 512Mi, 1.5Gi or 1024)", field=field
        )
    try:
        amount = Decimal(match["num"]) * _SUFFIX[match["suffix"] or ""]
        if match["exp"] is not None:
            amount = amount.scaleb(int(match["exp"]))
        # Bounded while still a Decimal: int() of "1e999999" alone takes half a minute.
        if amount > _MAX:  # Kubernetes quantities are int64; msgspec could not decode more
            raise ValidationError(
                f"{field}: {shown} is out of range (at most 2**63 - 1, just under 8Ei)", field=field
            )
        result = int(amount.to_integral_value(rounding=ROUND_CEILING))
    except (InvalidOperation, OverflowError, ValueError) as exc:
        raise ValidationError(f"{field}: {shown} is out of range", field=field) from exc
    if result < 0:
        raise ValidationError(f"{field}: {shown} must not be negative", field=field)
    return result


def guest_memory_source(domain: Mapping[str, Any]) -> tuple[str, Any] | None:
    """Where KubeVirt takes a guest's memory from: `memory.guest`, else the pod's request, else
    its limit. The path under the domain and the value found there; None: nothing says it. The
    node (what it boots) and the orchestrator (what it can hotplug) read it from here alike."""
    memory = domain.get("memory")
    if isinstance(memory, Mapping) and memory.get("guest") is not None:
        return "memory.guest", memory["guest"]
    resources = domain.get("resources")
    for key in ("requests", "limits"):
        holder = resources.get(key) if isinstance(resources, Mapping) else None
        if isinstance(holder, Mapping) and holder.get("memory") is not None:
            return f"resources.{key}.memory", holder["memory"]
    return None
