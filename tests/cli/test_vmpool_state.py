"""A VirtualMachinePool's VMs' DataVolumes across their deletion, on the real stack: KubeVirt's
`statePreservation: Offline` keeps a scaled-in VM's DataVolumes for the VM made again at its
index, and a changed `dataVolumeTemplates` remakes a running VM with new ones; the pool's, the
VMs' and the volumes' histories say what happened and why. Waits follow the log, never a clock."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from clirun import Result, virtbus
from driverstack import Stack

from events import model as m
from events.envelope import Recorded
from events.names import Ref

POOL = """\
apiVersion: pool.kubevirt.io/v1beta1
kind: VirtualMachinePool
metadata: {name: db}
spec:
  replicas: REPLICAS
  scaleInStrategy:
    proactive: {statePreservation: KEEP, selectionPolicy: {sortPolicy: DescendingOrder}}
  virtualMachineTemplate:
    spec:
      runStrategy: Always
      dataVolumeTemplates:
      - metadata: {name: data}
        spec: {source: {blank: {}}, storage: {resources: {requests: {storage: SIZE}}}}
      template:
        spec:
          domain:
            resources: {requests: {memory: 64Mi}}
            devices: {disks: [{name: data, disk: {bus: virtio}}]}
          volumes: [{name: data, dataVolume: {name: data}}]
