"""Tamper evidence against a real nats-server: the log is altered through raw JetStream calls
(message deletes, subject purges, raw publishes, a stream re-created short) and `audit verify`
must name the first bad event of each history.

VIRT_EVENTS refuses deletes (`deny_delete`, which JetStream never lets anyone lift), so most tests
run on a stream created with the same config but deletes allowed: an operator who set it up so,
or an attacker with the server's files. One test re-creates the real stream instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from clirun import Result, virtbus
from driverstack import seed
from nats.aio.client import Client
from waits import api_ready

from bus.audit import Checkpointer, describe_key, load_key, verify
from bus.client import send
from bus.provision import provision, stream_configs
from bus.reader import direct_range
from bus.server import NatsServer
from bus.store import EventStore
from events import model as m
from events.checkpoint import AUDIT_REF, key_id, sign, signature_ok, signed_bytes
from events.envelope import chain_hash, decode_envelope, encode, seal
from events.errors import TamperDetected, ValidationError
from events.model import AuditCheckpoint, AuditHead
from events.names import EVENTS_STREAM, Ref
from orchestrator.app import run_orchestrator

KEY = b"test-audit-key-0123456789"
A, B, C = Ref.vm("a"), Ref.vm("b"), Ref.vm("c")


class Log:
    def __init__(self, nc: Client, url: str) -> None:
        self.nc = nc
        self.url = url
        self.js = nc.jetstream()
        self.store = EventStore(nc, source="/tests")

    async def fill(self, ref: Ref, n: int) -> None:
        version = (await self.store.head(ref, fresh=True)).version
        for i in range(n):
            e: m.Event = m.VMCreated(spec={}) if version + i == 0 else m.VMScheduled(
                node="node-a", vmi_uid=f"uid-{i}")  # fmt: skip
            await self.store.append(ref, [e], expected_version=version + i)

    async def seqs(self, ref: Ref) -> list[int]:
        return [seq for _, _, seq in await direct_range(self.nc, EVENTS_STREAM,
                                                        subject_filter=ref.wildcard)]  # fmt: skip

    async def raw(self, ref: Ref) -> list[tuple[bytes, str, int]]:
        return await direct_range(self.nc, EVENTS_STREAM, subject_filter=ref.wildcard)

    async def cli(self, *args: str, key: bool = True) -> Result:
        """The CLI with the audit key in its environment (or none at all)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTBUS_AUDIT_KEY")}
        if key:
            env["VIRTBUS_AUDIT_KEY"] = KEY.decode()
        return await virtbus(*args, "--server", self.url, env=env)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[Log]:
    """A bus whose event stream allows deletes and purges, filled with three short histories
    (interleaved) and sealed by one checkpoint."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            for cfg in stream_configs():
                tamperable = cfg.name == EVENTS_STREAM
                await js.add_stream(cfg.evolve(deny_delete=False, deny_purge=False)
                                    if tamperable else cfg)  # fmt: skip
            lg = Log(nc, server.url)
            for _ in range(5):
                for ref in (A, B, C):
                    await lg.fill(ref, 1)
            yield lg
        finally:
            await nc.close()


async def seal_now(lg: Log) -> list[AuditCheckpoint]:
    return await Checkpointer(lg.nc, KEY).checkpoint()


# --- intact --------------------------------------------------------------------------------------


async def test_an_intact_log_verifies_with_a_summary(log: Log) -> None:
    sealed = (await log.cli("audit", "checkpoint")).ok()
    assert sealed.out.startswith("checkpoint #1: 3 histories sealed through seq ")
    assert (await log.cli("audit", "checkpoint")).ok().out.startswith("nothing new to seal")
    ok = (await log.cli("audit", "verify")).ok()
    assert ok.out.startswith("audit of the log: intact: 15 events in 3 histories; 1 checkpoints")
    assert f"signed by key {key_id(KEY)}" in ok.out and ok.err == ""
    one = (await log.cli("audit", "verify", "a", "-o", "json")).json()
    assert (one["ok"], one["events"], one["checkpoints"], one["findings"]) == (True, 5, 1, [])
    await log.fill(A, 2)  # after the checkpoint: chained, not sealed yet, said so
    newer = (await log.cli("audit", "verify", "a")).ok()
    assert "are not sealed by a checkpoint yet" in newer.err
    sealed2 = await seal_now(log)
    assert [cp.number for cp in sealed2] == [2] and list(sealed2[0].heads) == [A.prefix]
    unkeyed = (await log.cli("audit", "verify", key=False)).ok()
    assert "signatures not checked" in unkeyed.out and "no audit key" in unkeyed.err
    # No orchestrator answers here: `history` reads the VM's subject tree instead of the index.
    items = (await log.cli("history", "a", "-o", "json")).json()["items"]
    assert [i["version"] for i in items] == list(range(1, 8))
    assert [i["status"] for i in items][:2] == ["Stopped", "Starting"]


# --- deleted, purged, reordered, forged ----------------------------------------------------------


async def test_a_deleted_event_is_named(log: Log) -> None:
    await seal_now(log)
    seqs = await log.seqs(A)
    await log.js.delete_msg(EVENTS_STREAM, seqs[2])  # version 3 of a
    bad = await log.cli("audit", "verify")
    assert bad.code == 1
    assert "vm/default/a: deleted: version 3 missing: after version 2" in bad.out
    assert f"comes version 4 at seq {seqs[3]}" in bad.out
    assert bad.err.startswith("error: first bad event: vm/default/a version 3")
    assert (await log.cli("audit", "verify", "b")).code == 0  # the other histories are intact


async def test_a_purged_prefix_is_named(log: Log) -> None:
    await log.js.purge_stream(EVENTS_STREAM, subject=B.wildcard, keep=2)
    report = await verify(log.nc, key=KEY, ref=B)
    (f,) = report.findings
    assert (f.aggregate, f.problem, f.version) == ("vm/default/b", "deleted", 1)
    assert f.message.startswith("version 1..3 missing: after the start comes version 4")


async def test_a_reordered_history_is_named(log: Log) -> None:
    raw = await log.raw(C)
    for _, _, seq in raw[2:4]:  # versions 3 and 4, put back as 4 then 3
        await log.js.delete_msg(EVENTS_STREAM, seq)
    for data, subject, _ in (raw[3], raw[2]):
        await log.js.publish(subject, data)
    report = await verify(log.nc, key=KEY)
    (f,) = report.findings
    assert (f.aggregate, f.problem, f.version) == ("vm/default/c", "reordered", 3)
    # The stream now reads 1, 2, 5, 4, 3: the first that is out of place is version 3.
    assert f.message == f"version 3 is at seq {raw[-1][2] + 2}, after version 5 at seq " \
        f"{raw[-1][2]}: reordered"  # fmt: skip


async def test_forged_events_are_named(log: Log) -> None:
    await seal_now(log)
    head = await log.store.head(B, fresh=True)
    # A forger who does not know the chain: a well-formed event that does not chain.
    _, forged = seal(m.VMStopped(reason="forged"), ref=B, version=head.version + 1,
                     prevhash="0" * 64, source="/virtbus/orchestrator/controller")  # fmt: skip
    await log.js.publish(B.event_subject("stopped"), forged)
    await log.js.publish(C.event_subject("stopped"), b"not an event")
    report = await verify(log.nc, key=KEY)
    assert [(f.aggregate, f.problem, f.version) for f in report.findings] == [
        ("vm/default/b", "forged", 6), ("vm/default/c", "forged", 6),
    ]  # fmt: skip
    assert "does not chain to version 5" in report.findings[0].message
    assert "does not decode" in report.findings[1].message
    with pytest.raises(TamperDetected, match="not sealing a broken history: vm/default/b"):
        await seal_now(log)


async def test_a_rewritten_sealed_history_is_named(log: Log) -> None:
    """A forger who knows the chain deletes the end of a history and appends a new ending that
    chains perfectly: only the checkpoint can tell."""
    await seal_now(log)
    raw = await log.raw(A)
    for _, _, seq in raw[3:]:
        await log.js.delete_msg(EVENTS_STREAM, seq)
    prev = chain_hash(raw[2][0])
    for version in (4, 5):
        _, data = seal(m.VMStopped(reason="rewritten"), ref=A, version=version, prevhash=prev,
                       source="/virtbus/orchestrator/controller")  # fmt: skip
        await log.js.publish(A.event_subject("stopped"), data)
        prev = chain_hash(data)
    (f,) = (await verify(log.nc, key=KEY, ref=A)).findings
    assert (f.problem, f.version) == ("rewritten", 4)
    assert "checkpoint #1 sealed this history at version 5" in f.message
    unsealed = await verify(log.nc, key=KEY, ref=B)
    assert unsealed.ok


# --- truncated ----------------------------------------------------------------------------------


async def test_a_truncated_history_is_named(log: Log) -> None:
    await seal_now(log)
    seqs = await log.seqs(A)
    for seq in seqs[3:]:
        await log.js.delete_msg(EVENTS_STREAM, seq)
    bad = await log.cli("audit", "verify", "a")
    assert bad.code == 1
    assert (f"truncated: the stream ends at version 3 (seq {seqs[2]}), but checkpoint #1 sealed "
            f"version 5 at seq {seqs[4]}; version 4..5 gone") in bad.out  # fmt: skip
    assert "error: first bad event: vm/default/a version 4" in bad.err
    # Without the checkpoint the chain alone is intact: that is what checkpoints are for.
    chain_only = await verify(log.nc, key=KEY, ref=C)
    assert chain_only.ok


async def test_a_stream_recreated_short_is_named(tmp_path: Path) -> None:
    """The real stream (deletes denied) deleted and re-created without a history's last event."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await provision(js)
            lg = Log(nc, server.url)
            await lg.fill(B, 3)
            await lg.fill(A, 4)
            await seal_now(lg)
            every = await direct_range(nc, EVENTS_STREAM, subject_filter=">")
            config = (await js.stream_info(EVENTS_STREAM)).config
            last_of_a = max(seq for _, subject, seq in every if subject.startswith(A.prefix))
            await js.delete_stream(EVENTS_STREAM)
            await js.add_stream(config)
            for data, subject, seq in every:
                if seq != last_of_a:
                    await js.publish(subject, data)
            report = await verify(nc, key=KEY)
            (f,) = report.findings
            assert (f.aggregate, f.problem, f.version) == ("vm/default/a", "truncated", 4)
            assert (await verify(nc, key=KEY, ref=B)).ok
        finally:
            await nc.close()


