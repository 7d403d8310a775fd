"""No single message stops a component: poison commands, foreign events, failing work items.

Each test puts one bad message where a client we did not write could put it, then shows what it
got (a `CommandRejected`, a skipped and named event, a failed VM) and that the component still
serves the next message. A real nats-server and orchestrator throughout (test_orchestrator's
`cluster` fixture); the work item test runs a real node worker on libvirt's test driver.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from clusterkit import Cluster, seed_apply
from nats.aio.client import Client
from waits import settle

from bus.audit import verify
from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from events import commands as c
from events import model as m
from events import work as w
from events.envelope import seal
from events.folding import Skipped
from events.model import TOKEN
from events.names import COMMANDS_STREAM, Ref, outcome_subject
from events.state import fold
from orchestrator.intake import DURABLE, UNJUDGED, Intake
from orchestrator.scheduler import NodeView
from workers.failures import failure_of

_VM: Any = {"namespace": "default", "name": "vm1", "node": "n1", "vmi_uid": "u1", "version": 3}


def _bad_nic_model(name: str, cid: str) -> dict[str, Any]:
    """The issue's reproduction: a NIC model that is a list, where a string belongs."""
    body: dict[str, Any] = msgspec.to_builtins(seed_apply(name))
    body["id"] = cid
    nics = body["spec"]["template"]["spec"]["domain"]["devices"].setdefault("interfaces", [])
    body["spec"]["template"]["spec"]["networks"] = [{"name": "default", "pod": {}}]
    nics[:] = [{"name": "default", "masquerade": {}, "model": ["x"]}]
    return body


async def _publish_and_wait(nc: Client, subject: str, body: bytes, cid: str) -> c.Outcome:
    """Publish on the command stream as any NATS client would; the outcome as announced."""
    sub = await nc.subscribe(outcome_subject(cid), max_msgs=1)
    try:
        await nc.jetstream().publish(subject, body)
        msg = await sub.next_msg(timeout=20)
    finally:
        await sub.unsubscribe()
    return msgspec.json.decode(msg.data, type=c.Outcome)


async def _forge(cl: Cluster, ref: Ref, event: m.Event, *, subject_attr: str | None = None) -> int:
    """Put `event` straight on the events stream, as a foreign writer can until the bus is
    locked down; optionally with an envelope `subject` that names no aggregate."""
    env, raw = seal(event, ref=ref, version=1, prevhash="", source="/somebody/else")
    if subject_attr is not None:
        raw = msgspec.json.encode(msgspec.structs.replace(env, subject=subject_attr))
    ack = await cl.nc.jetstream().publish(ref.event_subject(TOKEN[type(event)]), raw)
    return ack.seq


async def test_a_malformed_apply_is_rejected_naming_the_field_and_intake_goes_on(
    cluster: Cluster,
) -> None:
    """The issue's finding 1, through the stream door: rejected with the path, the message
    settled (not left to be redelivered), and the next command judged as usual."""
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    body = json.dumps(_bad_nic_model("p1", cid)).encode()
    out = await _publish_and_wait(cluster.nc, "virt.cmd.vm.default.p1.ApplyVM", body, cid)
    field = "spec.template.spec.domain.devices.interfaces[0].model"
    assert (out.accepted, out.field) == (False, field)
    [rec] = await cluster.history("p1")
    assert rec.envelope.data == m.CommandRejected(
        command_id=cid, command="ApplyVM", reason=out.reason, field=field
    )
    info = await cluster.nc.jetstream().consumer_info(COMMANDS_STREAM, DURABLE)
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
    assert (await cluster.send(seed_apply("p1"))).events == ["io.virtbus.vm.created.v1"]


