"""`virtbus scp SRC DST`: virtctl's form turned into the system scp's command line (pure).

The copy itself, through the bus into the tiny guest and back, is tested on real QEMU in
tests/qemu/test_guestdata_qemu.py.
"""

from __future__ import annotations

import pytest

from events.errors import ValidationError
from virtctl.portforward import scp_argv

COMMON = {
    "namespace": "default", "user": "me", "port": 22, "identity": None, "recursive": False,
    "known_hosts": "/k", "local_opts": [], "server": "nats://s:1",
}  # fmt: skip


def test_the_vm_side_becomes_an_alias_reached_through_port_forward() -> None:
    argv = scp_argv(source="./a.txt", destination="tiny@vm/box.ns1:/tmp/a", **COMMON)
    assert argv[-2:] == ["./a.txt", "tiny@vm.box.ns1:/tmp/a"]
    assert argv[0] == "scp" and "HostKeyAlias=vm.box.ns1" in argv
    proxy = next(a for a in argv if a.startswith("ProxyCommand="))
    assert proxy.endswith("port-forward --stdio --server nats://s:1 -n ns1 vm/box 22")
    argv = scp_argv(source="vmi/box:/etc/hostname", destination=".",
                    **{**COMMON, "recursive": True, "port": 2222})  # fmt: skip
    assert argv[-5:] == ["-P", "2222", "-r", "me@vm.box.default:/etc/hostname", "."]


@pytest.mark.parametrize(("src", "dst"), [("a", "b"), ("vm/x:/a", "vm/y:/b")])
def test_exactly_one_side_is_the_vms(src: str, dst: str) -> None:
    with pytest.raises(ValidationError, match="must be \\[USER@\\]vm/NAME"):
        scp_argv(source=src, destination=dst, **COMMON)
