"""The real QEMU/KVM area: every test here needs /dev/kvm and root, and skips saying why without."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtbus.guest.build import guest_image
from workers.qemunodes import kvm_usable, qemu_available


@pytest.fixture
def kvm_host() -> None:
    """Skip, saying why, only where this machine truly cannot run a QEMU/KVM node."""
    for ok, why in (qemu_available(), kvm_usable()):
        if not ok:
            print(f"\nskipping: {why}")
            pytest.skip(why)


@pytest.fixture(scope="session")
def guest_disk() -> Path:
    """The tiny guest's image (`virtbus/guest/`), built once per content and cached."""
    return guest_image()
