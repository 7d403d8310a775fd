"""How a QEMU node runs its domains: KVM where it can boot a stock guest, else TCG, and why.

Apart from `workers/hypervisor.py` (libvirt's calls) because the node's registration, the tests'
skips and the boot benchmark ask it without a hypervisor at hand.
"""

from __future__ import annotations

import os
from typing import Final

from events.errors import HypervisorError

ACCEL_ENV: Final = "VIRTBUS_ACCEL"
PVM_MODULE: Final = "/sys/module/kvm_pvm"


def accelerator() -> tuple[str, str]:
    """How this node's QEMU domains run, "kvm" or "tcg", and why. `VIRTBUS_ACCEL` says kvm, tcg or
    auto (the default): KVM where /dev/kvm is usable, unless that KVM is PVM (the `kvm_pvm`
    module, on some cloud sandboxes), which runs only PVM-built guest kernels: a stock OS hangs
    there past its real-mode setup, so TCG (slower, but it boots) is the honest choice."""
    wanted = os.environ.get(ACCEL_ENV, "auto")
    if wanted not in ("auto", "kvm", "tcg"):
        raise HypervisorError(f"{ACCEL_ENV}={wanted!r}: use auto, kvm or tcg")
    if wanted == "tcg":
        return "tcg", f"{ACCEL_ENV}=tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not usable"
    if wanted == "auto" and os.path.exists(PVM_MODULE):
        return "tcg", "this host's KVM is PVM (kvm_pvm): it boots no stock guest kernel"
    return "kvm", "/dev/kvm"


def kvm_usable() -> bool:
    return accelerator()[0] == "kvm"
