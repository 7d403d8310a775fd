"""Command intake (virt-api): every command, from either door, is judged here exactly once.

Commands arrive on the VIRT_COMMANDS stream (a plain JetStream publish by any client, or the
`virtbus-api` service forwarding a request). Each is folded against its target's history, decided,
and recorded: decision events or a `CommandRejected`, both carrying the command id. The outcome is
also announced on `virt.outcome.<id>` for whoever waits. Nothing a client sends can crash this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from bus.crashpoints import crash_at
from bus.pulling import Puller
from bus.store import Append, EventStore
from bus.telemetry import bound, traced
from bus.trust import revoked_now
from events import commands as c
from events import model as m
from events.envelope import Recorded, decode_command, encode
from events.errors import ConcurrencyConflict, ValidationError, VirtbusError
from events.infer import infers
from events.model import CE_TYPE
from events.names import COMMANDS_STREAM, Ref, aggregate_key, command_parts, outcome_subject
from events.state import fold
from events.users import authorize, decide_user, fold_user
from orchestrator import metrics
from orchestrator.judge import decide_for
from orchestrator.nodeports import NodePortPool, ServicePorts
from orchestrator.rename import renamed_into
from orchestrator.scheduler import NodeView
from orchestrator.users import Identities
from orchestrator.volumes import ClusterView, decide_volume, fold_volume
from orchestrator.webhooks.subscriptions import prepare

log = logging.getLogger("virtbus.intake")
DURABLE = "orchestrator-intake"
REJECTED = Ref("intake", "_", "rejected")  # where commands with no nameable target are recorded
UNJUDGED = "the command could not be judged: "  # such a message is terminated, not acked
MAX_ATTEMPTS = 8
PARALLEL = 16


def _target_of_subject(subject: str) -> Ref | None:
    parts = command_parts(subject)
    return parts[0] if parts is not None else None


class _Unread(msgspec.Struct, frozen=True, kw_only=True):
    """What can be said of a command body that does not decode: for its rejection."""

    id: str
    kind: str
    actor: str


class Intake:
    def __init__(self, nc: Client, store: EventStore) -> None:
        self.nc = nc
        self.store = store
        self.malformed = 0  # bodies that are no command
        self.unjudgeable = 0  # commands whose judging met a fault (a bug, or input it missed)
        # The controller's view of the nodes, when one runs beside us: a migration's target is
        # then checked on intake (else only when the controller schedules it).
        self.nodes: Callable[[], list[NodeView]] | None = None
        # Likewise what a volume command is judged against (nodes, volumes, the claim's users).
        self.volume_view: Callable[[Ref, c.Command], Awaitable[ClusterView]] | None = None
        # Whether a VM's instance type and preference resolve (the controller's folded state),
        # and whether the KubeVirt object's configuration allows a command (its gates).
        self.vm_admission: Callable[[Ref, dict[str, Any]], Awaitable[None]] | None = None
        # A VM's instance type and preference inferred from its volumes' claims (their labels).
        self.vm_inference: Callable[[Ref, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        self.admission: Callable[[Ref, c.Command], Awaitable[None]] | None = None
        # Who may ask for what, on a secured bus (None: an open bus, where no caller is known).
        self.identities: Identities | None = None
        # And the migrations in flight, by namespace and name -> VM: a VMIM's name is unique.
        self.active_migrations: Callable[[], dict[tuple[str, str], str]] | None = None
        # The nodePort pool a Service's judgement takes from, with the log folded (the
        # controller's), and the pool itself: a judgement that records nothing gives back.
        self.service_ports: Callable[[Ref], Awaitable[ServicePorts]] | None = None
        self.node_ports: NodePortPool | None = None
        # JetStream refuses too many atomic batches in flight; commands beyond wait their turn.
        self._parallel = asyncio.Semaphore(PARALLEL)

    async def process(self, raw: bytes, *, subject: str, fallback_id: str) -> c.Outcome:
        """Judge one command given as bytes; never raises for anything the client sent."""
        try:
            cmd = decode_command(raw)
        except ValidationError as err:
            self.malformed += 1
            return await self._reject_undecodable(raw, err, subject=subject, cid=fallback_id)
        if not cmd.id:
            cmd = msgspec.structs.replace(cmd, id=fallback_id)
        parts = command_parts(subject)
        if parts is not None and parts[1] and cmd.actor != parts[1]:
            # The subject's actor is the one the server let publish there: it is who asked,
            # whatever name the body gives (the body's is only a client's say-so).
            cmd = msgspec.structs.replace(cmd, actor=parts[1])
        return await self.judge(cmd, subject=subject)

    async def judge(self, cmd: c.Command, *, subject: str = "") -> c.Outcome:
        """Decide `cmd` and record the outcome; a command that meets a fault in the judging is
        recorded as rejected (where its target can be named) rather than left to fail again."""
        outcome: c.Outcome | None = None
        try:
            outcome = await self._judge(cmd, subject=subject)
            return outcome
        except VirtbusError:
            raise  # the bus's own errors: retried (retryable) or terminated by `on_msg`
        except Exception as err:
            self.unjudgeable += 1
            metrics.UNJUDGEABLE.inc()
            log.exception("command %s (%s) could not be judged", cmd.id, type(cmd).__name__)
            try:
                target = cmd.target
            except Exception:
                target = REJECTED
            return await self._record_rejection(target, cmd, unjudged(err))
        finally:
            if isinstance(cmd, c.CreateService) and self.node_ports is not None and (
                outcome is None or not outcome.accepted
            ):  # fmt: skip
                self.node_ports.forget(Ref("service", cmd.namespace, cmd.name).prefix)

    async def _judge(self, cmd: c.Command, *, subject: str) -> c.Outcome:
        try:
            ref = cmd.target
        except ValidationError as err:
            return await self._record_rejection(REJECTED, cmd, err)
        addressed = _target_of_subject(subject) if subject else None
        if addressed is not None and addressed != ref:
            mismatch = ValidationError(
                f"the command was published for {addressed} but names {ref}", field="name"
            )
            return await self._record_rejection(REJECTED, cmd, mismatch)
        caller = command_parts(subject) if subject else None
        if self.identities is not None and caller is not None and caller[1]:
            try:  # an authenticated caller: its role decides before the target's state does
                authorize(await self.identities.user(caller[1]), cmd)
            except ValidationError as err:
                return await self._record_rejection(ref, cmd, err)
        try:
            if self.admission is not None:
                await self.admission(ref, cmd)
        except ValidationError as err:
            return await self._record_rejection(ref, cmd, err)
        if isinstance(cmd, c.ApplyVM) and infers(cmd.spec):
            try:  # KubeVirt's webhook: the inferred names are what the VM's spec records
                if self.vm_inference is None:
                    raise ValidationError("inferFromVolume is resolved where a controller runs",
                                          field="spec.instancetype.inferFromVolume")  # fmt: skip
                cmd = msgspec.structs.replace(cmd, spec=await self.vm_inference(ref, cmd.spec))
            except ValidationError as err:
                return await self._record_rejection(ref, cmd, err)
        if isinstance(cmd, c.ApplyVM) and not self.store.heads.knows(ref):
            # Most applies create: decide on "no such VM" and let the append's concurrency check
            # say otherwise, which saves reading a history that is usually not there.
            # A spec it refuses is judged again below, where the rejection is recorded.
            with contextlib.suppress(ConcurrencyConflict, ValidationError):
                events = decide_for(ref, [], cmd)
                created = await self.store.append(
                    ref, events, expected_version=0, command_id=cmd.id, actor=cmd.actor
                )
                crash_at("intake", [cmd])
                return c.Outcome(
                    command_id=cmd.id, accepted=True, version=created.version,
                    events=[CE_TYPE[type(e)] for e in events], duplicate=created.duplicate,
                )  # fmt: skip
        for _ in range(MAX_ATTEMPTS):
            history = await self.store.read(ref)
            version = history[-1].envelope.version if history else 0
            mine = [r for r in history if r.envelope.correlationid == cmd.id]
            if mine:  # carried out before (a redelivery, a retrying client)
                return _outcome(cmd.id, mine, duplicate=True)
            try:
                cmd = await prepare(self.nc, cmd)
                if ref.kind == "volume":
                    if self.volume_view is None:
                        raise ValidationError("volumes are judged where a controller runs",
                                              field="kind")  # fmt: skip
                    view = await self.volume_view(ref, cmd)
                    events = decide_volume(fold_volume(history), cmd, view)
                elif ref.kind == "user":
                    events = self._decide_user(ref, history, cmd)
                else:
                    nodes = self.nodes() if self.nodes and isinstance(cmd, c.MigrateVM) else None
                    ports = None
                    if isinstance(cmd, c.CreateService) and self.service_ports is not None:
                        ports = await self.service_ports(ref)
                    if isinstance(cmd, c.MigrateVM) and self.active_migrations is not None:
                        _unique_migration(cmd, self.active_migrations())
                    if isinstance(cmd, c.StartVM) and self.vm_admission is not None:
                        # KubeVirt's words for a missing instance type or preference, at start.
                        await self.vm_admission(ref, fold(r.envelope for r in history).spec)
                    events = decide_for(ref, history, cmd, nodes=nodes, node_ports=ports)
                parts = [Append(ref, events, version)]
                if isinstance(cmd, c.RenameVM) and events:
                    old = fold(r.envelope for r in history)
                    parts.append(await renamed_into(self.store, cmd, old))
            except ValidationError as err:
                return await self._record_rejection(ref, cmd, err, version)
            if not events:
                return c.Outcome(command_id=cmd.id, accepted=True, version=version)
            try:
                result, *_ = await self.store.append_many(parts, command_id=cmd.id, actor=cmd.actor)
            except ConcurrencyConflict:
                continue  # someone else moved the VM: judge again on the new state
            crash_at("intake", [cmd])
            if ref.kind == "user" and self.identities is not None:
                self.identities.changed(ref.name)
                if any(isinstance(e, m.UserRevoked) for e in events):
                    await self.identities.push_revocations()
            return c.Outcome(
                command_id=cmd.id, accepted=True, version=result.version,
                events=[CE_TYPE[type(e)] for e in events], duplicate=result.duplicate,
            )  # fmt: skip
        reason = f"{ref} kept changing while the command was judged; try again"
        return c.Outcome(command_id=cmd.id, accepted=False, reason=reason, field="name")

    def _decide_user(self, ref: Ref, history: list[Recorded], cmd: c.Command) -> list[m.Event]:
        jwt = self.identities.sign(cmd) if self.identities is not None else ""
        if isinstance(cmd, c.AddUser) and not jwt and self.identities is None:
            raise ValidationError("users exist only on a secured bus (virtbus up)", field="kind")
        state = fold_user(ref.name, (r.envelope for r in history))
        return decide_user(state, cmd, jwt=jwt, now=revoked_now())

    async def _record_rejection(
        self, ref: Ref, cmd: c.Command | _Unread, err: ValidationError, version: int | None = None
    ) -> c.Outcome:
        cid, kind = cmd.id, type(cmd).__name__ if isinstance(cmd, c.Command) else cmd.kind
        event = m.CommandRejected(command_id=cid, command=kind, reason=err.message, field=err.field)
        for _ in range(MAX_ATTEMPTS):
            if version is None:
                version = (await self.store.head(ref, fresh=True)).version
            try:
                await self.store.append(ref, [event], expected_version=version, command_id=cid,
                                        actor=cmd.actor)  # fmt: skip
                break
            except ConcurrencyConflict as conflict:
                version = conflict.actual_version
        return c.Outcome(command_id=cid, accepted=False, reason=err.message, field=err.field)

    async def _reject_undecodable(
        self, raw: bytes, err: ValidationError, *, subject: str, cid: str
    ) -> c.Outcome:
        # The target is recorded where the subject names one, so the VM's history shows it; the
        # actor is the subject's (the body's cannot be read, nor trusted).
        parts = command_parts(subject)
        unread = _Unread(id=cid, kind="unknown", actor=parts[1] if parts else "")
        with contextlib.suppress(Exception):
            body = msgspec.json.decode(raw)
            if isinstance(body, dict):
                unread = msgspec.structs.replace(unread, kind=str(body.get("kind", "unknown")),
                                                 id=str(body.get("id") or cid))  # fmt: skip
        try:
            ref = parts[0] if parts else REJECTED
            target = Ref.of(ref.kind, ref.name, ref.namespace) if parts else REJECTED
        except ValidationError:
            target = REJECTED
        return await self._record_rejection(target, unread, err)

    async def on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        # A body without an id takes the publisher's Nats-Msg-Id, else the stream sequence.
        fallback = (msg.headers or {}).get("Nats-Msg-Id") or f"cmd-{seq}"
        parts = msg.subject.split(".")  # virt.cmd.<kind>.<ns>.<name>.<Command>[.<actor>]
        target, kind = ".".join(parts[2:5]), parts[5] if len(parts) > 5 else ""
        try:
            trace = (msg.headers or {}).get("traceparent")
            with bound(command_id=fallback, target=target.replace(".", "/"), command=kind), \
                    traced(trace):  # fmt: skip
                outcome = await self.process(msg.data, subject=msg.subject, fallback_id=fallback)
        except VirtbusError as err:
            if err.retryable:
                await msg.nak(delay=1)
                return
            log.error("command %s could not be judged: %s", seq, err)
            outcome = c.Outcome(command_id=fallback, accepted=False, reason=str(err))
            with contextlib.suppress(Exception):
                body = msgspec.json.decode(msg.data)
                if isinstance(body, dict) and body.get("id"):
                    outcome = msgspec.structs.replace(outcome, command_id=str(body["id"]))
            await self.nc.publish(outcome_subject(outcome.command_id), encode(outcome))
            await msg.term()
            return
        except Exception:  # not even a rejection could be recorded: drop it, keep the loop
            self.unjudgeable += 1
            metrics.UNJUDGEABLE.inc()
            log.exception("command at seq %s dropped: it could not be judged or rejected", seq)
            await msg.term()
            return
        metrics.COMMANDS.labels(kind, "accepted" if outcome.accepted else "rejected").inc()
        await self.nc.publish(outcome_subject(outcome.command_id), encode(outcome))
        # Terminated (an advisory says so) rather than acked: it met a fault, not a judgement.
        await (msg.term() if outcome.reason.startswith(UNJUDGED) else msg.ack())

    async def _in_order(self, msgs: list[Msg]) -> None:
        async with self._parallel:
            for msg in msgs:
                await self.on_msg(msg)

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        js = self.nc.jetstream()
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=10)
        # Taken over from the ack floor: what the last holder had been handed and never acked (a
        # pull it made as it died may even take a command published after its death) is judged
        # now, not ack_wait later. Judging a command twice is safe: its id makes it one.
        with contextlib.suppress(NotFoundError):
            floor = (await js.consumer_info(COMMANDS_STREAM, DURABLE)).ack_floor
            await js.delete_consumer(COMMANDS_STREAM, DURABLE)
            if floor is not None and floor.stream_seq:
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = floor.stream_seq + 1
        return await js.pull_subscribe("virt.cmd.>", durable=DURABLE, stream=COMMANDS_STREAM,
                                       config=config)  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        self.puller = Puller(self._subscribe, stop=stop, what="commands")
        try:
            while not stop.is_set():
                msgs = await self.puller.fetch(100)
                # One VM's commands in order; different VMs side by side.
                by_target: dict[str, list[Msg]] = {}
                for msg in msgs:
                    by_target.setdefault(aggregate_key(msg.subject), []).append(msg)
                await asyncio.gather(*(self._in_order(group) for group in by_target.values()))
        finally:
            await self.puller.close()


def unjudged(err: Exception) -> ValidationError:
    """The rejection of a command whose judging met a fault: no field can be named."""
    return ValidationError(f"{UNJUDGED}{type(err).__name__}: {err}")


def _outcome(cid: str, mine: list[Recorded], *, duplicate: bool) -> c.Outcome:
    last = mine[-1].envelope
    if isinstance(last.data, m.CommandRejected):
        return c.Outcome(
            command_id=cid, accepted=False, reason=last.data.reason, field=last.data.field,
            version=last.version, duplicate=duplicate,
        )  # fmt: skip
    return c.Outcome(
        command_id=cid, accepted=True, version=last.version, duplicate=duplicate,
        events=[r.envelope.type for r in mine],
    )  # fmt: skip


def _unique_migration(cmd: c.MigrateVM, active: dict[tuple[str, str], str]) -> None:
    """Two VirtualMachineInstanceMigrations of one name cannot exist at once (one per namespace,
    as Kubernetes names objects); the same VM's own is the same object applied again."""
    owner = active.get((cmd.namespace, cmd.migration)) if cmd.migration else None
    if owner is not None and owner != cmd.name:
        raise ValidationError(
            f'virtualmachineinstancemigrations.kubevirt.io "{cmd.migration}" already exists '
            f"(migrating VMI {owner})", field="metadata.name",
        )  # fmt: skip
