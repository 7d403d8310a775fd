"""The dispatcher's delivery records (`orchestrator/webhooks/deliveries.py`) on a real SQLite file:
batched commits, each record's ack run only after its commit, in order, and nothing left behind
at stop. And its signing keys: keyed once, read from the real secret bucket once per expiry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import sqlite3
from pathlib import Path

import pytest
from nats.aio.client import Client

from bus import webhook_secrets as secrets
from bus.webhook_secrets import Signer, check_secret, generate, sign
from events import webhooks as wh
from orchestrator.webhooks import deliveries as dl
from orchestrator.webhooks import dispatcher


def _delivery(seq: int, status: str = wh.DELIVERED, consumer: str = "c") -> wh.Delivery:
    return wh.Delivery(consumer=consumer, seq=seq, name="w", webhook_id=f"e{seq}-w", type="t",
                       subject="vm/ns/a", status=status, attempts=1, code=204)  # fmt: skip


def _committed(path: Path) -> dict[int, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT seq, status FROM deliveries").fetchall())


async def test_every_then_runs_after_its_record_is_committed_in_order(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    log = dl.DeliveryLog(path, linger_s=0.05)
    await log.open()
    stop = asyncio.Event()
    writer = asyncio.create_task(log.run(stop), name="test-writer")
    seen: list[tuple[int, bool]] = []

    def then(seq: int) -> dl.Then:
        async def ack() -> None:
            seen.append((seq, seq in await asyncio.to_thread(_committed, path)))

        return ack

    try:
        for seq in range(1, 301):
            log.record(_delivery(seq, wh.RETRYING if seq == 7 else wh.DELIVERED), then(seq))
            if seq % 50 == 0:
                await asyncio.sleep(0.01)
        log.record(_delivery(400, wh.DEAD), None)
        for _ in range(500):
            if len(seen) == 300:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(writer, 30)
        assert seen == [(seq, True) for seq in range(1, 301)]
        assert await log.position("c") == 400  # the last final record, not the Retrying one
        assert [d.seq for d in await log.retrying("c")] == [7]
    finally:
        writer.cancel()
        await log.close()


async def test_stopping_commits_what_is_queued_without_lingering(tmp_path: Path) -> None:
    log = dl.DeliveryLog(tmp_path / "d.sqlite", linger_s=3600)
    await log.open()
    stop = asyncio.Event()
    writer = asyncio.create_task(log.run(stop), name="test-writer")
    acked: list[int] = []

    async def ack() -> None:
        acked.append(1)

    try:
        for seq in range(10):
            log.record(_delivery(seq), ack)
        await asyncio.sleep(0.05)  # the writer is lingering now
        stop.set()
        await asyncio.wait_for(writer, 30)  # an hour's linger is not waited for
    finally:
        writer.cancel()
        await log.close()
    assert len(acked) == 10 and len(_committed(tmp_path / "d.sqlite")) == 10


def test_a_signer_signs_as_keying_afresh_would() -> None:
    keys = [check_secret(generate()) for _ in range(2)]
    signer = Signer(keys)
    for body in (b"", b"{}", bytes(range(256)) * 10):
        once = signer.sign(msg_id="m", timestamp=1, body=body)
        assert once == signer.sign(msg_id="m", timestamp=1, body=body)  # the keyed state is kept
        assert once == " ".join(
            "v1," + base64.b64encode(hmac.new(k, b"m.1." + body, hashlib.sha256).digest()).decode()
            for k in keys
        )
        assert sign(keys, msg_id="m", timestamp=1, body=body) == once
        assert len(once.split(" ")) == 2
    assert not Signer([]) and len(signer) == 2


async def test_expired_secrets_are_read_once_for_every_delivery_waiting(
    nc: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher, "SECRET_TTL_S", 0.0)  # every read expires at once
    d = dispatcher.Dispatcher(nc, data_dir=tmp_path)
    ref = secrets.new_ref("once")
    await secrets.store(nc.jetstream(), ref, secrets.generate())
    assert len(await d.keys(ref)) == 1  # finds the bucket
    before = nc.stats["out_msgs"]
    signers = await asyncio.gather(*(d.keys(ref) for _ in range(20)))
    assert nc.stats["out_msgs"] - before == 1  # one read of the bucket for all twenty
    assert all(s is signers[0] for s in signers)
    await secrets.forget(nc.jetstream(), ref)
    assert not await d.keys(ref)  # expired and gone: nothing signs, the attempt says why
