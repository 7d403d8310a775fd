"""Fuzzing the domain renderer (issue 12): what the manifest door accepts, libvirt must accept too.

Every mutated VM manifest that passes `to_commands` is planned (`volume_plan`) and rendered
(`render_domain`) as a node worker would, then defined on libvirt's test driver and undefined.
How each bad input is handled: a spec virtbus cannot run here (a volume source it does not
support, a cdrom on virtio...) is a `ValidationError` naming a path under `spec.template.spec`;
everything else becomes XML that libvirt defines. A libvirt error or any other exception fails.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest
from fuzzing import CENTOS7, examples, realize, vm_manifests
from hypothesis import event, given, settings

from events.commands import ApplyVM
from events.errors import ValidationError
from events.manifest import to_commands
from workers.domain import render_domain
from workers.volumeplan import ResolvedVolume, volume_plan


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


def rendered(spec: dict[str, Any], *, kvm: bool) -> str | ValidationError:
    """The domain XML a node would define for `spec`, or the renderer's rejection."""
    try:
        # The worker resolves each volume to a file; the index keeps odd names out of paths.
        volumes = {
            need.name: ResolvedVolume(path=f"/var/lib/virtbus/volumes/{i}.img")
            for i, need in enumerate(volume_plan(spec))
        }
        return render_domain(
            spec, name="fuzz", namespace="default", uid="fuzz-uid", volumes=volumes, kvm=kvm
        )
    except ValidationError as err:
        assert err.field.startswith("spec.template.spec"), err.field
        assert err.message.startswith(f"{err.field}: "), err.message
        return err


def defines(conn: Any, xml: str) -> None:
    """libvirt accepts the XML: it defines the domain, which is then undefined."""
    try:
        dom = conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        pytest.fail(f"libvirt refused the rendered domain: {exc}\n{xml}")
    dom.undefine()


@settings(max_examples=examples(400, 5_000))
@given(doc=vm_manifests)
def test_accepted_specs_render_to_xml_libvirt_defines_or_a_named_refusal(
    conn: Any, doc: Any
) -> None:
    try:
        [cmd], _ = to_commands(realize(doc))
    except ValidationError:
        event("refused by the manifest door")
        return  # tests/test_fuzz_manifest.py checks how
    assert isinstance(cmd, ApplyVM)
    for kvm in (False, True):
        xml = rendered(cmd.spec, kvm=kvm)
        if isinstance(xml, str):
            defines(conn, xml)
        event("defined by libvirt" if isinstance(xml, str) else "refused by the renderer")


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"cpu": {"model": "virtio\x00"}}, "spec.template.spec.domain.cpu.model", "letters"),
        ({"memory": {"guest": "9223372036854775807"}}, "spec.template.spec.domain.memory.guest",
         "at most 8Ei"),
        ({"cpu": {"cores": 4097}}, "spec.template.spec.domain.cpu.cores", "at most 4096"),
    ],
)  # fmt: skip
def test_the_renderer_refuses_what_libvirt_would(
    conn: Any, change: dict[str, Any], field: str, reason: str
) -> None:
    """Findings 11, 12 and 14 on the renderer's side (a spec that skipped the manifest check):
    a NUL crashed libvirt's binding, 2**53 KiB overflowed libvirt; each is now a named refusal."""
    spec = copy.deepcopy(CENTOS7["spec"])
    spec["template"]["spec"]["domain"].update(change)
    err = rendered(spec, kvm=False)
    assert isinstance(err, ValidationError)
    assert err.field == field
    assert reason in err.message, err.message
