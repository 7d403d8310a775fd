"""Reads of the log confined to a role's namespaces, on a real secured nats-server.

A user reads only by consumers under its own slot names, with the filter in the API subject the
server checks (`bus/readscope.py`); what it may not ask, the server refuses in its own words, and
the readers shape every read to what it may (`bus/consumers.py`), so `history`, replays and
follows of its namespaces work and another's is "forbidden".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest
from secured import User, login, violation

from bus.connect import connect
from bus.history import read_history
from bus.readscope import ReadScope, meet, read_scope
from bus.roles import user_permissions
from bus.store import EventStore
from bus.trust import Trust
from bus.vms import VMRepository
from events import model as m
from events.errors import ValidationError
from events.names import Ref

X = Ref.vm("x", "team-a")


@pytest.fixture
async def teams(bus: tuple[str, Trust]) -> AsyncIterator[tuple[str, Trust]]:
    """Beside default/a: team-a/x with one command asked of it, and the intake's durable
    consumer on the commands, as the orchestrator keeps it."""
    url, trust = bus
    admin = await connect(url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
    try:
        await EventStore(admin).append(X, [m.VMCreated(spec={})], expected_version=0)
        js = admin.jetstream()
        for ns, name in (("team-a", "x"), ("default", "a")):
            body = msgspec.json.encode({"kind": "StartVM", "name": name, "namespace": ns})
            await js.publish(f"virt.cmd.vm.{ns}.{name}.StartVM.admin", body)
        sub = await js.pull_subscribe("virt.cmd.>", durable="orchestrator-intake",
                                      stream="VIRT_COMMANDS")  # fmt: skip
        await sub.unsubscribe()
    finally:
        await admin.close()
    yield url, trust


def test_filters_meet_token_by_token() -> None:
    assert [meet("virt.>", "virt.vm.*.>"), meet("virt.vm.a.x.>", "virt.*.a.>"),
            meet("virt.vm.b.x.>", "virt.*.a.>"), meet("virt.vm.*.*.>", "virt.*.a.>"),
            meet("virt.vm", "virt.vm.>"), meet(">", "virt.user._.ann.>")] == [
        "virt.vm.*.>", "virt.vm.a.x.>", None, "virt.vm.a.*.>", None, "virt.user._.ann.>",
    ]  # fmt: skip


def test_a_scope_is_read_back_from_the_permissions_it_was_written_into() -> None:
    perms = user_permissions("edit", name="ann", namespaces=("team-a", "team-b"))
    scope = ReadScope.of_claims({"nats": {"pub": {"allow": list(perms.publish)}}})
    assert scope == ReadScope(
        slots=("rd_ann_0", "rd_ann_1", "rd_ann_2", "rd_ann_3"),
        trees={"VIRT_EVENTS": ("virt.*.team-a.>", "virt.*.team-b.>",
                               "virt.clusterinstancetype._.>", "virt.clusterpreference._.>",
                               "virt.user._.ann.>"),
               "VIRT_COMMANDS": ("virt.cmd.*.team-a.>", "virt.cmd.*.team-b.>")},
        direct=False,
    )  # fmt: skip
    assert ReadScope.of_claims({"nats": {}}) == ReadScope()  # an admin's: everything


async def test_a_namespaced_user_reads_its_namespaces_and_no_other(
    teams: tuple[str, Trust],
) -> None:
    tess = await login(*teams, "tess", "view", "team-a")
    try:
        assert read_scope(tess.nc).direct is False
        store = EventStore(tess.nc)
        assert [type(r.envelope.data) for r in await store.read(X)] == [m.VMCreated]
        assert list(await VMRepository(store).all()) == [X]  # default/a is not replayed to it
        found = await read_history(tess.nc, X)
        assert [type(r.envelope.data) for r in found.events] == [m.VMCreated]
        assert [(c.kind, c.actor) for c in found.commands] == [("StartVM", "")]
        with pytest.raises(ValidationError) as err:
            await read_history(tess.nc, Ref.vm("a"))
        assert err.value.message == (
            'forbidden: these credentials cannot read the history of virtualmachines in the '
            'namespace "default"'
        )  # fmt: skip
        assert await store.read(Ref.vm("a")) == []  # the store asks nothing it may not read
        assert tess.errors.empty(), tess.errors.get_nowait()  # and met no refusal doing so
    finally:
        await tess.nc.close()


async def test_what_a_user_may_not_ask_of_the_log_the_server_refuses(
    teams: tuple[str, Trust],
) -> None:
    tess = await login(*teams, "tess", "view", "team-a")
    try:
        await tess.allowed("$JS.API.CONSUMER.CREATE.VIRT_EVENTS.rd_tess_0.virt.vm.team-a.x.>")
        for subject in (
            "$JS.API.DIRECT.GET.VIRT_EVENTS",  # its filter is in the body: unchecked
            "$JS.API.DIRECT.GET.VIRT_COMMANDS.virt.cmd.vm.default.a.StartVM.admin",
            "$JS.API.STREAM.INFO.VIRT_EVENTS",  # would list every VM's subject
            "$JS.API.CONSUMER.CREATE.VIRT_EVENTS",  # named and filtered in the body
            "$JS.API.CONSUMER.CREATE.VIRT_EVENTS.rd_tess_0",  # no filter to check
            "$JS.API.CONSUMER.CREATE.VIRT_EVENTS.rd_tess_0.virt.>",
            "$JS.API.CONSUMER.CREATE.VIRT_EVENTS.rd_tess_0.virt.vm.default.>",
            "$JS.API.CONSUMER.CREATE.VIRT_EVENTS.rd_tess_0.virt.*.*.>",
            "$JS.API.CONSUMER.CREATE.VIRT_EVENTS.rd_tess_0.virt.node._.>",
            "$JS.API.CONSUMER.CREATE.VIRT_EVENTS.rd_tess_0.virt.user._.admin.>",
            "$JS.API.CONSUMER.CREATE.VIRT_EVENTS.rd_ann_0.virt.vm.team-a.>",  # another's slot
            # the intake's durable: retargeted, pulled from, deleted, its deliveries acked
            "$JS.API.CONSUMER.CREATE.VIRT_COMMANDS.orchestrator-intake.virt.cmd.vm.team-a.>",
            "$JS.API.CONSUMER.MSG.NEXT.VIRT_COMMANDS.orchestrator-intake",
            "$JS.API.CONSUMER.DELETE.VIRT_COMMANDS.orchestrator-intake",
            "$JS.ACK.VIRT_COMMANDS.orchestrator-intake.1.1.1.1.0",
        ):
            assert await tess.denied(subject) == violation(subject.lower())
    finally:
        await tess.nc.close()


async def _first(tail: AsyncIterator[object]) -> object:
    return await anext(tail)


async def test_reads_at_once_take_free_slots_and_wait_for_one(teams: tuple[str, Trust]) -> None:
    """Four follows hold the user's four slots; a fifth read waits, and runs once one ends."""
    url, trust = teams
    tess: User = await login(url, trust, "tess", "view", "team-a")
    store = EventStore(tess.nc)
    tails = [store.follow(from_seq=1, subjects=[X.wildcard]) for _ in range(4)]
    try:
        firsts = await asyncio.gather(*(_first(t) for t in tails))  # each holds its consumer
        assert [type(r.envelope.data) for r in firsts] == [m.VMCreated] * 4  # type: ignore[attr-defined]
        read = asyncio.create_task(store.read(X), name="fifth-read")
        done, _ = await asyncio.wait([read], timeout=0.3)  # it must be waiting, not refused
        assert done == set()
        await tails.pop().aclose()  # frees its slot
        assert [type(r.envelope.data) for r in await read] == [m.VMCreated]
    finally:
        for t in tails:
            with contextlib.suppress(Exception):
                await t.aclose()
        await tess.nc.close()


async def test_a_follow_sees_its_namespaces_new_events_only(teams: tuple[str, Trust]) -> None:
    url, trust = teams
    tess = await login(url, trust, "tess", "view", "team-a")
    admin = await connect(url, creds=trust.ensure_creds("admin"), tls_ca=trust.ca_file)
    tail = EventStore(tess.nc).follow()  # the whole log, as far as it reads it
    try:
        first = asyncio.create_task(_first(tail), name="follow-first")
        writer = EventStore(admin)
        await writer.append_fact(Ref.vm("a"), [m.VMStartRequested()])  # default: not its
        appended = await writer.append_fact(X, [m.VMStartRequested()])
        rec = await asyncio.wait_for(first, 10)
        got = (rec.subject, rec.seq)  # type: ignore[attr-defined]
        assert got == (f"{X.prefix}.{m.TOKEN[m.VMStartRequested]}", appended.seq)
    finally:
        await tail.aclose()
        await tess.nc.close()
        await admin.close()