# --- the checkpoints themselves ------------------------------------------------------------------


async def test_a_forged_checkpoint_is_named_and_not_built_upon(log: Log) -> None:
    first = await seal_now(log)
    await log.fill(A, 1)
    head = (await verify(log.nc, key=KEY, ref=A)).events
    fake = sign(AuditCheckpoint(number=2, through_seq=10_000, previous=first[0].signature,
                                heads={A.prefix: AuditHead(head, 1, "f" * 64)}),
                b"someone else's key")  # fmt: skip
    at = (await log.store.append(AUDIT_REF, [fake], expected_version=1)).seq
    bad = await log.cli("audit", "verify")
    assert bad.code == 1
    assert f"checkpoint #2 at seq {at} is signed with key {fake.key_id}: forged" in bad.out
    assert "error: first bad event: audit/checkpoints version 2: checkpoint #2" in bad.err
    refused = await log.cli("audit", "checkpoint")
    assert refused.code == 1 and "not sealing a broken audit trail" in refused.err


def test_the_key_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("VIRTBUS_AUDIT_KEY", raising=False)
    monkeypatch.delenv("VIRTBUS_AUDIT_KEY_FILE", raising=False)
    assert load_key() is None and describe_key(None).startswith("no key")
    (keyfile := tmp_path / "k").write_bytes(b"from-a-file\n")
    monkeypatch.setenv("VIRTBUS_AUDIT_KEY_FILE", str(keyfile))
    assert load_key() == b"from-a-file"
    monkeypatch.setenv("VIRTBUS_AUDIT_KEY", "from-the-env")
    assert load_key() == b"from-the-env"  # the key itself wins over a file
    assert (
        describe_key(b"k", every_s=30) == f"signed checkpoints every 30 s (key id {key_id(b'k')})"
    )
    monkeypatch.delenv("VIRTBUS_AUDIT_KEY")
    monkeypatch.setenv("VIRTBUS_AUDIT_KEY_FILE", str(tmp_path / "gone"))
    with pytest.raises(ValidationError, match="VIRTBUS_AUDIT_KEY_FILE: cannot read"):
        load_key()