"""


def pool(replicas: int, *, keep: str = "Offline", size: str = "1Mi", how: str = "proactive") -> str:
    doc = POOL.replace("REPLICAS", str(replicas)).replace("KEEP", keep).replace("SIZE", size)
    return (
        doc
        if how == "proactive"
        else doc.replace(", selectionPolicy: {sortPolicy: DescendingOrder}", "").replace(
            "proactive", how
        )
    )


async def cli(st: Stack, *args: str, stdin: str | None = None) -> Result:
    return await virtbus(*args, "--server", st.url, stdin=stdin)


async def last_seq(st: Stack) -> int:
    return int((await st.nc.jetstream().stream_info(st.store.stream)).state.last_seq)


async def next_event(st: Stack, ref: Ref, kind: type[m.Event], *, after: int) -> Recorded:
    """The first `kind` of `ref` recorded past stream sequence `after`, off a live tail."""
    async with (
        asyncio.timeout(60),
        contextlib.aclosing(st.store.follow(from_seq=after + 1)) as tail,
    ):
        async for rec in tail:
            if rec.subject.startswith(f"{ref.prefix}.") and isinstance(rec.envelope.data, kind):
                return rec
    raise AssertionError("the tail of the log ended")  # follow() never ends by itself


async def history(st: Stack, ref: Ref) -> list[m.Event]:
    return [r.envelope.data for r in await st.store.read(ref)]


def named(events: list[m.Event], *kinds: type[m.Event]) -> list[m.Event]:
    return [e for e in events if isinstance(e, kinds)]


async def pool_decisions(st: Stack) -> list[tuple[str, str]]:
    items = (await cli(st, "history", "vmpool/db", "-o", "json")).ok().json()["items"]
    return [(i["type"].removeprefix("io.virtbus.vmpool."), i["summary"]) for i in items
            if i["category"] == "Decision" and "spec" not in i["summary"]]  # fmt: skip


DATA = [Ref("volume", "default", f"data-{i}") for i in (0, 1)]


async def test_offline_state_preservation_keeps_a_scaled_in_vms_disk_for_its_return(
    stack: Stack,
) -> None:
    await stack.node("node-a")
    bad = await cli(stack, "apply", "-f", "-", stdin=pool(2, keep="Suspended"))
    assert (bad.code, bad.out, bad.err) == (1, "", (
        "error: spec.scaleInStrategy.proactive.statePreservation: Unsupported value: "
        '"Suspended": supported values: "Disabled", "Offline", "Online"\n'))  # fmt: skip

    after = await last_seq(stack)
    applied = (await cli(stack, "apply", "-f", "-", stdin=pool(2))).ok()
    assert (applied.out, applied.err) == ("virtualmachinepool.pool.kubevirt.io/db created\n", "")
    for i in (0, 1):
        await next_event(stack, Ref.vm(f"db-{i}"), m.DomainStarted, after=after)

    # Scaling in deletes db-1 (DescendingOrder) but first releases its DataVolume.
    after = await last_seq(stack)
    (await cli(stack, "scale", "vmpool", "db", "--replicas", "1")).ok()
    await next_event(stack, Ref.vm("db-1"), m.VMDeleted, after=after)
    kept = "kept when pool db scaled in db-1 (statePreservation Offline)"
    assert named(await history(stack, DATA[1]), m.VolumeReleased, m.VolumeDeleted) == [
        m.VolumeReleased(owner="db-1", reason=kept)]  # fmt: skip
    why = "pool db scaled in to 1; its DataVolumes data-1 are kept (statePreservation Offline)"
    assert named(await history(stack, Ref.vm("db-1")), m.VMDeleteRequested) == [
        m.VMDeleteRequested(reason=why)]  # fmt: skip
    dv = (await cli(stack, "get", "dv", "data-1", "-o", "json")).ok().json()
    assert "ownerReferences" not in dv["metadata"]  # KubeVirt's mark: no owner left
    table = (await cli(stack, "get", "vmpool", "db")).ok().out.splitlines()
    assert [row.split()[:4] for row in table] == [  # a kept disk is no replica
        ["NAME", "DESIRED", "CURRENT", "READY"], ["db", "1", "1", "1"]]  # fmt: skip

    # Scaling out makes db-1 again, the lowest free index: it takes data-1, makes none.
    after = await last_seq(stack)
    (await cli(stack, "scale", "vmpool", "db", "--replicas", "2")).ok()
    await next_event(stack, Ref.vm("db-1"), m.DomainStarted, after=after)
    await next_event(stack, Ref.of("vmpool", "db"), m.VMPoolStateReused, after=after)
    data = await history(stack, DATA[1])
    assert [type(e).__name__ for e in named(data, m.VolumeCreated, m.VolumeReleased,
                                            m.VolumeAdopted, m.VolumeDeleted)] == [
        "VolumeCreated", "VolumeReleased", "VolumeAdopted"]  # fmt: skip
    assert named(data, m.VolumeAdopted) == [
        m.VolumeAdopted(owner="db-1", reason="kept at index 1 of pool db: db-1 names it")
    ]
    dv = (await cli(stack, "get", "dv", "data-1", "-o", "json")).ok().json()
    assert [o["name"] for o in dv["metadata"]["ownerReferences"]] == ["db-1"]
    assert await pool_decisions(stack) == [
        ("scaled.v1", "replicas=1"),
        ("state_preserved.v1", "vm=db-1, volumes=['data-1'], strategy=proactive, "
                               "state_preservation=Offline"),
        ("scaled.v1", "replicas=2"),
        ("state_reused.v1", "vm=db-1, volumes=['data-1']"),
    ]  # fmt: skip


async def test_changed_data_volume_templates_remake_the_running_vm(stack: Stack) -> None:
    """KubeVirt's proactive update deletes a running pool VM whose dataVolumeTemplates changed
    and makes it again, with new DataVolumes (its old ones go with it: Disabled)."""
    await stack.node("node-a")
    after = await last_seq(stack)
    (await cli(stack, "apply", "-f", "-", stdin=pool(1, keep="Disabled"))).ok()
    await next_event(stack, Ref.vm("db-0"), m.DomainStarted, after=after)

    after = await last_seq(stack)
    changed = await cli(stack, "apply", "-f", "-", stdin=pool(1, keep="Disabled", size="2Mi"))
    assert changed.ok().out == "virtualmachinepool.pool.kubevirt.io/db configured\n"
    gone = await next_event(stack, Ref.vm("db-0"), m.VMDeleted, after=after)
    await next_event(stack, Ref.vm("db-0"), m.DomainStarted, after=gone.seq)
    why = "pool db: dataVolumeTemplates changed (updateStrategy proactive): remade with new ones"
    lives = named(await history(stack, Ref.vm("db-0")), m.VMCreated, m.VMDeleteRequested,
                  m.VMSpecChanged)  # fmt: skip
    assert [type(e).__name__ for e in lives] == ["VMCreated", "VMDeleteRequested", "VMCreated"]
    assert lives[1] == m.VMDeleteRequested(reason=why)
    size: Any = lives[2].spec["dataVolumeTemplates"][0]["spec"]  # type: ignore[union-attr]
    assert size["storage"]["resources"]["requests"]["storage"] == "2Mi"
    sizes = [e.size_bytes for e in named(await history(stack, DATA[0]), m.VolumeCreated)]
    assert sizes == [1 << 20, 2 << 20]  # the old one deleted with the VM, a new one made
    assert named(await history(stack, DATA[0]), m.VolumeDeleted) == [m.VolumeDeleted()]
    assert await pool_decisions(stack) == [
        ("vm_replaced.v1", "vm=db-0, reason=dataVolumeTemplates changed")
    ]


async def test_opportunistic_state_preservation_keeps_what_a_user_deletes(stack: Stack) -> None:
    """`opportunistic`: the pool deletes nothing itself; a VM its user deletes leaves its
    DataVolume, which the VM the pool makes again at that index adopts."""
    await stack.node("node-a")
    after = await last_seq(stack)
    (await cli(stack, "apply", "-f", "-", stdin=pool(1, how="opportunistic"))).ok()
    await next_event(stack, Ref.vm("db-0"), m.DomainStarted, after=after)

    after = await last_seq(stack)
    (await cli(stack, "delete", "vm", "db-0")).ok()
    gone = await next_event(stack, Ref.vm("db-0"), m.VMDeleted, after=after)
    await next_event(stack, Ref.vm("db-0"), m.DomainStarted, after=gone.seq)
    await next_event(stack, DATA[0], m.VolumeAdopted, after=gone.seq)
    kept = "kept when db-0 was deleted (pool db, opportunistic: Offline)"
    assert named(await history(stack, DATA[0]), m.VolumeCreated, m.VolumeReleased,
                 m.VolumeAdopted, m.VolumeDeleted)[1:] == [
        m.VolumeReleased(owner="db-0", reason=kept),
        m.VolumeAdopted(owner="db-0", reason="kept at index 0 of pool db: db-0 names it"),
    ]  # fmt: skip
    await next_event(stack, Ref.of("vmpool", "db"), m.VMPoolStateReused, after=gone.seq)
    assert await pool_decisions(stack) == [
        ("state_preserved.v1", "vm=db-0, volumes=['data-0'], strategy=opportunistic, "
                               "state_preservation=Offline"),
        ("state_reused.v1", "vm=db-0, volumes=['data-0']"),
    ]  # fmt: skip
