"""`virtbus port-forward`'s port specs, virtctl's `[PROTOCOL/][LOCAL:]REMOTE` (pure): what each
form forwards, and each bad one refused naming the field and why.

The forwarding itself (TCP through `virtbus ssh`, UDP datagrams answered by the tiny guest) is
tested on real QEMU in tests/qemu/test_guest_qemu.py.
"""

from __future__ import annotations

import pytest
from clirun import virtbus

from events.errors import ValidationError
from virtctl.portforward import target
from virtctl.portspec import PortSpec, port_spec


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("22", PortSpec("tcp", 22, 22)),
        ("2222:22", PortSpec("tcp", 2222, 22)),
        (":22", PortSpec("tcp", 22, 22)),
        ("0:22", PortSpec("tcp", 0, 22)),  # any free local port
        ("tcp/8080:80", PortSpec("tcp", 8080, 80)),
        ("udp/53", PortSpec("udp", 53, 53)),
        ("udp/5353:53", PortSpec("udp", 5353, 53)),
        ("udp/0:7", PortSpec("udp", 0, 7)),
    ],
)
def test_a_port_spec_names_its_protocol_and_ports(text: str, spec: PortSpec) -> None:
    assert port_spec(text) == spec


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("udp/", "port: 'udp/' is not [tcp/|udp/][LOCAL:]REMOTE"),
        ("udp", "port: 'udp' is not [tcp/|udp/][LOCAL:]REMOTE"),
        ("22:ssh", "port: '22:ssh' is not [tcp/|udp/][LOCAL:]REMOTE"),
        ("80C0:8X90", "port: '80C0:8X90' is not [tcp/|udp/][LOCAL:]REMOTE"),
        ("sctp/80", "port: protocol 'sctp' of 'sctp/80' is not tcp or udp"),
        ("/80", "port: protocol '' of '/80' is not tcp or udp"),
        ("udp/tcp/80", "port: protocol 'udp/tcp' of 'udp/tcp/80' is not tcp or udp"),
        ("udp/70000", "port: 'udp/70000' is out of range (LOCAL 0-65535, REMOTE 1-65535)"),
        ("22:0", "port: '22:0' is out of range (LOCAL 0-65535, REMOTE 1-65535)"),
    ],
)
def test_a_bad_port_spec_is_refused_naming_the_field_and_why(text: str, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        port_spec(text)
    assert (err.value.field, err.value.message) == ("port", why)


async def test_stdio_forwards_one_tcp_port_and_says_so_before_touching_the_bus() -> None:
    said = []
    for ports in (["udp/53"], ["22", "80"]):
        r = await virtbus("port-forward", "--stdio", "vm/x", *ports,
                          "--server", "nats://127.0.0.1:1")  # fmt: skip
        said.append((r.code, r.err))
    assert said == [(1, "error: port: --stdio forwards a tcp port, not 'udp/53'\n"),
                    (1, "error: port: --stdio forwards exactly one port\n")]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("vm/testvm", ("testvm", "default")),
        ("vm/testvm/mynamespace", ("testvm", "mynamespace")),  # virtctl's TYPE/NAME/NAMESPACE
        ("vmi/testvm.mynamespace", ("testvm", "mynamespace")),  # its older NAME.NAMESPACE
        ("virtualmachineinstance/x/ns", ("x", "ns")),
    ],
)
def test_a_target_is_virtctls_type_name_and_namespace(text: str, found: tuple[str, str]) -> None:
    assert target(text, namespace="default") == found


@pytest.mark.parametrize("text", ["my-vm", "pod/x", "vm/", "vm/x/", "vm/x/ns/more", "vm/X"])
def test_a_target_that_is_not_one_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(ValidationError) as err:
        target(text, namespace="default")
    assert err.value.message == f"target: {text!r} is not TYPE/NAME[/NAMESPACE] (TYPE vm or vmi)"


async def test_ssh_takes_virtctls_local_ssh_flag_and_refuses_its_own_client() -> None:
    r = await virtbus("ssh", "--no-local-ssh", "vm/x/ns", "--server", "nats://127.0.0.1:1")
    assert (r.code, r.out, r.err) == (
        2,
        "",
        "error: --no-local-ssh: virtbus has no ssh client of its own; it runs the system's\n",
    )