async def test_a_malformed_apply_through_the_api_door_is_answered_rejected(
    cluster: Cluster,
) -> None:
    """The same command as a request to virtbus-api: the reply says why; the API answers on."""
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    reply = await cluster.nc.request(
        "virt.api.command", json.dumps(_bad_nic_model("p2", cid)).encode(), timeout=20
    )
    out = msgspec.json.decode(reply.data, type=c.Outcome)
    assert (out.command_id, out.accepted) == (cid, False)
    assert out.field == "spec.template.spec.domain.devices.interfaces[0].model"
    assert (await cluster.send(seed_apply("p2"))).events == ["io.virtbus.vm.created.v1"]


async def test_a_command_whose_judging_faults_is_rejected_and_terminated(
    tmp_path: Path,
) -> None:
    """A fault while judging (here: the controller's node view, which a MigrateVM consults,
    fails): the command is a CommandRejected saying so (no field can be named), its message is
    terminated rather than redelivered, and the intake judges the next command as usual."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        try:
            await provision(nc.jetstream())
            store = EventStore(nc, source="/tests")
            intake = Intake(nc, EventStore(nc, source="/tests/intake"))

            def nodes() -> list[NodeView]:
                raise RuntimeError("the node view is gone")

            intake.nodes = nodes
            stop = asyncio.Event()
            task = asyncio.create_task(intake.run(stop), name="test-intake")
            try:
                await store.append(Ref.vm("m1"), [seed_created()], expected_version=0)
                body = json.dumps({"kind": "MigrateVM", "id": "mig-1", "name": "m1",
                                   "target_node": "n1"}).encode()  # fmt: skip
                out = await _publish_and_wait(nc, "virt.cmd.vm.default.m1.MigrateVM", body, "mig-1")
                reason = f"{UNJUDGED}RuntimeError: the node view is gone"
                assert out == c.Outcome(command_id="mig-1", accepted=False, reason=reason)
                last = (await store.read(Ref.vm("m1")))[-1].envelope.data
                assert last == m.CommandRejected(command_id="mig-1", command="MigrateVM",
                                                 reason=reason)  # fmt: skip
                info = await nc.jetstream().consumer_info(COMMANDS_STREAM, DURABLE)
                assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
                assert (intake.unjudgeable, task.done()) == (1, False)
                body = json.dumps({"kind": "StartVM", "id": "start-1", "name": "m1"}).encode()
                out = await _publish_and_wait(nc, "virt.cmd.vm.default.m1.StartVM", body, "start-1")
                assert out.events == ["io.virtbus.vm.start_requested.v1"]
            finally:
                stop.set()
                await settle("the intake", task)
        finally:
            await nc.close()


def seed_created() -> m.VMCreated:
    apply = seed_apply("m1")
    return m.VMCreated(spec=apply.spec, run_strategy="Halted")


async def test_an_unfoldable_event_is_skipped_alike_and_named_by_audit(cluster: Cluster) -> None:
    """An event that decodes but that the fold cannot take (its envelope names no aggregate):
    every reader skips it the same way, the version still counts it, `audit verify` names it,
    and the controller goes on deciding for other VMs."""
    ref = Ref.vm("forged")
    seq = await _forge(cluster, ref, m.VMCreated(spec={}), subject_attr="nonsense")
    s = fold(r.envelope for r in await cluster.history("forged"))
    unpack = "ValueError: not enough values to unpack (expected 3, got 1)"
    skip = Skipped(version=1, type="VMCreated", reason=unpack)
    assert (s.exists, s.version, s.skipped) == (False, 1, (skip,))
    report = await verify(cluster.nc, key=None, ref=ref)
    assert [(f.aggregate, f.problem, f.seq) for f in report.findings] == [
        ("vm/default/forged", "unfoldable", seq)
    ]
    # The VM can still be made: the skipped event counted, so the append meets version 1.
    assert (await cluster.send(seed_apply("forged"))).version == 2
    await cluster.node("node-a")
    await cluster.send(c.StartVM(name="forged"))
    running = await cluster.until("forged", lambda s: s.status == "Running")
    assert (running.node, running.skipped) == ("node-a", ())  # a new life starts from nothing


async def test_an_undecodable_event_is_counted_skipped_and_named(cluster: Cluster) -> None:
    """Bytes on a VM's subject that are no event at all: skipped by the store (counted), named
    by `audit verify` as forged, and the VM's other events fold as before."""
    ref = Ref.vm("noise")
    ack = await cluster.nc.jetstream().publish(
        ref.event_subject(TOKEN[m.VMCreated]), b"\x00not json"
    )
    before = cluster.store.malformed
    assert await cluster.history("noise") == []
    assert cluster.store.malformed == before + 1
    report = await verify(cluster.nc, key=None, ref=ref)
    assert [(f.problem, f.seq) for f in report.findings] == [("forged", ack.seq)]


