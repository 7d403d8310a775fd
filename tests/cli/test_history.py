"""`virtbus history` and `--at` on a real run: the orchestrator and a node worker on libvirt's test
driver, the CLI as a subprocess, a VM created, started, paused, stopped, deleted and re-created.

The live state is recorded with `get vm -o json` at quiet moments of the run; `history --at` must
print each exactly.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from clirun import CLI, Result, virtbus
from driverstack import Stack, seed
from waits import settle

from bus.client import Rejected, query, send
from bus.history import parse_time, read_history
from bus.reader import direct_seqs
from bus.store import EventStore
from events import commands as c
from events import model as m
from events.envelope import encode, seal
from events.errors import ValidationError
from events.names import EVENTS_STREAM, Ref
from events.protocol import Query

NAME = "centos7"


async def cli(st: Stack, *args: str) -> Result:
    return await virtbus(*args, "--server", st.url)


async def moment(st: Stack, name: str) -> tuple[datetime, Result]:
    """`get vm NAME -o json` once the read model has caught up with the log, and a time at which
    nothing more had been recorded for the VM."""
    ref = Ref.vm(name)
    for _ in range(100):
        head = (await st.store.head(ref, fresh=True)).version
        got = await cli(st, "get", "vm", name, "-o", "json")
        at = datetime.now(UTC)
        after = (await st.store.head(ref, fresh=True)).version
        caught_up = got.code != 0 or json.loads(got.out)["metadata"]["resourceVersion"] == str(head)
        if head == after and caught_up:
            return at, got
        await asyncio.sleep(0.1)
    pytest.fail(f"{name}: the read model never caught up with the log")


async def until_deleted(st: Stack, name: str) -> None:
    for _ in range(400):
        if (await st.state(name)).deleted:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{name} was never deleted")


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_history_and_time_travel_over_two_lives(stack: Stack) -> None:
    st = stack
    st.provide_seed_volumes("node-a")
    await st.node("node-a")
    moments: list[tuple[str, datetime, Result]] = []

    async def record(label: str) -> None:
        at, got = await moment(st, NAME)
        moments.append((label, at, got))

    await send(st.nc, msgspec.structs.replace(seed(NAME), actor="alice"))
    await record("created")
    await send(st.nc, c.StartVM(name=NAME, actor="alice"))
    await st.until(NAME, "Running")
    await record("running")
    await send(st.nc, c.PauseVM(name=NAME, actor="bob"))
    await st.until(NAME, "Paused")
    await record("paused")
    with pytest.raises(Rejected, match="VMI is already paused"):
        await send(st.nc, c.PauseVM(name=NAME, actor="mallory", id="pause-again"))
    await send(st.nc, c.StopVM(name=NAME, actor="bob"))
    await st.until(NAME, "Stopped")
    await record("stopped")
    await send(st.nc, c.DeleteVM(name=NAME, actor="carol"))
    await until_deleted(st, NAME)
    await record("deleted")
    await send(st.nc, msgspec.structs.replace(seed(NAME), actor="dave"))
    await record("re-created")

    # Time travel: each recorded state, exactly.
    for label, at, live in moments:
        past = await cli(st, "history", NAME, "--at", rfc3339(at), "-o", "json")
        if label == "deleted":
            assert live.code == past.code == 1, (live, past)
            assert f'"{NAME}" not found at' in past.err and "deleted" in past.err
            continue
        assert past.json() == live.json(), label
    before = await cli(st, "history", NAME, "--at", rfc3339(moments[0][1] - timedelta(hours=1)))
    assert before.code == 1 and "did not exist yet" in before.err
    yaml_at = await cli(st, "history", NAME, "--at", rfc3339(moments[2][1]), "-o", "yaml")
    assert "printableStatus: Paused" in yaml_at.ok().out

    # Through the read model's index and through the subject tree: the same history.
    ref = Ref.vm(NAME)
    index = (await query(st.nc, Query(what="history", name=NAME))).history
    by_index, by_subject = (
        await read_history(st.nc, ref),
        await read_history(st.nc, ref, indexed=False),
    )
    assert index == [(r.envelope.version, r.seq) for r in by_subject.events]
    assert by_index == by_subject and len(by_subject.commands) == 7

    # The history: commands with actor and outcome, decisions, observations, status after each.
    doc = (await cli(st, "history", NAME, "-o", "json")).json()
    assert doc["kind"] == "List"
    items: list[dict[str, Any]] = doc["items"]
    assert {i["life"] for i in items} == {1, 2}
    commands = [(i["type"], i["actor"], i["summary"]) for i in items if i["category"] == "Command"]
    assert [(k, a) for k, a, _ in commands] == [
        ("ApplyVM", "alice"), ("StartVM", "alice"), ("PauseVM", "bob"), ("PauseVM", "mallory"),
        ("StopVM", "bob"), ("DeleteVM", "carol"), ("ApplyVM", "dave"),
    ]  # fmt: skip
    assert commands[1][2] == "StartVM: accepted -> VMStartRequested"
    assert commands[3][2] == "PauseVM: rejected: VMI is already paused"
    rejected = [i for i in items if i["category"] == "Rejection"]
    assert [(r["correlationid"], r["status"]) for r in rejected] == [("pause-again", "Paused")]
    observed = [(i["type"], i["status"]) for i in items if i["category"] == "Observation"]
    assert ("io.virtbus.vm.domain_started.v1", "Running") in observed
    assert ("io.virtbus.vm.domain_paused.v1", "Paused") in observed
    by_type = {i["type"]: i for i in items if i["category"] != "Command"}
    assert by_type["io.virtbus.vm.deleted.v1"]["status"] == "Deleted"
    assert by_type["io.virtbus.vm.start_requested.v1"]["actor"] == "alice"
    assert by_type["io.virtbus.vm.start_requested.v1"]["category"] == "Decision"
    lives = [i["life"] for i in items]
    assert lives == sorted(lives)  # the first life is over before the second begins
    second = [i for i in items if i["life"] == 2]
    assert second[0]["type"] == "ApplyVM" and second[-1]["status"] == "Stopped"
    assert [i["seq"] for i in items if i["category"] != "Command"] == sorted(
        i["seq"] for i in items if i["category"] != "Command"
    )

    # The table shows each life apart; --since cuts the window but not the statuses.
    text = (await cli(st, "history", NAME)).ok().out
    assert text.splitlines()[0].split() == ["TIME", "CATEGORY", "TYPE", "ACTOR", "STATUS",
                                            "SUMMARY"]  # fmt: skip
    assert "# life 1: created" in text and ", deleted " in text and "# life 2: created" in text
    assert text.index("# life 1") < text.index("vm.deleted") < text.index("# life 2")
    since = moments[3][1]
    cut = (await cli(st, "history", NAME, "--since", rfc3339(since), "-o", "json")).json()["items"]
    assert cut and all(datetime.fromisoformat(i["time"]) >= since for i in cut)
    assert cut[0]["type"] == "DeleteVM"
    assert cut[0]["status"] == "Stopped"  # the status the earlier events left it in
    recent = (await cli(st, "history", NAME, "--since", "1h", "--until", "0s", "-o", "yaml")).ok()
    assert recent.out.count("correlationid:") == len(items)


async def test_history_follow_prints_new_entries(stack: Stack) -> None:
    st = stack
    await send(st.nc, msgspec.structs.replace(seed("follow"), actor="alice"))
    proc = await asyncio.create_subprocess_exec(
        *CLI, "history", "follow", "--follow", "-o", "json",
        "--server", st.url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readuntil(b"}\n}\n"), 30)
        assert json.loads(first)["items"][0]["type"] == "ApplyVM"
        with pytest.raises(Rejected):
            await send(st.nc, c.PauseVM(name="follow", actor="eve", id="pause-stopped"))
        seen: list[dict[str, Any]] = []
        # Two streams feed the follow: the command and its rejection may come in either order.
        while {"Command", "Rejection"} - {e["category"] for e in seen}:
            try:
                chunk = await asyncio.wait_for(proc.stdout.readuntil(b"\n}\n"), 30)
            except TimeoutError:
                pytest.fail(f"follow printed no command and rejection; saw {seen}")
            seen.append(json.loads(chunk))
        asked = [e for e in seen if e["category"] == "Command"]
        assert asked and asked[0]["actor"] == "eve" and asked[0]["correlationid"] == "pause-stopped"
    finally:
        proc.terminate()
        await settle("history --follow", proc.wait())


async def test_history_input_errors(stack: Stack) -> None:
    st = stack
    missing = await cli(st, "history", "never-made")
    assert missing.code == 1 and 'virtualmachines.kubevirt.io "never-made" not found' in missing.err
    bad_name = await cli(st, "history", "Not_A_Name")
    assert bad_name.code == 2 and "DNS-1123" in bad_name.err
    bad_time = await cli(st, "history", "x", "--since", "yesterday")
    assert bad_time.code == 2 and "--since" in bad_time.err and "RFC 3339" in bad_time.err
    bad_output = await cli(st, "history", "x", "-o", "wide")
    assert bad_output.code == 2 and "-o 'wide'" in bad_output.err
    both = await cli(st, "history", "x", "--at", "1m", "--follow")
    assert both.code == 2 and "--at" in both.err
    # A history that does not chain is not printed: neither through the index nor the subject.
    await send(st.nc, seed("forged"))
    _, raw = seal(m.VMStopped(reason="forged"), ref=Ref.vm("forged"), version=2,
                  prevhash="0" * 64, source="/virtbus/orchestrator/controller")  # fmt: skip
    await st.nc.jetstream().publish(Ref.vm("forged").event_subject("stopped"), raw)
    forged = await cli(st, "history", "forged")
    assert forged.code == 1 and forged.out == ""
    assert "does not chain" in forged.err and "run `virtbus audit verify forged`" in forged.err


def test_parse_time_takes_rfc3339_and_durations() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_time("10m", now=now) == datetime(2026, 11, 27, 11, 50, tzinfo=UTC)
    assert parse_time("1d2h3m4s", now=now) == now - timedelta(days=1, hours=2, minutes=3, seconds=4)
    assert parse_time("2026-11-27T08:00:00Z") == datetime(2026, 11, 27, 8, tzinfo=UTC)
    assert parse_time("2026-11-27T09:00:00+01:00") == datetime(2026, 11, 27, 8, tzinfo=UTC)
    assert parse_time("2026-11-27T08:00:00") == datetime(2026, 11, 27, 8, tzinfo=UTC)
    for bad in ("", "10x", "m10", "soon"):
        with pytest.raises(ValidationError, match="RFC 3339"):
            parse_time(bad)


async def test_bench_history_prints_one_json_object_with_the_ratios() -> None:
    got = await virtbus("bench", "history", "--events", "2000", "--vm-events", "20", "--rounds",
                        "1", "-o", "json")  # fmt: skip
    r = json.loads(got.ok().out)
    assert (r["events"], r["vm_events"], r["rounds"], r["target_ms"]) == (2000, 20, 1, 50)
    for key in ("virtbus", "virtbus_subject", "get_msg", "ordered_consumer", "batched_direct_get",
                "direct_get_by_seq"):  # fmt: skip
        assert r[f"{key}_ms_p50"] > 0
    assert r["ratio"] == round(r["virtbus_ms_p50"] / r["baseline_ms_p50"], 2)
    too_many = await virtbus("bench", "history", "--events", "1000", "--vm-events", "600")
    assert too_many.code == 2 and "--vm-events 600: at most half of --events" in too_many.err


async def test_direct_seqs_reads_more_than_a_window_and_skips_what_is_not_there(
    store: EventStore, vm: Ref
) -> None:
    events: list[m.Event] = [m.VMScheduled(node="n", vmi_uid=str(i)) for i in range(1100)]
    await store.append(vm, events[:1000], expected_version=0)
    await store.append(vm, events[1000:], expected_version=1000)
    recorded = await store.read(vm)
    seqs = [r.seq for r in recorded]
    got = await direct_seqs(store.nc, EVENTS_STREAM, [10**12, *reversed(seqs)])
    assert [seq for _, _, seq in got] == seqs  # in stream order, the missing one left out
    assert [data for data, _, _ in got][-1] == encode(recorded[-1].envelope)


async def test_history_and_time_travel_across_a_migration_and_a_snapshot(
    stack: Stack,
) -> None:
    """The issue's journey: created, started, migrated (a cold move: the test driver cannot
    migrate live), snapshotted, deleted, re-created; `--at` gives back each moment exactly."""
    st, name = stack, "journey"
    for node in ("node-a", "node-b"):
        st.provide_seed_volumes(node)
        await st.node(node)
    moments: list[tuple[str, datetime, Result]] = []

    async def record(label: str) -> None:
        at, got = await moment(st, name)
        moments.append((label, at, got))

    async def until(kind: type[m.Event]) -> None:
        for _ in range(400):
            if any(isinstance(r.envelope.data, kind) for r in await st.store.read(Ref.vm(name))):
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"{name}: no {kind.__name__}")

    await send(st.nc, seed(name))
    await record("created")
    await send(st.nc, c.StartVM(name=name))
    assert (await st.until(name, "Running")).node == "node-a"
    await record("running on node-a")
    await send(st.nc, c.MigrateVM(name=name, target_node="node-b"))
    await until(m.MigrationSucceeded)
    assert (await st.until(name, "Running")).node == "node-b"
    await record("migrated to node-b")
    await send(st.nc, c.SnapshotVM(name=name, snapshot="after-move"))
    await until(m.SnapshotSucceeded)
    await record("snapshotted")
    await send(st.nc, c.DeleteVM(name=name))
    await until_deleted(st, name)
    await send(st.nc, seed(name))
    await record("re-created")

    for label, at, live in moments:
        past = await cli(st, "history", name, "--at", rfc3339(at), "-o", "json")
        assert past.json() == live.json(), label
    moved = (await cli(st, "history", name, "--at", rfc3339(moments[2][1]), "-o", "json")).json()
    assert moved["status"]["printableStatus"] == "Running"
    snapped = (await cli(st, "history", name, "--at", rfc3339(moments[3][1]), "-o", "json")).json()
    assert snapped["status"]["volumeSnapshotStatuses"][0]["enabled"] is True

    items = (await cli(st, "history", name, "-o", "json")).json()["items"]
    assert {i["life"] for i in items} == {1, 2}
    types = [i["type"] for i in items if i["life"] == 1]
    for kind in ("migration_scheduled", "migration_succeeded", "snapshot_requested",
                 "snapshot_succeeded", "deleted"):  # fmt: skip
        assert f"io.virtbus.vm.{kind}.v1" in types, kind
    assert types.index("io.virtbus.vm.migration_succeeded.v1") < types.index(
        "io.virtbus.vm.snapshot_requested.v1"
    )
    commands = [i["type"] for i in items if i["category"] == "Command"]
    assert commands == ["ApplyVM", "StartVM", "MigrateVM", "SnapshotVM", "DeleteVM", "ApplyVM"]
