"""The webhook dispatcher: follows the subscriptions on the log and runs one Runner for each.

It runs inside the orchestrator (`run_orchestrator`) or alone (`python -m orchestrator.webhooks`);
run one of the two per bus, since two dispatchers on one durable consumer would split a VM's
events between them and lose the per-VM order. To use more cores, run `--shard I/N` processes:
each owns the subscriptions whose name hashes to I, so every consumer still has one reader.
It also answers the CLI on `virt.webhooks.deliveries` and `virt.webhooks.redeliver` from its
delivery records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from pathlib import Path
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from bus import webhook_secrets as secrets
from bus.reader import direct_last
from bus.store import EventStore
from events import model as m
from events.envelope import Recorded
from events.errors import ConcurrencyConflict, ValidationError, VirtbusError
from events.names import EVENTS_STREAM, Ref
from events.webhooks import (
    DEAD,
    DELIVERIES_SUBJECT,
    REDELIVER_SUBJECT,
    DeliveriesQuery,
    RedeliverRequest,
    Reply,
    WebhookState,
    apply_webhook,
    fold_webhook,
)
from orchestrator.webhooks.deliveries import DeliveryLog
from orchestrator.webhooks.runner import Runner
from orchestrator.webhooks.settings import WebhookSettings

log = logging.getLogger("virtbus.webhooks")
QUEUE: Final = "virtbus-webhooks"
SECRET_TTL_S: Final = 2.0  # a rotated secret signs within this long


class Dispatcher:
    def __init__(
        self, nc: Client, *, data_dir: Path, settings: WebhookSettings | None = None,
        source: str = "/virtbus/orchestrator/webhooks", shard: tuple[int, int] = (0, 1),
    ) -> None:  # fmt: skip
        self.nc = nc
        self.data_dir = data_dir
        self.settings = settings or WebhookSettings.from_env()
        self.store = EventStore(nc, source=source)
        self.states: dict[str, WebhookState] = {}
        self.runners: dict[str, Runner] = {}
        self.shard, self.shards = shard
        if not 0 <= self.shard < self.shards:
            raise ValidationError(f"shard: {self.shard}/{self.shards} is not one of {self.shards}",
                                  field="shard")  # fmt: skip
        suffix = "" if self.shards == 1 else f"-{self.shard}of{self.shards}"
        self.deliveries = DeliveryLog(data_dir / f"webhooks{suffix}.sqlite")
        self._keys: dict[str, tuple[float, secrets.Signer]] = {}
        self._loading: dict[str, asyncio.Future[secrets.Signer]] = {}
        self._kv: KeyValue | None = None

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        await self.deliveries.open()
        writer_stop = asyncio.Event()
        writer = asyncio.create_task(self.deliveries.run(writer_stop), name="webhooks-writer")
        services: list[Subscription] = []
        try:
            # Sharded, every shard hears every question and only the owner answers.
            queue = QUEUE if self.shards == 1 else ""
            services = [
                await self.nc.subscribe(DELIVERIES_SUBJECT, queue=queue, cb=self._on_deliveries),
                await self.nc.subscribe(REDELIVER_SUBJECT, queue=queue, cb=self._on_redeliver),
            ]
            while not stop.is_set():
                try:
                    await self._follow(stop)
                except Exception as err:  # the bus went away: follow again from the start
                    log.warning("webhook subscriptions: %r; following again", err)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            for sub in services:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await asyncio.gather(*(r.close(grace=self.settings.timeout_s)
                                   for r in self.runners.values()))  # fmt: skip
            self.runners.clear()
            writer_stop.set()
            await writer
            await self.deliveries.close()

    async def _follow(self, stop: asyncio.Event) -> None:
        """Fold every subscription from the start of the log, then keep them in step."""
        self.states = {}  # a fresh fold: replaying onto the old one would retire live lives
        last = await direct_last(self.nc, EVENTS_STREAM, "virt.webhook.>")
        caught_up_at = last[2] if last else 0
        if not caught_up_at:
            await self._reconcile_all()
        js = self.nc.jetstream()
        sub = await js.subscribe(
            "virt.webhook.>", stream=EVENTS_STREAM, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )  # fmt: skip
        try:
            while not stop.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except TimeoutError:
                    continue
                seq = msg.metadata.sequence.stream
                rec = self.store.decode(msg.data, msg.subject, seq)
                try:
                    if rec is not None:
                        await self._apply(rec, live=seq > caught_up_at)
                except VirtbusError:
                    raise  # the bus: follow again from the start
                except Exception:  # one event's fault: following again would meet it again
                    log.exception("webhook subscriptions: seq %s skipped", seq)
                if seq == caught_up_at:
                    await self._reconcile_all()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2)

    async def _apply(self, rec: Recorded, *, live: bool) -> None:
        name = rec.subject.split(".")[3]
        old = self.states.get(name) or WebhookState(name=name)
        new = apply_webhook(old, rec)
        self.states[name] = new
        if old.exists and (old.life_seq != new.life_seq or not new.active):
            await self._retire(old, removed=not new.exists)
        if live:
            await self._reconcile(new)

    async def _reconcile_all(self) -> None:
        for s in list(self.states.values()):
            await self._reconcile(s)

    def owns(self, name: str) -> bool:
        """Sharded dispatchers split the subscriptions by name; each runs only its own."""
        return self.shards == 1 or zlib.crc32(name.encode()) % self.shards == self.shard

    async def _reconcile(self, s: WebhookState) -> None:
        if not self.owns(s.name):
            return
        runner = self.runners.get(s.name)
        if runner is not None and (not s.active or runner.state.life_seq != s.life_seq):
            await self.runners.pop(s.name).close(grace=self.settings.timeout_s)
            runner = None
        if s.active and runner is None:
            runner = Runner(
                self.nc, s, deliveries=self.deliveries, settings=self.settings, keys=self.keys,
                on_gone=self.disable,
            )  # fmt: skip
            self.runners[s.name] = runner
            runner.start()
            log.info("webhook %s: delivering to %s", s.name, s.url)

    async def _retire(self, old: WebhookState, *, removed: bool) -> None:
        """A life that ended (removed, disabled, replaced): its consumer goes, and on removal
        its secret too."""
        if not self.owns(old.name):
            return
        if (runner := self.runners.get(old.name)) and runner.state.life_seq == old.life_seq:
            await self.runners.pop(old.name).close(grace=self.settings.timeout_s)
        with contextlib.suppress(Exception):
            await self.nc.jetstream().delete_consumer(EVENTS_STREAM, old.consumer)
        if removed and old.secret_ref:
            with contextlib.suppress(Exception):
                await secrets.forget(self.nc.jetstream(), old.secret_ref)

    async def keys(self, ref: str) -> secrets.Signer:
        """The signer of a subscription's live secrets, cached for `SECRET_TTL_S`; when it
        expires, one read of the bucket serves every delivery waiting for it."""
        cached = self._keys.get(ref)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        loading = self._loading.get(ref)
        if loading is None:
            loading = asyncio.create_task(self._load_keys(ref), name=f"webhook-keys-{ref}")
            self._loading[ref] = loading
            loading.add_done_callback(self._loaded)
        return await asyncio.shield(loading)  # one waiter cancelled must not fail the others

    def _loaded(self, task: asyncio.Future[secrets.Signer]) -> None:
        for ref, t in list(self._loading.items()):
            if t is task:
                del self._loading[ref]
        if not task.cancelled() and (err := task.exception()) is not None:  # its waiters saw it
            log.debug("webhook secret: %r", err)

    async def _load_keys(self, ref: str) -> secrets.Signer:
        if self._kv is None:
            self._kv = await secrets.bucket(self.nc.jetstream())
        signer = secrets.Signer(secrets.keys_of(await secrets.load(self._kv, ref)))
        self._keys[ref] = (time.monotonic() + SECRET_TTL_S, signer)
        return signer

    async def disable(self, s: WebhookState, reason: str) -> None:
        """Record `WebhookDisabled` (once per life, whoever notices first)."""
        ref = Ref.of("webhook", s.name)
        for _ in range(5):
            current = fold_webhook(s.name, await self.store.read(ref))
            if not current.active or current.life_seq != s.life_seq:
                return
            try:
                await self.store.append(
                    ref, [m.WebhookDisabled(reason=reason)], expected_version=current.version,
                    command_id=f"disable-{s.consumer}",
                )  # fmt: skip
                log.warning("webhook %s disabled: %s", s.name, reason)
                return
            except ConcurrencyConflict:
                continue

    # --- the CLI's questions ---------------------------------------------------------------------

    async def _on_deliveries(self, msg: Msg) -> None:
        try:
            q = msgspec.json.decode(msg.data, type=DeliveriesQuery)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            await msg.respond(msgspec.json.encode(Reply(error=f"bad query: {err}")))
            return
        if not self.owns(q.name):
            return
        items = await self.deliveries.of(q.name, status=q.status, limit=q.limit)
        await msg.respond(msgspec.json.encode(Reply(items=items)))

    async def _on_redeliver(self, msg: Msg) -> None:
        try:
            q = msgspec.json.decode(msg.data, type=RedeliverRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            await msg.respond(msgspec.json.encode(Reply(error=f"bad request: {err}")))
            return
        if not self.owns(q.name):
            return
        runner = self.runners.get(q.name)
        if runner is None:
            reply = Reply(error=f'webhook "{q.name}" is not an active subscription')
            await msg.respond(msgspec.json.encode(reply))
            return
        consumer = runner.state.consumer
        if q.seq is not None:
            found = await self.deliveries.get(consumer, q.seq)
            todo = [found] if found is not None else []
            if not todo:
                reply = Reply(error=f'webhook "{q.name}" has no delivery {q.seq}')
                await msg.respond(msgspec.json.encode(reply))
                return
        else:
            todo = sorted(await self.deliveries.of(q.name, status=DEAD, limit=10_000),
                          key=lambda d: d.seq)  # fmt: skip
            todo = [d for d in todo if d.consumer == consumer]
        done = [await runner.redeliver(d) for d in todo]
        await msg.respond(msgspec.json.encode(Reply(items=done)))
