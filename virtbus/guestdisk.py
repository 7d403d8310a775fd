"""The tiny guest as a container disk for `virtbus up --hypervisor qemu`: no other step.

Why: `examples/vm-tiny-linux.yaml` names the container disk `virtbus/tiny-linux-container-disk`,
and a fresh machine reaches no registry holding it. So the embedded stack builds the guest (once
per content, `virtbus/guest/build.py`), runs a registry of its own on loopback under its data dir,
pushes the guest there and hands that registry to its nodes after any the user configured
(`VIRTBUS_REGISTRIES`). The nodes then pull it as they pull any container disk (an `ImagePulled`
in the VM's history names the registry). Where the build or the registry cannot be had, the stack
runs without it and says why.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from virtbus.guest.build import GuestBuildError, guest_image
from virtbus.localregistry import BINARY, available, push_disk, registry_server
from workers.registry import REGISTRIES_ENV

IMAGE: Final = "virtbus/tiny-linux-container-disk"


@contextlib.contextmanager
def serve_guest(root: Path, *, say: Callable[[str], None]) -> Iterator[str | None]:
    """A registry under `root` serving the tiny guest as `IMAGE`: yields the registry list the
    nodes get (the user's, then this one), or None when the guest cannot be served here."""
    if not available():
        say(f"tiny guest: not served ({BINARY} is missing: run `make setup`)")
        yield None
        return
    try:
        disk = guest_image(log=True)
    except GuestBuildError as e:
        say(f"tiny guest: not served (the image could not be built: {e})")
        yield None
        return
    with registry_server(root) as reg:
        push_disk(reg.url, IMAGE, disk)
        say(f"tiny guest: {IMAGE} served at {reg.url} ({disk.parent.name})")
        configured = os.environ.get(REGISTRIES_ENV, "").strip()
        yield ",".join(r for r in (configured, reg.url) if r)
