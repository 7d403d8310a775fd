"""Webhook subscribers end to end: a real bus, orchestrator, dispatcher and HTTP receivers.

Every delivery is verified with the `standardwebhooks` library and parsed with the `cloudevents`
SDK (tests/webhook_receiver.py). Retry delays are shrunk through VIRTBUS_WEBHOOK_RETRY_SCALE, the
same setting an operator has, not by mocking; nothing here asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from aiohttp import web
from nats.aio.client import Client
from nats.errors import NoRespondersError
from paths import ROOT
from waits import api_ready, settle
from webhook_receiver import Got, Receiver

from bus import webhook_secrets as secrets
from bus.client import Rejected, send
from bus.provision import provision
from bus.reader import pull_all
from bus.server import NatsServer
from bus.store import EventStore
from events import commands as c
from events import model as m
from events.names import COMMANDS_STREAM, EVENTS_STREAM, Ref
from events.webhooks import DELIVERIES_SUBJECT, DeliveriesQuery, Reply
from orchestrator.app import run_orchestrator

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ=="  # 32 bytes
SCALE = "0.00005"  # the whole 8-attempt schedule in ~5 s


class Stack:
    def __init__(self, nc: Client, url: str, tmp: Path) -> None:
        self.nc = nc
        self.url = url
        self.tmp = tmp
        self.store = EventStore(nc, source="/tests")
        self.receivers: list[Receiver] = []

    async def receiver(self, *secrets_: str, answer: Any = None) -> Receiver:
        r = Receiver(list(secrets_) or [SECRET])
        if answer is not None:
            r.answer = answer
        self.receivers.append(await r.start())
        return r

    async def subscribe(self, name: str, url: str, **kw: Any) -> None:
        """AddWebhook the way the CLI sends it: the secret in the bucket, its key in the command."""
        ref = secrets.new_ref(name)
        await secrets.store(self.nc.jetstream(), ref, kw.pop("secret", SECRET))
        await send(self.nc, c.AddWebhook(name=name, url=url, secret_ref=ref, **kw))

    async def emit(self, vm: str, n: int) -> None:
        """`n` events on `vm` (that no controller acts on), each its own append."""
        ref = Ref.vm(vm)
        version = (await self.store.head(ref, fresh=True)).version
        for _ in range(n):
            version += 1
            e = m.MigrationProgress(migration="bench", percent=float(version))
            await self.store.append(ref, [e], expected_version=version - 1)

    async def deliveries(self, name: str, **kw: Any) -> list[Any]:
        q = DeliveriesQuery(name=name, limit=10_000, **kw)
        msg = await self.nc.request(DELIVERIES_SUBJECT, msgspec.json.encode(q), timeout=5)
        return list(msgspec.json.decode(msg.data, type=Reply).items)

    async def until_deliveries(self, name: str, ok: Any, *, within: float = 30) -> list[Any]:
        items: list[Any] = []
        for _ in range(int(within / 0.1)):
            try:
                items = await self.deliveries(name)
            except NoRespondersError:  # a dispatcher process still starting
                items = []
            if ok(items):
                return items
            await asyncio.sleep(0.1)
        pytest.fail(f"deliveries of {name} never as expected: {items}")

    async def cli(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "virtbus", *args, "--server", self.url, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTBUS_WEBHOOK_ALLOW_NETS", "127.0.0.0/8")
    monkeypatch.setenv("VIRTBUS_WEBHOOK_RETRY_SCALE", SCALE)
    monkeypatch.setenv("VIRTBUS_WEBHOOK_TIMEOUT_S", "1")
    monkeypatch.setenv("VIRTBUS_WEBHOOK_ACK_WAIT_S", "2")


async def _stack(tmp_path: Path, *, webhooks: bool) -> AsyncIterator[Stack]:
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_orchestrator(nc, data_dir=tmp_path / "orch", stop=stop, webhooks=webhooks),
            name="test-orchestrator",
        )
        st = Stack(nc, server.url, tmp_path)
        try:
            await api_ready(nc)
            yield st
        finally:
            stop.set()
            await settle("the orchestrator", task)
            for r in st.receivers:
                await r.stop()
            await nc.close()


@pytest.fixture
async def stack(tmp_path: Path, env: None) -> AsyncIterator[Stack]:
    """Bus, orchestrator and its in-process dispatcher; receivers on 127.0.0.1 (allowed)."""
    async for st in _stack(tmp_path, webhooks=True):
        yield st


def by_vm(got: list[Got]) -> dict[str, list[int]]:
    """Per VM, the `version` of each first arrival, in arrival order."""
    out: dict[str, list[int]] = {}
    seen: set[str] = set()
    for g in got:
        if g.webhook_id in seen:
            continue
        seen.add(g.webhook_id)
        out.setdefault(g.event.get_subject(), []).append(json.loads(g.body)["version"])
    return out


# --- delivery ------------------------------------------------------------------------------------


async def test_events_arrive_signed_as_cloudevents_in_per_vm_order(stack: Stack) -> None:
    every, web_only = await stack.receiver(), await stack.receiver()
    await stack.subscribe("all-vms", every.url, types=["io.virtbus.vm.*"])
    await stack.subscribe("web", web_only.url, types=["io.virtbus.vm.*"], vm_pattern="web-*")
    await asyncio.gather(stack.emit("web-1", 20), stack.emit("web-2", 20), stack.emit("db-1", 20))
    await every.until(lambda got: len({g.webhook_id for g in got}) >= 60)
    await web_only.until(lambda got: len({g.webhook_id for g in got}) >= 40)

    assert by_vm(every.got) == {
        f"vm/default/{vm}": list(range(1, 21)) for vm in ("web-1", "web-2", "db-1")
    }
    assert set(by_vm(web_only.got)) == {"vm/default/web-1", "vm/default/web-2"}
    g = every.got[0]
    assert g.event.get_type() == "io.virtbus.vm.migration_progress.v1"
    assert g.headers["content-type"].startswith("application/cloudevents+json")
    assert g.webhook_id == f"{g.event.get_id()}-all-vms"
    # Exactly the bytes in the log, so what is signed, stored and received agree.
    stored = await stack.store.read(Ref.vm("web-1"))
    assert {r.envelope.id for r in stored} <= {x.event.get_id() for x in every.got}
    items = await stack.until_deliveries("all-vms", lambda i: len(i) == 60)
    assert {d.status for d in items} == {"Delivered"} and {d.attempts for d in items} == {1}


async def test_since_and_from_start_choose_where_deliveries_begin(stack: Stack) -> None:
    await stack.emit("early", 2)
    await asyncio.sleep(0.05)  # two distinct instants on either side of `since`
    since = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await stack.emit("late", 2)
    everything, after, new_only = (await stack.receiver(), await stack.receiver(),
                                   await stack.receiver())  # fmt: skip
    vm_types = ["io.virtbus.vm.*"]
    await stack.subscribe("everything", everything.url, types=vm_types, from_start=True)
    await stack.subscribe("after", after.url, types=vm_types, since=since)
    await stack.subscribe("new-only", new_only.url, types=vm_types)
    await stack.emit("later", 1)
    await everything.until(lambda got: len(got) == 5)
    await after.until(lambda got: len(got) == 3)
    await new_only.until(lambda got: len(got) == 1)
    assert set(by_vm(everything.got)) == {"vm/default/early", "vm/default/late", "vm/default/later"}
    assert set(by_vm(after.got)) == {"vm/default/late", "vm/default/later"}
    assert set(by_vm(new_only.got)) == {"vm/default/later"}


async def test_500_then_200_is_retried_with_the_same_webhook_id(stack: Stack) -> None:
    failures: dict[str, int] = {}

    async def flaky(g: Got) -> web.StreamResponse:
        failures[g.webhook_id] = failures.get(g.webhook_id, 0) + 1
        return web.Response(status=500 if failures[g.webhook_id] <= 2 else 200)

    r = await stack.receiver(answer=flaky)
    await stack.subscribe("flaky", r.url, types=["io.virtbus.vm.*"])
    await asyncio.gather(stack.emit("a", 5), stack.emit("b", 5))
    items = await stack.until_deliveries(
        "flaky", lambda i: len(i) == 10 and all(d.status == "Delivered" for d in i)
    )
    assert {d.attempts for d in items} == {3}
    assert set(failures.values()) == {3}  # each event: two 500s and one 200, one webhook-id
    assert by_vm(r.got) == {"vm/default/a": [1, 2, 3, 4, 5], "vm/default/b": [1, 2, 3, 4, 5]}
    # A VM's next event waits for the one before to succeed: its attempts never interleave.
    for vm in ("a", "b"):
        ids = [g.webhook_id for g in r.got if g.event.get_subject() == f"vm/default/{vm}"]
        assert ids == [i for i in dict.fromkeys(ids) for _ in range(3)]


async def test_a_timeout_is_a_failed_attempt(stack: Stack) -> None:
    slow_once: set[str] = set()

    async def slow(g: Got) -> web.StreamResponse:
        if g.webhook_id not in slow_once:
            slow_once.add(g.webhook_id)
            await asyncio.sleep(3)  # past VIRTBUS_WEBHOOK_TIMEOUT_S=1
        return web.Response(status=200)

    r = await stack.receiver(answer=slow)
    await stack.subscribe("slow", r.url, types=["io.virtbus.vm.*"])
    await stack.emit("t", 2)
    items = await stack.until_deliveries(
        "slow", lambda i: len(i) == 2 and all(d.status == "Delivered" for d in i)
    )
    assert [d.attempts for d in items] == [2, 2]
    assert by_vm(r.got) == {"vm/default/t": [1, 2]}


async def test_a_hanging_endpoint_does_not_stall_the_others(stack: Stack) -> None:
    release = asyncio.Event()

    async def hang(_: Got) -> web.StreamResponse:
        await release.wait()  # far past VIRTBUS_WEBHOOK_TIMEOUT_S=1
        return web.Response(status=200)

    stuck, fine = await stack.receiver(answer=hang), await stack.receiver()
    try:
        await stack.subscribe("stuck", stuck.url, types=["io.virtbus.vm.*"])
        await stack.subscribe("fine", fine.url, types=["io.virtbus.vm.*"])
        await asyncio.gather(*(stack.emit(f"h{i}", 1) for i in range(40)))
        await fine.until(lambda got: len(got) == 40)
        assert not any(d.status == "Delivered" for d in await stack.deliveries("stuck"))
        stuck_items = await stack.until_deliveries(
            "stuck", lambda i: any("timed out after 1s" in d.error for d in i)
        )
        assert not any(d.status == "Delivered" for d in stuck_items)
    finally:
        release.set()  # the receiver's hanging handlers end with the test


@pytest.fixture
async def capped(
    tmp_path: Path, env: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    """A cap of 4 POSTs per subscriber and a timeout longer than any test."""
    monkeypatch.setenv("VIRTBUS_WEBHOOK_CONCURRENCY", "4")
    monkeypatch.setenv("VIRTBUS_WEBHOOK_TIMEOUT_S", "60")
    async for st in _stack(tmp_path, webhooks=True):
        yield st


async def test_a_subscriber_never_has_more_posts_in_flight_than_its_cap(capped: Stack) -> None:
    gate = asyncio.Semaphore(0)
    inflight = {"now": 0, "max": 0}

    async def gated(_: Got) -> web.StreamResponse:
        inflight["now"] += 1
        inflight["max"] = max(inflight["max"], inflight["now"])
        try:
            await gate.acquire()  # the test lets one through at a time
        finally:
            inflight["now"] -= 1
        return web.Response(status=200)

    r = await capped.receiver(answer=gated)
    await capped.subscribe("cap", r.url, types=["io.virtbus.vm.*"])
    await asyncio.gather(*(capped.emit(f"c{i}", 1) for i in range(12)))  # 12 VMs at once
    try:
        for released in range(12):
            want = min(4, 12 - released)  # the cap, until fewer are left
            await r.until(lambda _, want=want: inflight["now"] == want)
            gate.release()
        await capped.until_deliveries(
            "cap", lambda i: len(i) == 12 and all(d.status == "Delivered" for d in i)
        )
    finally:
        for _ in range(12):
            gate.release()
    assert inflight["max"] == 4 and len(r.got) == 12


async def test_an_endpoint_that_goes_away_and_comes_back_gets_everything_in_order(
    stack: Stack,
) -> None:
    r = await stack.receiver()
    await stack.subscribe("away", r.url, types=["io.virtbus.vm.*"])
    await stack.emit("x", 1)
    await r.until(lambda got: len(got) == 1)
    await r.stop()
    await asyncio.gather(stack.emit("x", 4), stack.emit("y", 3))
    items = await stack.until_deliveries("away", lambda i: any(d.status == "Retrying" for d in i))
    assert any("Connect" in d.error or "refused" in d.error for d in items)
    await r.start()  # the same port
    await stack.until_deliveries(
        "away", lambda i: len(i) == 8 and all(d.status == "Delivered" for d in i)
    )
    assert by_vm(r.got) == {"vm/default/x": [1, 2, 3, 4, 5], "vm/default/y": [1, 2, 3]}


async def test_retry_after_is_honoured(stack: Stack) -> None:
    async def busy_once(g: Got) -> web.StreamResponse:
        if len(stack.receivers[0].got) == 1:
            return web.Response(status=503, headers={"Retry-After": "2"})
        return web.Response(status=200)

    r = await stack.receiver(answer=busy_once)
    await stack.subscribe("busy", r.url, types=["io.virtbus.vm.*"])
    await stack.emit("r", 1)
    await r.until(lambda got: len(got) == 2)
    # The schedule alone would retry after ~0.25 ms at this scale; the endpoint asked for 2 s.
    assert r.got[1].at - r.got[0].at >= 2.0
    assert r.got[0].webhook_id == r.got[1].webhook_id


async def test_410_disables_the_subscription(stack: Stack) -> None:
    async def gone(_: Got) -> web.StreamResponse:
        return web.Response(status=410)

    r = await stack.receiver(answer=gone)
    await stack.subscribe("gone", r.url, types=["io.virtbus.vm.*"])
    await stack.emit("g", 3)
    ref = Ref.of("webhook", "gone")
    for _ in range(200):
        kinds = [type(x.envelope.data).__name__ for x in await stack.store.read(ref)]
        if "WebhookDisabled" in kinds:
            break
        await asyncio.sleep(0.05)
    assert kinds == ["WebhookSubscribed", "WebhookDisabled"]
    code, out, _ = await stack.cli("webhook", "list", "-o", "json")
    assert code == 0
    [item] = json.loads(out)["items"]
    assert item["status"]["phase"] == "Disabled" and "410" in item["status"]["reason"]
    assert len(r.got) == 1  # nothing after the 410
    items = await stack.deliveries("gone")
    assert [d.status for d in items] == ["Gone"]


async def test_every_attempt_failing_ends_in_a_dead_letter_that_can_be_redelivered(
    stack: Stack,
) -> None:
    state = {"up": False}

    async def down(_: Got) -> web.StreamResponse:
        return web.Response(status=200 if state["up"] else 500)

    r = await stack.receiver(answer=down)
    await stack.subscribe("dead", r.url, types=["io.virtbus.vm.*"])
    await stack.emit("d", 1)
    [item] = await stack.until_deliveries(
        "dead", lambda i: len(i) == 1 and i[0].status == "DeadLetter"
    )
    assert item.attempts == 8 and item.code == 500
    code, out, _ = await stack.cli("webhook", "deliveries", "dead", "-o", "json")
    assert code == 0
    [obj] = json.loads(out)["items"]
    assert obj["status"]["phase"] == "DeadLetter" and obj["status"]["attempts"] == 8
    state["up"] = True
    code, out, err = await stack.cli("webhook", "redeliver", "dead")
    assert code == 0, err
    assert f"delivery {item.seq}: Delivered (HTTP 200)" in out
    assert len(r.got) == 9 and {g.webhook_id for g in r.got} == {item.webhook_id}


# --- crash safety --------------------------------------------------------------------------------


@pytest.fixture
async def bare(tmp_path: Path, env: None) -> AsyncIterator[Stack]:
    """Bus and orchestrator with webhooks off: the test runs the dispatcher as a process."""
    async for st in _stack(tmp_path, webhooks=False):
        yield st


async def _dispatcher(st: Stack, log: Path, *args: str) -> asyncio.subprocess.Process:
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.webhooks", "--server", st.url,
            "--data-dir", str(st.tmp / "dispatcher"), *args, cwd=ROOT, stdout=sink, stderr=sink,
        )  # fmt: skip


async def test_a_dispatcher_killed_mid_delivery_loses_nothing(bare: Stack) -> None:
    async def slow(_: Got) -> web.StreamResponse:
        await asyncio.sleep(0.02)  # so that deliveries are in flight when the kill comes
        return web.Response(status=200)

    r = await bare.receiver(answer=slow)
    await bare.subscribe("crash", r.url, types=["io.virtbus.vm.*"])
    log = bare.tmp / "dispatcher.log"
    proc = await _dispatcher(bare, log)
    try:
        await asyncio.gather(*(bare.emit(f"k{i}", 30) for i in range(4)))
        await r.until(lambda got: len(got) >= 30)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        killed_at = len(r.got)
        proc = await _dispatcher(bare, log)
        await r.until(lambda got: len({g.webhook_id for g in got}) == 120, within=60)
        await bare.until_deliveries(
            "crash", lambda i: len(i) == 120 and all(d.status == "Delivered" for d in i)
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    assert killed_at < 120  # the kill did come mid-stream
    expected = set()
    for i in range(4):
        expected |= {f"{x.envelope.id}-crash" for x in await bare.store.read(Ref.vm(f"k{i}"))}
    assert {g.webhook_id for g in r.got} == expected
    bodies: dict[str, bytes] = {}
    for g in r.got:  # a repeat is the same delivery: same webhook-id, same bytes
        assert bodies.setdefault(g.webhook_id, g.body) == g.body
    assert by_vm(r.got) == {f"vm/default/k{i}": list(range(1, 31)) for i in range(4)}
    text = log.read_text()
    assert SECRET not in text and SECRET.removeprefix("whsec_") not in text


async def test_a_restarted_dispatcher_keeps_a_vm_blocked_behind_its_retry(bare: Stack) -> None:
    async def later_once(g: Got) -> web.StreamResponse:
        if len(bare.receivers[0].got) == 1:  # the VM's first event: come back in 3 s
            return web.Response(status=503, headers={"Retry-After": "3"})
        return web.Response(status=200)

    r = await bare.receiver(answer=later_once)
    await bare.subscribe("blocked", r.url, types=["io.virtbus.vm.*"])
    log = bare.tmp / "dispatcher.log"
    proc = await _dispatcher(bare, log)
    try:
        await bare.emit("z", 1)
        await bare.until_deliveries("blocked", lambda i: [d.status for d in i] == ["Retrying"])
        await bare.emit("z", 4)  # held behind the retry
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await _dispatcher(bare, log)
        # Its followers come back after ack_wait (2 s), before the retry is due (3 s).
        await bare.until_deliveries(
            "blocked", lambda i: len(i) == 5 and all(d.status == "Delivered" for d in i)
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    assert by_vm(r.got) == {"vm/default/z": [1, 2, 3, 4, 5]}
    assert r.got[1].webhook_id == r.got[0].webhook_id  # the retry came first


# --- subscriptions: validation, secrets, CLI -----------------------------------------------------


async def test_deliveries_resume_after_the_bus_restarts(tmp_path: Path, env: None) -> None:
    """A restarted server forgets pull requests: the dispatcher must notice and ask again."""
    server = NatsServer(data_dir=tmp_path / "nats", port=-1)
    await server.start()
    server.port = int(server.url.rpartition(":")[2])  # come back on the same port
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    st = Stack(nc, server.url, tmp_path)
    r = await st.receiver()
    proc = None
    try:
        await provision(nc.jetstream())
        ref = secrets.new_ref("bus")
        await secrets.store(nc.jetstream(), ref, SECRET)
        subscribed = m.WebhookSubscribed(url=r.url, types=["io.virtbus.vm.*"], secret_ref=ref)
        await st.store.append(Ref.of("webhook", "bus"), [subscribed], expected_version=0)
        proc = await _dispatcher(st, tmp_path / "dispatcher.log")
        await st.emit("before", 2)
        await r.until(lambda got: len(got) == 2)
        await server.stop()
        await server.start()
        for _ in range(100):  # until the test's own connection is back
            try:
                await st.emit("after", 2)
                break
            except Exception:
                await asyncio.sleep(0.1)
        await r.until(lambda got: len({g.webhook_id for g in got}) == 4, within=60)
    finally:
        if proc is not None:
            proc.terminate()
            await proc.wait()
        await r.stop()
        await nc.close()
        await server.stop()
    assert by_vm(r.got) == {"vm/default/before": [1, 2], "vm/default/after": [1, 2]}


async def test_sharded_dispatchers_split_the_subscriptions(bare: Stack) -> None:
    names = ["sh-a", "sh-b", "sh-d", "sh-e"]  # crc32 % 2: 1, 1, 0, 0
    receivers = [await bare.receiver() for _ in names]
    for name, r in zip(names, receivers, strict=True):
        await bare.subscribe(name, r.url, types=["io.virtbus.vm.*"])
    log = bare.tmp / "dispatcher.log"
    procs = [await _dispatcher(bare, log, "--shard", f"{i}/2") for i in range(2)]
    try:
        await asyncio.gather(bare.emit("a", 5), bare.emit("b", 5))
        for name, r in zip(names, receivers, strict=True):
            await r.until(lambda got: len(got) == 10)
            items = await bare.until_deliveries(name, lambda i: len(i) == 10)
            assert {d.status for d in items} == {"Delivered"}
    finally:
        for p in procs:
            p.terminate()
            await p.wait()
    for r in receivers:  # each subscription had exactly one reader: no repeats, order kept
        assert len({g.webhook_id for g in r.got}) == len(r.got) == 10
        assert by_vm(r.got) == {"vm/default/a": [1, 2, 3, 4, 5], "vm/default/b": [1, 2, 3, 4, 5]}
    owners = []
    for i in range(2):  # each shard recorded only its own subscriptions
        db = sqlite3.connect(bare.tmp / "dispatcher" / f"webhooks-{i}of2.sqlite")
        owners.append({row[0] for row in db.execute("SELECT DISTINCT name FROM deliveries")})
        db.close()
    assert owners == [{"sh-d", "sh-e"}, {"sh-a", "sh-b"}]


async def _rejections(st: Stack, name: str) -> list[m.CommandRejected]:
    out = []
    for rec in await st.store.read(Ref.of("webhook", name)):
        if isinstance(rec.envelope.data, m.CommandRejected):
            out.append(rec.envelope.data)
    return out


@pytest.mark.parametrize(
    ("url", "field", "words"),
    [
        ("http://10.1.2.3/hook", "url", "private"),
        ("http://[::1]:9/hook", "url", "loopback"),
        ("http://169.254.169.254/latest", "url", "link-local"),
        ("ftp://127.0.0.1/hook", "url", "http:// or https://"),
        ("http://user:pw@127.0.0.1/hook", "url", "credentials"),
        ("http://no-such-host.invalid/hook", "url", "does not resolve"),
    ],
)
async def test_a_refused_url_is_a_command_rejected_naming_the_field(
    stack: Stack, url: str, field: str, words: str
) -> None:
    code, out, err = await stack.cli("webhook", "add", url, "--name", "bad", "--secret", SECRET)
    assert code == 1 and out == ""
    assert f"{field}:" in err and words in err
    [rejected] = await _rejections(stack, "bad")
    assert rejected.field == field and rejected.command == "AddWebhook"
    assert "pw" not in rejected.reason and SECRET not in err


async def test_bad_patterns_and_secrets_are_refused_naming_the_field(stack: Stack) -> None:
    code, _, err = await stack.cli("webhook", "add", "http://127.0.0.1:9/", "--name", "pat",
                                   "--types", "IO Bad!", "--secret", SECRET)  # fmt: skip
    assert code == 1 and "types:" in err
    assert [r.field for r in await _rejections(stack, "pat")] == ["types"]
    code, _, err = await stack.cli("webhook", "add", "http://127.0.0.1:9/", "--name", "sec",
                                   "--secret", "whsec_bm90LWxvbmctZW5vdWdo")  # fmt: skip
    assert code == 1 and "secret: the key must be 24 to 64 bytes" in err
    assert "bm90LWxvbmctZW5vdWdo" not in err
    with pytest.raises(Rejected) as info:  # a bare client without any secret
        await send(stack.nc, c.AddWebhook(name="nosecret", url="http://127.0.0.1:9/"))
    assert info.value.field == "secret"


async def _raw_stream(st: Stack, stream: str) -> bytes:
    chunks: list[bytes] = []

    def on(data: bytes, subject: str, seq: int) -> None:
        chunks.append(data)

    await pull_all(st.nc, stream, on)
    return b"".join(chunks)


async def test_secrets_stay_out_of_the_log_json_output_and_logs(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    r = await stack.receiver()
    code, out, err = await stack.cli("webhook", "add", r.url, "--name", "sec", "--secret", SECRET,
                                     "--types", "io.virtbus.vm.*", "-o", "json")  # fmt: skip
    assert code == 0, err
    obj = json.loads(out)
    assert obj["kind"] == "Webhook" and obj["spec"]["url"] == r.url
    # A bare NATS client may send the secret inline: the intake moves it to the bucket.
    await send(stack.nc, c.AddWebhook(name="inline", url=r.url, secret=SECRET,
                                      types=["io.virtbus.vm.*"]))  # fmt: skip
    await stack.emit("s", 2)
    await r.until(lambda got: len(got) == 4)
    outputs = [out]
    for args in (("webhook", "list", "-o", "json"), ("webhook", "deliveries", "sec", "-o", "json"),
                 ("webhook", "list"), ("webhook", "deliveries", "inline")):  # fmt: skip
        code, text, err = await stack.cli(*args)
        assert code == 0, err
        outputs.append(text + err)
    log_bytes = await _raw_stream(stack, EVENTS_STREAM) + await _raw_stream(stack, COMMANDS_STREAM)
    key = SECRET.removeprefix("whsec_")
    # The event log, the CLI-sent command and every output; the inline command is the one
    # copy (in VIRT_COMMANDS, as sent), which is why the CLI never sends it inline.
    assert log_bytes.count(key.encode()) == 1
    assert key.encode() not in await _raw_stream(stack, EVENTS_STREAM)
    assert all(key not in text for text in outputs)
    assert key not in caplog.text
    sub = json.loads(outputs[1])["items"][0]
    assert set(sub["spec"]) == {"url", "types", "vmPattern", "fromStart", "since"}


async def test_rotation_signs_with_both_secrets_until_the_grace_ends(stack: Stack) -> None:
    new = secrets.generate()
    r = await stack.receiver(SECRET)
    await stack.subscribe("rot", r.url, types=["io.virtbus.vm.*"])
    await stack.emit("rot", 1)
    await r.until(lambda got: len(got) == 1)
    assert len(r.got[0].headers["webhook-signature"].split()) == 1
    code, out, err = await stack.cli("webhook", "rotate-secret", "rot", "--secret", new,
                                     "--grace", "3600")  # fmt: skip
    assert code == 0, err
    assert new not in out  # it was given, so it is not shown
    r.secrets = [SECRET, new]  # each must verify on its own
    for _ in range(100):  # the dispatcher reads secrets again within SECRET_TTL_S
        seen = len(r.got)
        await stack.emit("rot", 1)
        await r.until(lambda got, seen=seen: len(got) > seen)
        if len(r.got[-1].headers["webhook-signature"].split()) == 2:
            break
        await asyncio.sleep(0.2)
    assert len(r.got[-1].headers["webhook-signature"].split()) == 2


async def test_add_list_rm_through_the_cli(stack: Stack) -> None:
    r = await stack.receiver()
    code, out, err = await stack.cli("webhook", "add", r.url, "--name", "cli", "--types",
                                     "io.virtbus.vm.*,io.virtbus.node.*", "--vm", "web-*",
                                     "--from-start")  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0] == "webhook.virtbus.io/cli created"
    generated = out.splitlines()[1].rpartition(" ")[2]
    assert generated.startswith("whsec_")
    r.secrets = [generated]
    await stack.emit("web-1", 1)
    await r.until(lambda got: len(got) == 1)
    code, out, _ = await stack.cli("webhook", "list")
    assert code == 0 and out.split("\n")[1].split()[:5] == [
        "cli", r.url, "io.virtbus.vm.*,io.virtbus.node.*", "web-*", "Active"]  # fmt: skip
    code, out, err = await stack.cli("webhook", "rm", "cli")
    assert code == 0 and out.strip() == 'webhook.virtbus.io "cli" deleted'
    code, out, _ = await stack.cli("webhook", "list", "-o", "json")
    assert json.loads(out)["items"] == []
    kinds = [
        type(x.envelope.data).__name__ for x in await stack.store.read(Ref.of("webhook", "cli"))
    ]
    assert kinds == ["WebhookSubscribed", "WebhookUnsubscribed"]
    code, _, err = await stack.cli("webhook", "rm", "cli")
    assert code == 1 and 'webhook "cli" not found' in err
    code, _, err = await stack.cli("webhook", "deliveries", "nope")
    assert code == 1 and 'webhook "nope" not found' in err