def test_the_signature_covers_every_sealed_head() -> None:
    heads = {"virt.vm.default.b": AuditHead(2, 9, "b" * 64),
             "virt.vm.default.a": AuditHead(1, 3, "a" * 64)}  # fmt: skip
    cp = sign(AuditCheckpoint(number=1, through_seq=9, heads=heads), KEY)
    assert signature_ok(cp, KEY) and not signature_ok(cp, KEY + b"x")
    reordered = msgspec.structs.replace(cp, heads=dict(reversed(list(cp.heads.items()))))
    assert signature_ok(reordered, KEY)  # the signed bytes sort the heads
    moved = {**cp.heads, "virt.vm.default.a": AuditHead(1, 4, "a" * 64)}
    assert not signature_ok(msgspec.structs.replace(cp, heads=moved), KEY)
    assert not signature_ok(msgspec.structs.replace(cp, through_seq=8), KEY)
    assert b'"signature":""' in signed_bytes(cp)
    roundtrip = decode_envelope(seal(cp, ref=AUDIT_REF, version=1, prevhash="", source="/t")[1])
    assert roundtrip.type == "io.virtbus.audit.checkpoint.v1" and roundtrip.data == cp
    assert encode(roundtrip.data) == encode(cp)


# --- the orchestrator seals on its own; bad input ------------------------------------------------


