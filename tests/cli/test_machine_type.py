"""`machine: {type: ""}`, as KubeVirt's user guide writes its vm.yaml: an empty machine type is
KubeVirt's default, so the manifest applies and the VM starts (q35 on the node)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from clirun import Result, virtbus
from driverstack import Stack
from manifests import vm

from events.errors import ValidationError
from events.manifest import to_commands


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


def guide_vm(name: str) -> dict[str, Any]:
    doc = vm(name)
    doc["spec"]["template"]["spec"]["domain"]["machine"] = {"type": ""}
    return doc


async def test_an_empty_machine_type_applies_and_the_vm_starts(stack: Stack) -> None:
    await stack.node("node-a")
    applied = await cli(stack, "apply", "-f", "-", stdin=json.dumps(guide_vm("testvm")))
    assert (applied.code, applied.out, applied.err) == (
        0, "virtualmachine.kubevirt.io/testvm created\n", "")  # fmt: skip
    assert (await cli(stack, "start", "testvm")).ok().out == "VM testvm was scheduled to start\n"
    running = await cli(stack, "wait", "vm/testvm", "--for", "condition=Ready", "--timeout", "30s")
    assert running.ok().out == "virtualmachine.kubevirt.io/testvm condition met\n"
    s = await stack.state("testvm")
    assert (s.status, s.node) == ("Running", "node-a")


def test_a_bad_machine_type_is_still_refused() -> None:
    doc = guide_vm("x")
    doc["spec"]["template"]["spec"]["domain"]["machine"] = {"type": "q35 bad"}
    with pytest.raises(ValidationError) as err:
        to_commands(doc)
    assert (err.value.field, str(err.value)) == (
        "spec.template.spec.domain.machine.type",
        "spec.template.spec.domain.machine.type: 'q35 bad' must be letters, digits and _.+- "
        "(at most 100)",
    )