async def test_api_keeps_answering_after_a_barrage_of_junk(cluster: Cluster) -> None:
    """Junk of every shape through both doors; afterwards virtbus-api still answers."""
    long_name = json.dumps({"kind": "ApplyVM", "name": "x" * 10_000}).encode()
    junk: list[bytes] = [b"", b"null", b"[]", b"{", b'{"kind": 7}', b'{"kind": "ApplyVM"}',
                         b'{"kind": "StartVM", "name": ["x"]}', "\u0000\u202e".encode(),
                         long_name]  # fmt: skip
    js = cluster.nc.jetstream()
    for body in junk:
        await js.publish("virt.cmd.vm.default.junk.ApplyVM", body)
        reply = await cluster.nc.request("virt.api.command", body, timeout=20)
        assert msgspec.json.decode(reply.data, type=c.Outcome).accepted is False
    # Ordered behind the junk on the same subject: once it is judged, all of the junk was.
    out = await _publish_and_wait(
        cluster.nc, "virt.cmd.vm.default.junk.ApplyVM",
        json.dumps({**msgspec.to_builtins(seed_apply("junk")), "id": "after"}).encode(), "after",
    )  # fmt: skip
    assert out.accepted
    info = await js.consumer_info(COMMANDS_STREAM, DURABLE)
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
    kinds = [type(r.envelope.data).__name__ for r in await cluster.history("junk")]
    # Through the stream door each is recorded on the VM its subject names; the API door
    # answers a body that is no command at once, recording nothing (it names no target).
    assert kinds == ["CommandRejected"] * len(junk) + ["VMCreated"]


@pytest.mark.parametrize(
    ("item", "failed"),
    [
        (w.Start(**_VM, spec={}), m.VMStartFailed(reason="boom", node="n1")),
        (w.TakeSnapshot(**_VM, snapshot="s1"), m.SnapshotFailed(snapshot="s1", reason="boom")),
        (w.RestoreSnapshot(**_VM, snapshot="s1", restore="r1"),
         m.RestoreFailed(snapshot="s1", restore="r1", reason="boom")),
        (w.MigrateSource(**_VM, migration="m1", source="n1", target="n2"),
         m.MigrationFailed(migration="m1", reason="boom")),
        (w.AttachVolume(**_VM, volume={"name": "v1"}),
         m.VolumeAttachFailed(volume="v1", reason="boom", node="n1")),
        (w.Stop(**_VM), m.VMFailed(reason="boom", node="n1")),
    ],
)  # fmt: skip
def test_a_work_item_that_faults_fails_what_it_was_for(item: w.Work, failed: m.Event) -> None:
    """The node's answer to a work item it could not carry out: the failure of its own kind,
    on the VM it was for (the message is then terminated)."""
    assert failure_of(item, "boom", node="n1") == (Ref.vm("vm1"), failed)


def test_clean_up_work_that_faults_is_only_logged() -> None:
    """A failed clean-up changes nothing a user sees: no event, the fault is in the node's log."""
    assert failure_of(w.RemoveSnapshot(**_VM, snapshot="s1"), "boom", node="n1") is None