async def test_the_orchestrator_seals_periodically(tmp_path: Path) -> None:
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        stop = asyncio.Event()
        orch = asyncio.create_task(
            run_orchestrator(nc, data_dir=tmp_path / "orch", stop=stop, audit_key=KEY,
                             checkpoint_every_s=0.2),
            name="orchestrator-audit-test",
        )  # fmt: skip
        store, ref = EventStore(nc), Ref.vm("sealed")
        try:
            await api_ready(nc)
            await send(nc, seed("sealed"))
            for _ in range(300):
                cps = [r.envelope.data for r in await store.read(AUDIT_REF)]
                if any(isinstance(cp, AuditCheckpoint) and ref.prefix in cp.heads for cp in cps):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the orchestrator never sealed the new VM's history")
        finally:
            stop.set()
            await orch
        try:
            report = await verify(nc, key=KEY)
            assert report.ok and report.checkpoints >= 1 and not report.warnings, report
        finally:
            await nc.close()


async def test_audit_input_errors(log: Log, tmp_path: Path) -> None:
    no_key = await log.cli("audit", "checkpoint", key=False)
    assert no_key.code == 2 and "no audit key" in no_key.err
    missing = await log.cli("audit", "checkpoint", "--key-file", str(tmp_path / "nope"), key=False)
    assert missing.code == 2 and "--key-file: cannot read" in missing.err
    (empty := tmp_path / "empty").write_text("\n")
    blank = await log.cli("audit", "verify", "--key-file", str(empty), key=False)
    assert blank.code == 2 and "is empty" in blank.err
    (keyfile := tmp_path / "key").write_bytes(KEY + b"\n")
    assert (await log.cli("audit", "checkpoint", "--key-file", str(keyfile), key=False)).ok()
    assert "signed by key" in (await log.cli("audit", "verify", "--key-file", str(keyfile),
                                             key=False)).ok().out  # fmt: skip
    unknown = await log.cli("audit", "verify", "never-made")
    assert unknown.code == 1 and '"never-made" not found' in unknown.err
    bad_output = await log.cli("audit", "verify", "-o", "yaml")
    assert bad_output.code == 2 and "-o 'yaml'" in bad_output.err
