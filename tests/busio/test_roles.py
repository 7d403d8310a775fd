"""The roles' permissions on a real secured nats-server: each denial in the server's own words.

A user's JWT carries its role's subjects (`bus/roles.py`); what it may not publish, the server
refuses with `Permissions Violation for Publish to "<subject>"`, as any NATS client would see it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from secured import User, login, violation
from webhook_receiver import Receiver

from bus import webhook_secrets as secrets
from bus.connect import connect, tls_context
from bus.roles import component_permissions, node_permissions, user_permissions
from bus.store import EventStore
from bus.trust import Trust
from bus.vms import VMRepository
from events import model as m
from events.names import CLUSTER, Ref
from orchestrator.webhooks.dispatcher import Dispatcher

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ=="  # 32 bytes


async def test_view_reads_and_commands_nothing(bus: tuple[str, Trust]) -> None:
    viewer = await login(*bus, "vera", "view")
    try:
        history = await EventStore(viewer.nc).read(Ref.vm("a"))
        assert [type(r.envelope.data) for r in history] == [m.VMCreated]
        # a whole replay, on the lean reader's own connection (its inbox is vera's too)
        assert list(await VMRepository(EventStore(viewer.nc)).all()) == [Ref.vm("a")]
        await viewer.allowed("virt.api.get.vera")
        for subject in (
            "virt.cmd.vm.default.a.StartVM.vera",
            "virt.api.get.alice",
            # webhook signing secrets: readable by the admin and the orchestrator only
            "$JS.API.DIRECT.GET.KV_virt_webhook_secrets.$KV.virt_webhook_secrets.hook",
            "$JS.API.STREAM.MSG.GET.KV_virt_webhook_secrets",
            "$JS.API.CONSUMER.CREATE.KV_virt_webhook_secrets",
            "virt.vm.default.a.VMScheduled",
            "$JS.API.STREAM.DELETE.VIRT_EVENTS",
            "virt.session.node-a.console.default.vera",  # a console is edit's
        ):
            assert await viewer.denied(subject) == violation(subject.lower())
    finally:
        await viewer.nc.close()


async def test_edit_commands_its_namespaces_under_its_own_name_only(
    bus: tuple[str, Trust],
) -> None:
    editor = await login(*bus, "eddie", "edit", "team-a")
    try:
        ack = await editor.nc.jetstream().publish("virt.cmd.vm.team-a.x.StartVM.eddie", b"{}")
        assert (ack.stream, ack.seq) == ("VIRT_COMMANDS", 1)
        await editor.allowed("virt.session.node-a.console.team-a.eddie")
        for subject in (
            "virt.cmd.vm.default.x.StartVM.eddie",  # a namespace not granted
            "virt.cmd.vm.team-a.x.StartVM.alice",  # another's name
            "virt.cmd.node._.node-a.DrainNode.eddie",  # nodes are the admin's
            "virt.vm.team-a.x.VMScheduled",  # a decision written straight into the log
            "$JS.API.STREAM.PURGE.VIRT_EVENTS",
            "$JS.API.STREAM.UPDATE.VIRT_EVENTS",
            "virt.session.node-a.console.default.eddie",  # a console in another namespace
            "virt.session.node-a.console.team-a.alice",  # under another's name
        ):
            assert await editor.denied(subject) == violation(subject.lower())
    finally:
        await editor.nc.close()


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role 'owner': one of admin, edit, view"):
        user_permissions("owner", name="x")


async def test_a_node_writes_its_observations_and_takes_its_own_work_only(
    bus: tuple[str, Trust],
) -> None:
    url, trust = bus
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def keep(err: Exception) -> None:
        errors.put_nowait(str(err))

    creds = trust.issue("node-a", permissions=node_permissions("node-a"))
    nc = await nats.connect(url, user_credentials=str(creds), tls=tls_context(trust.ca_file),
                            inbox_prefix="_INBOX_node-a", error_cb=keep)  # fmt: skip
    node = User(nc, errors)
    try:
        js = nc.jetstream()
        work = await js.pull_subscribe("virt.work.node-a.>", durable="worker-node-a",
                                       stream="VIRT_WORK")  # fmt: skip
        await work.unsubscribe()
        # Its name ends the subject (the server allows no other), whatever the body says.
        forger = EventStore(nc, writer="node-a", source="/virtbus/node/node-b")
        await forger.append_fact(Ref.vm("a"), [m.DomainStarted(node="node-b")])
        await js.key_value("virt_heartbeats")
        await node.allowed("$KV.virt_heartbeats.node-a")
        for subject in (
            "$JS.API.CONSUMER.CREATE.VIRT_WORK.worker-node-a.virt.work.node-b.>",  # b's work
            "$JS.API.CONSUMER.CREATE.VIRT_WORK.worker-node-b.virt.work.node-b.>",
            "$JS.API.CONSUMER.DURABLE.CREATE.VIRT_WORK.worker-node-a",  # no filter to check
            "$KV.virt_heartbeats.node-b",  # b's heartbeat
            "virt.vm.default.a.scheduled",  # a decision
            "virt.vm.default.a.domain_started",  # an observation under no name
            "virt.vm.default.a.domain_started.node-b",  # under another's
            "virt.node._.node-b.registered",  # about another node
            "virt.cmd.vm.default.a.StartVM.node-a",  # a command
            "$JS.API.STREAM.DELETE.VIRT_WORK",
            "virt.session.node-b.volume-read.default.admin",  # a session under another's name
        ):
            assert await node.denied(subject) == violation(subject.lower())
    finally:
        await nc.close()
    admin = await connect(url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
    try:
        history = await EventStore(admin).read(Ref.vm("a"))
    finally:
        await admin.close()
    assert [(type(r.envelope.data), r.actor) for r in history] == [
        (m.VMCreated, ""), (m.DomainStarted, "node/node-a"),
    ]  # fmt: skip


async def test_a_nodes_word_about_a_vm_placed_elsewhere_is_not_folded(
    bus: tuple[str, Trust],
) -> None:
    """node-b may write observations (its permissions allow the subject), but about a VM the log
    placed on node-a its word is skipped by every fold, and said why; node-a's is taken."""
    url, trust = bus
    admin = await connect(url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
    nodes = {}
    for name in ("node-a", "node-b"):
        creds = trust.issue(name, permissions=node_permissions(name))
        nodes[name] = await connect(url, creds=creds, tls_ca=trust.ca_file)
    try:
        ref = Ref.vm("a")
        placed = [m.VMStartRequested(), m.VMScheduled(node="node-a", vmi_uid="u1")]
        await EventStore(admin).append_fact(ref, placed)
        for name in ("node-b", "node-a"):
            await EventStore(nodes[name], writer=name).append_fact(
                ref, [m.DomainStarted(node=name)]
            )
        history = await EventStore(admin).read(ref)
        assert [r.actor for r in history][-2:] == ["node/node-b", "node/node-a"]
        state, _ = await VMRepository(EventStore(admin)).get(ref)
        assert (state.status, state.node) == ("Running", "node-a")
        assert [(s.type, s.reason) for s in state.skipped] == [(
            "DomainStarted",
            "ValueError: node node-b observed a VM the log places on node-a: not folded",
        )]  # fmt: skip
        rebuilt = (await VMRepository(EventStore(admin)).all())[ref]  # the start-up's lean path
        assert (rebuilt.status, rebuilt.skipped) == (state.status, state.skipped)
    finally:
        for nc in (admin, *nodes.values()):
            await nc.close()


async def test_the_dispatcher_delivers_on_its_own_credentials_and_may_do_no_more(
    bus: tuple[str, Trust], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`virtbus up` runs the webhook dispatcher as `dispatcher`: it follows the log, keeps its
    consumers and reads the signing secrets, and may write nothing but a subscription's end."""
    url, trust = bus
    monkeypatch.setenv("VIRTBUS_WEBHOOK_ALLOW_NETS", "127.0.0.0/8")  # the receiver is here
    admin = await connect(url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
    receiver = await Receiver([SECRET]).start()
    creds = trust.issue("dispatcher", permissions=component_permissions("dispatcher"))
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def keep(err: Exception) -> None:
        errors.put_nowait(str(err))

    nc = await nats.connect(url, user_credentials=str(creds), tls=tls_context(trust.ca_file),
                            inbox_prefix="_INBOX_dispatcher", error_cb=keep)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(nc, data_dir=tmp_path / "hooks").run(stop),
                               name="test-dispatcher")  # fmt: skip
    try:
        ref = secrets.new_ref("hook")
        await secrets.store(admin.jetstream(), ref, SECRET)
        subscribed = m.WebhookSubscribed(url=receiver.url, secret_ref=ref)
        await EventStore(admin).append(Ref.of("webhook", "hook", CLUSTER), [subscribed],
                                       expected_version=0)  # fmt: skip
        await EventStore(admin).append_fact(Ref.vm("a"), [m.VMStartRequested()])
        await receiver.until(lambda got: len(got) > 0)
        assert [g.event.get_type() for g in receiver.got] == ["io.virtbus.vm.start_requested.v1"]
        assert errors.empty(), errors.get_nowait()  # delivering met no refusal
        dispatcher = User(nc, errors)
        for subject in (
            "virt.cmd.vm.default.a.StartVM.dispatcher",  # a command
            "virt.vm.default.a.VMScheduled",  # a decision
            "virt.user._.mallory.UserAdded",
            "$JS.API.STREAM.DELETE.VIRT_EVENTS",
            "$JS.API.CONSUMER.CREATE.VIRT_COMMANDS",  # what users asked is not its to read
            "$JS.API.DIRECT.GET.VIRT_COMMANDS",
            "$KV.virt_heartbeats.node-a",
        ):
            assert await dispatcher.denied(subject) == violation(subject.lower())
    finally:
        stop.set()
        await task
        await nc.close()
        await receiver.stop()
        await admin.close()


async def test_the_orchestrator_may_do_all_but_lose_the_log(bus: tuple[str, Trust]) -> None:
    url, trust = bus
    creds = trust.issue("orchestrator", permissions=component_permissions("orchestrator"))
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def keep(err: Exception) -> None:
        errors.put_nowait(str(err))

    nc = await nats.connect(url, user_credentials=str(creds), tls=tls_context(trust.ca_file),
                            error_cb=keep)  # fmt: skip
    orchestrator = User(nc, errors)
    try:
        await orchestrator.allowed("virt.vm.default.a.VMScheduled")
        for subject in (
            "$JS.API.STREAM.DELETE.VIRT_EVENTS",
            "$JS.API.STREAM.PURGE.VIRT_COMMANDS",
            "$JS.API.STREAM.MSG.DELETE.VIRT_EVENTS",
        ):
            assert await orchestrator.denied(subject) == violation(subject.lower())
    finally:
        await nc.close()
