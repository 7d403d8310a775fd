"""One subscription's delivery loop: its durable consumer, per-VM order, retries by redelivery.

Order: messages are held per aggregate (a VM); a VM with messages waits in a ready queue, and a
pool of `concurrency` workers takes one VM at a time and delivers its messages lowest sequence
first, so one VM's events reach the endpoint in log order while other VMs go in parallel, at most
`concurrency` POSTs at a time, with no task created per message. When a delivery fails, its
message is nak'ed with the retry delay (JetStream redelivers it then: no timer of ours) and the
VM is blocked behind it; later messages of that VM are held un-acked (kept alive with
`in_progress`) until it comes back. A slow or dead endpoint fills only its own consumer's
`max_ack_pending`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus.webhook_secrets import Signer
from events.names import EVENTS_STREAM
from events.webhooks import DEAD, DELIVERED, FINAL, GONE, RETRYING, Delivery, WebhookState
from orchestrator.webhooks.deliveries import DeliveryLog
from orchestrator.webhooks.http1 import Endpoint
from orchestrator.webhooks.sender import CONTENT_TYPE, HEAD, Attempt, Head, post, webhook_id
from orchestrator.webhooks.settings import WebhookSettings
from orchestrator.webhooks.subscriptions import matches, subject_filters

log = logging.getLogger("virtbus.webhooks")
FETCH = 256
PULL_EXPIRES_S = 5.0
MATCH_CACHE = 10_000

Keys = Callable[[str], Awaitable[Signer]]
OnGone = Callable[[WebhookState, str], Awaitable[None]]


@dataclass
class _Held:
    msg: Msg
    head: Head
    attempts: int  # attempts already made (from the delivery record)
    first_at: float


@dataclass
class _Key:
    held: dict[int, _Held] = field(default_factory=dict)
    blocked_by: int | None = None  # a nak'ed message this VM waits for
    inflight: int | None = None  # the message being POSTed
    active: bool = False  # in the ready queue or with a worker


def ack_position(reply: str) -> tuple[int, int]:
    """(stream sequence, delivery count) from a JetStream ack subject, v1 or v2 layout; nats-py's
    `metadata` also parses the timestamp into a datetime, a cost paid per delivery here."""
    t = reply.split(".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(t[5]), int(t[4])
    return int(t[7]), int(t[6])  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>...


def consumer_config(s: WebhookState, settings: WebhookSettings) -> ConsumerConfig:
    filters = subject_filters(s)
    cfg = ConsumerConfig(
        durable_name=s.consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=settings.ack_wait_s,
        max_deliver=-1, max_ack_pending=settings.max_ack_pending,
        filter_subjects=filters or None,
    )  # fmt: skip
    if s.from_seq == 1:
        cfg.deliver_policy = DeliverPolicy.ALL
    elif s.since is not None:
        cfg.deliver_policy, cfg.opt_start_time = DeliverPolicy.BY_START_TIME, s.since
    else:  # from the subscription on
        cfg.deliver_policy, cfg.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, s.life_seq + 1
    return cfg


class Runner:
    def __init__(
        self, nc: Client, state: WebhookState, *, deliveries: DeliveryLog,
        settings: WebhookSettings, keys: Keys, on_gone: OnGone,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.state = state
        self.deliveries = deliveries
        self.settings = settings
        self.keys = keys
        self.on_gone = on_gone
        self.stop = asyncio.Event()
        self._by_key: dict[str, _Key] = {}
        self._matched: dict[tuple[str, str], bool] = {}
        self._ready: asyncio.Queue[_Key | None] = asyncio.Queue()
        self._heard = time.monotonic()  # when the consumer last sent anything
        self._ask: Callable[[], Awaitable[None]] | None = None
        self._endpoint: Endpoint | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            raise RuntimeError("runner not started")
        return self._endpoint

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"webhook-{self.state.consumer}")

    async def close(self, *, grace: float) -> None:
        self.stop.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _consumer(self) -> None:
        """Create the durable consumer (or find it: its position is what counts), retrying
        while the bus is away."""
        js = self.nc.jetstream()
        while not self.stop.is_set():
            try:
                await js.add_consumer(EVENTS_STREAM, consumer_config(self.state, self.settings))
                return
            except Exception as err:  # it exists from an earlier run, or the bus is away
                try:
                    await js.consumer_info(EVENTS_STREAM, self.state.consumer)
                    return
                except Exception:
                    log.warning("webhook %s: no consumer yet: %r", self.state.name, err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)

    async def _run(self) -> None:
        s = self.state
        await self._consumer()
        for d in await self.deliveries.retrying(s.consumer):
            key = self._by_key.setdefault(d.subject, _Key())
            key.blocked_by = d.seq if key.blocked_by is None else min(key.blocked_by, d.seq)
        self._endpoint = Endpoint(
            s.url, allowed=self.settings.networks(), limit=self.settings.concurrency,
            timeout_s=self.settings.timeout_s, headers=[("Content-Type", CONTENT_TYPE)],
        )  # fmt: skip
        ticker = asyncio.create_task(self._keep_alive(), name=f"webhook-{s.consumer}-alive")
        workers = [
            asyncio.create_task(self._worker(), name=f"webhook-{s.consumer}-worker-{i}")
            for i in range(self.settings.concurrency)
        ]
        sub = await self._pull()
        try:
            await self.stop.wait()
        finally:
            ticker.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for _ in workers:  # each finishes the POST in hand, then takes a None and returns
                self._ready.put_nowait(None)
            _, pending = await asyncio.wait([ticker, *workers], timeout=self.settings.timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(ticker, *workers, return_exceptions=True)
            await self._endpoint.close()

    async def _pull(self) -> Subscription:
        """Pull with batches always in flight, handled in a core-subscription callback: nats-py's
        `fetch()` costs a request and an inbox per call, which at a few messages per call was
        the dispatcher's largest overhead."""
        inbox = self.nc.new_inbox()
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.{self.state.consumer}"
        request = json.dumps({"batch": FETCH, "expires": int(PULL_EXPIRES_S * 1e9)}).encode()
        received = 0

        async def ask() -> None:
            if not self.stop.is_set():
                await self.nc.publish(next_subject, request, reply=inbox)

        async def on_msg(msg: Msg) -> None:
            nonlocal received
            self._heard = time.monotonic()
            if not msg.reply:  # a status: the request expired (408) or was refused (409)
                if msg.headers and msg.headers.get("Status") == "409":
                    await asyncio.sleep(0.5)  # e.g. the consumer is gone: do not spin
                await ask()
                return
            received += 1
            if received % FETCH == 0:
                await ask()
            try:
                await self._on_msg(msg)
            except Exception:  # never let one message end the callback loop; it is redelivered
                log.exception("webhook %s: message %s", self.state.name, msg.reply)

        sub = await self.nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=4 * FETCH)
        self._ask = ask
        for _ in range(2):
            await ask()
        return sub

    async def _on_msg(self, msg: Msg) -> None:
        seq, delivered = ack_position(msg.reply)
        head = HEAD.decode(msg.data)
        if not self._matches(head):
            await msg.ack()
            return
        key = self._by_key.setdefault(head.subject, _Key())
        if seq in key.held:  # redelivered while held: keep the newest handle
            key.held[seq].msg = msg
            return
        if seq == key.inflight:  # redelivered mid-POST (a stall past ack_wait): one is enough
            return
        attempts, first_at = 0, time.time()
        if delivered > 1:
            done = await self.deliveries.get(self.state.consumer, seq)
            if done is not None and done.status in FINAL:
                await msg.ack()  # recorded, then the dispatcher died before its ack
                return
            if done is not None:
                attempts, first_at = done.attempts, done.first_at
        if key.blocked_by == seq:
            key.blocked_by = None
        key.held[seq] = _Held(msg, head, attempts, first_at)
        self._wake(key)

    def _matches(self, head: Head) -> bool:
        """`matches`, remembered per (type, VM): the same few pairs come again and again."""
        pair = (head.type, head.subject)
        if (found := self._matched.get(pair)) is None:
            if len(self._matched) >= MATCH_CACHE:
                self._matched.clear()
            found = self._matched[pair] = matches(self.state, ce_type=pair[0], subject=pair[1])
        return found

    def _wake(self, key: _Key) -> None:
        if key.held and key.blocked_by is None and not key.active:
            key.active = True
            self._ready.put_nowait(key)

    async def _worker(self) -> None:
        while (key := await self._ready.get()) is not None:
            try:
                await self._drain(key)
            except Exception:  # the held messages stay un-acked: JetStream redelivers them
                log.exception("webhook %s: delivery failed", self.state.name)
            finally:
                key.active = False
            if not self.stop.is_set():
                self._wake(key)  # messages that arrived after the last one drained

    async def _drain(self, key: _Key) -> None:
        """Deliver one VM's held messages in order until none are left or one must wait."""
        while key.held and key.blocked_by is None and not self.stop.is_set():
            seq = min(key.held)
            item = key.held.pop(seq)
            key.inflight = seq
            try:
                attempt = await self._attempt(item)
            finally:
                key.inflight = None
            if not await self._settle(item, seq, attempt, key):
                return

    async def _attempt(self, item: _Held) -> Attempt:
        s = self.state
        return await post(
            self.endpoint, body=item.msg.data, msg_id=webhook_id(item.head.id, s.name),
            signer=await self.keys(s.secret_ref), timeout_s=self.settings.timeout_s,
        )  # fmt: skip

    async def _settle(self, item: _Held, seq: int, attempt: Attempt, key: _Key) -> bool:
        """Record the attempt, then ack or nak; False when this VM (or all) must stop."""
        s, now = self.state, time.time()
        attempts = item.attempts + 1
        rec = Delivery(
            consumer=s.consumer, seq=seq, name=s.name, webhook_id=webhook_id(item.head.id, s.name),
            type=item.head.type, subject=item.head.subject, status=DELIVERED, attempts=attempts,
            code=attempt.code, error=attempt.error, first_at=item.first_at, last_at=now,
        )  # fmt: skip
        msg = item.msg
        if attempt.ok:
            self.deliveries.record(rec, msg.ack)
            return True
        if attempt.gone:
            self.deliveries.record(_with(rec, status=GONE), msg.ack)
            self.stop.set()
            await self.on_gone(s, f"{s.url} answered 410 Gone to delivery {seq}")
            return False
        if attempts >= self.settings.attempts:
            self.deliveries.record(_with(rec, status=DEAD), msg.term)
            log.warning("webhook %s: delivery %s dead-lettered after %d attempts: %s", s.name,
                        seq, attempts, attempt.error)  # fmt: skip
            return True
        delay = self.settings.retry_delay(attempts, retry_after=attempt.retry_after)
        key.blocked_by = seq

        async def nak() -> None:
            await msg.nak(delay=delay)

        self.deliveries.record(_with(rec, status=RETRYING, next_at=now + delay), nak)
        return False

    async def _keep_alive(self) -> None:
        """Held messages would be redelivered after `ack_wait`: tell JetStream we still work.
        And a server that restarted forgot our pull requests: silence past their expiry means
        asking again."""
        period = max(min(self.settings.ack_wait_s / 3, PULL_EXPIRES_S), 0.2)
        while True:
            await asyncio.sleep(period)
            if time.monotonic() - self._heard > 2 * PULL_EXPIRES_S and self._ask is not None:
                with contextlib.suppress(Exception):
                    await self._ask()
                self._heard = time.monotonic()
            for key in list(self._by_key.values()):
                for item in list(key.held.values()):
                    with contextlib.suppress(Exception):
                        await item.msg.in_progress()

    async def redeliver(self, d: Delivery) -> Delivery:
        """One more attempt at a recorded delivery, now, outside the consumer."""
        try:
            raw = await self.nc.jetstream().get_msg(EVENTS_STREAM, d.seq, direct=True)
        except NotFoundError:
            return _with(d, error=f"event {d.seq} is no longer in the log")
        if raw.data is None:
            return _with(d, error=f"event {d.seq} has no data")
        attempt = await post(
            self.endpoint, body=raw.data, msg_id=d.webhook_id,
            signer=await self.keys(self.state.secret_ref), timeout_s=self.settings.timeout_s,
        )  # fmt: skip
        status = DELIVERED if attempt.ok else (GONE if attempt.gone else DEAD)
        done = _with(d, status=status, attempts=d.attempts + 1, code=attempt.code,
                     error=attempt.error, last_at=time.time())  # fmt: skip
        self.deliveries.record(done)
        if attempt.gone:
            await self.on_gone(self.state, f"{self.state.url} answered 410 Gone to a redelivery")
        return done


def _with(d: Delivery, **changes: object) -> Delivery:
    return msgspec.structs.replace(d, **changes)
