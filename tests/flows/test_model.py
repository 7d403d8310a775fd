"""A model-based test: random command sequences against a real stack, checked against a model.

Hypothesis drives apply / start / stop / restart / pause / unpause / migrate / snapshot / restore
/ delete / undelete over three VMs and two nodes on libvirt's test driver (real nats-server,
orchestrator and node workers, as `virtbus up` runs them), and invalid commands too. After each
settled step, for every VM: the fold of its history equals the model's prediction, the read
model's row (what `get vm` prints) equals the fold exactly, no event arrived after the settle, and
each node's libvirt lists exactly the domains the folds say run there, in the state they say,
each with one launcher. A refused command must say why in KubeVirt's words, append exactly one
CommandRejected and change nothing else.

The stack lives on pytest's session loop (libvirt binds its events to one loop per process);
Hypothesis runs in a thread and hands each step's coroutine to that loop. One stack serves every
example; each example has VM names of its own and deletes its VMs at the end.

`make test` runs a bounded, derandomized run; `VIRTBUS_FUZZ=campaign` runs a long random one
(`VIRTBUS_FUZZ_EXAMPLES`, default 200, sets how many examples).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from driverstack import Stack, driver_stack, launchers
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from msgspec.structs import replace
from vmmodel import ANY, NODES, PAUSED, RUNNING, VM, Cluster, facets, spec_for

from bus.client import Rejected, query, send
from events import commands as c
from events import model as m
from events.names import Ref
from events.protocol import Query
from events.render import vm_object
from events.state import VMState, apply, fold, migration_active
from workers.hypervisor import PAUSED_STATE, RUNNING_STATES, domain_name
from workers.worker import Worker

T = TypeVar("T")
SETTLE_S = 60.0  # the most one step may take to settle before the test fails, naming the VM
CAMPAIGN = os.environ.get("VIRTBUS_FUZZ") == "campaign"
SETTINGS = settings(
    max_examples=int(os.environ.get("VIRTBUS_FUZZ_EXAMPLES", "200")) if CAMPAIGN else 20,
    stateful_step_count=40 if CAMPAIGN else 25,
    derandomize=not CAMPAIGN,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
_example = itertools.count()


class Env:
    """The stack, its node workers and its loop, as the Hypothesis thread reaches them."""

    def __init__(self, stack: Stack, workers: dict[str, Worker]) -> None:
        self.stack = stack
        self.workers = workers
        self.loop = asyncio.get_running_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(SETTLE_S * 2)  # the coroutines time themselves out before this
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise AssertionError(f"a step did not finish within {SETTLE_S * 2}s") from None


def _quiet(s: VMState) -> bool:
    """Nothing under way: no transitional status, no migration, snapshot or restore, and no
    address still held by an instance that ended (the controller appends its reaction step by
    step: VMStopped, then the IPReleased that follows it)."""
    return (
        s.status in ("Stopped", RUNNING, PAUSED, "Deleted")
        and not (s.ip and s.ip_vmi != s.vmi_uid)
        and s.phase == (RUNNING if s.status in (RUNNING, PAUSED) else "")
        and not migration_active(s.migration)
        and not s.snapshotting
        and not s.restoring
    )


class Lifecycle(RuleBasedStateMachine):
    env: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        n = next(_example)
        self.model = Cluster([f"m{n}-vm{i}" for i in range(3)])
        self.valid_steps = 0  # since the last refusal: refusals stay a third of the steps at most

    # --- driving the stack -----------------------------------------------------------------------

    def _pick(self, data: st.DataObject, ok: Callable[[VM], bool]) -> VM:
        return data.draw(st.sampled_from([v for v in self.model.vms if ok(v)]), label="vm")

    def _do(self, v: VM, cmd: c.Command, predict: Callable[[], None]) -> None:
        """Send a command the model says is valid, predict its effect, settle, check all."""
        try:
            outcome = self.env.run(send(self.env.stack.nc, cmd, wait_s=SETTLE_S))
        except Rejected as err:
            raise AssertionError(f"{type(cmd).__name__} {v.name} refused: {err}") from None
        predict()
        self.valid_steps += 1
        self.env.run(self._settle(v, outcome.version))
        self.env.run(self._check())

    async def _settle(self, v: VM, version: int) -> None:
        """Follow the VM's events (as `virtbus wait` does) until its fold is what the model says,
        with nothing under way."""
        store, ref, want = self.env.stack.store, Ref.vm(v.name), v.expected()

        # A running VM's migration source deletes its launcher after the MigrationSucceeded,
        # and says so in a LauncherDeleted of its own: the step is not over until that came. (A
        # stopped VM's move has no launcher; a running one's cold move, the test driver's, is
        # told by the source's DomainStopped "migrated" first.)
        source_cleanup, moved_away = "", False

        def note(e: m.Event) -> None:
            nonlocal source_cleanup, moved_away
            if isinstance(e, m.DomainStopped) and e.reason == "migrated":
                moved_away = True
            elif isinstance(e, m.MigrationSucceeded):
                if e.source != e.target and (e.mode != "cold" or moved_away):
                    source_cleanup = e.source
                moved_away = False
            elif isinstance(e, m.LauncherDeleted) and e.node == source_cleanup:
                source_cleanup = ""

        def done(s: VMState) -> bool:
            got = facets(s)
            if want["node"] == ANY and s.node in NODES:
                got["node"] = got["last_node"] = ANY
            return s.version >= version and _quiet(s) and got == want and not source_cleanup

        records = await store.read(ref)
        s = fold(r.envelope for r in records)
        for r in records:
            note(r.envelope.data)
        try:
            async with asyncio.timeout(SETTLE_S):
                if not done(s):
                    tail = store.follow(from_seq=(records[-1].seq if records else 0) + 1)
                    async with contextlib.aclosing(tail):
                        async for rec in tail:
                            if rec.subject.startswith(ref.prefix + "."):
                                s = apply(s, rec.envelope)
                                note(rec.envelope.data)
                                if done(s):
                                    break
        except TimeoutError:
            got = facets(s)
            diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
            pytest.fail(f"{v.name} did not settle within {SETTLE_S}s: status {s.status} phase "
                        f"{s.phase!r}; (fold, model) differ in {diff}; the launcher on "
                        f"{source_cleanup or 'no source'} left to delete")  # fmt: skip
        if want["node"] == ANY:
            self.model.placed(v, s.node)

    async def _read_model(self, v: VM, seq: int) -> VMState | None:
        """The read model's row for `v` once it has folded up to `seq` (it trails the log and
        says how far it got: this waits on that position, not on a clock)."""
        nc = self.env.stack.nc
        async with asyncio.timeout(SETTLE_S):
            while True:
                answer = await query(nc, Query(name=v.name))
                if answer.position >= seq:
                    return answer.vms[0] if answer.vms else None
                await asyncio.sleep(0.02)

    async def _check(self) -> None:
        folds: dict[str, VMState] = {}
        for v in self.model.vms:
            ref = Ref.vm(v.name)
            records = await self.env.stack.store.read(ref)
            # Named from the start, as the read model's rows are: a VM whose log holds only
            # refusals never gets its name from a VMCreated.
            s = fold((r.envelope for r in records), VMState(namespace="default", name=v.name))
            folds[v.name] = s
            assert facets(s) == v.expected(), f"{v.name}: fold {facets(s)} != model"
            assert _quiet(s), f"{v.name} is not settled: {s.status} {s.phase!r}"
            row = await self._read_model(v, records[-1].seq if records else 0)
            later = await self.env.stack.store.read(ref)
            assert [r.seq for r in later] == [r.seq for r in records], (
                f"{v.name}: events after it settled: "
                f"{[r.envelope.data for r in later[len(records) :]]}; before: "
                f"{[(r.seq, r.envelope.data) for r in records[-6:]]}"
            )
            if not records:
                assert row is None, f"{v.name}: the read model has a VM the log never named"
                continue
            assert row == s, f"{v.name}: read model {row} != fold {s}"
            assert vm_object(row)["status"]["printableStatus"] == v.status
            running = s.phase == RUNNING
            assert len(launchers(v.name)) == int(running), f"{v.name}: launchers {running=}"
        for node, worker in self.env.workers.items():
            domains = await worker.hv.domains()
            seen = {d: RUNNING if st_ in RUNNING_STATES else PAUSED if st_ == PAUSED_STATE
                    else f"libvirt state {st_}" for d, st_ in domains.items()}  # fmt: skip
            want = {domain_name(Ref.vm(n)): s.status for n, s in folds.items()
                    if s.phase == RUNNING and s.node == node}  # fmt: skip
            assert seen == want, f"{node}: libvirt has {seen}, the folds say {want}"

    # --- valid commands --------------------------------------------------------------------------

    @rule(data=st.data(), running=st.booleans(), cores=st.sampled_from([1, 2]))
    def apply_spec(self, data: st.DataObject, running: bool, cores: int) -> None:
        v = self._pick(data, lambda v: True)
        cmd = c.ApplyVM(name=v.name, spec=spec_for(v.name, running=running, cores=cores))
        self._do(v, cmd, lambda: self.model.apply(v, running=running, cores=cores))

    @precondition(lambda self: any(v.exists and not v.active for v in self.model.vms))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: v.exists and not v.active)
        self._do(v, c.StartVM(name=v.name), lambda: self.model.start(v))

    @precondition(lambda self: any(v.active or (v.exists and v.strategy == "Always")
                                   for v in self.model.vms))  # fmt: skip
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: v.active or (v.exists and v.strategy == "Always"))
        self._do(v, c.StopVM(name=v.name), lambda: self.model.stop(v))

    @precondition(lambda self: any(v.active for v in self.model.vms))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: v.active)

        def predict() -> None:
            self.model.halt(v)
            self.model.boot(v)

        self._do(v, c.RestartVM(name=v.name), predict)

    @precondition(lambda self: any(v.status == RUNNING for v in self.model.vms))
    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: v.status == RUNNING)
        self._do(v, c.PauseVM(name=v.name), lambda: setattr(v, "status", PAUSED))

    @precondition(lambda self: any(v.status == PAUSED for v in self.model.vms))
    @rule(data=st.data())
    def unpause(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: v.status == PAUSED)
        self._do(v, c.UnpauseVM(name=v.name), lambda: setattr(v, "status", RUNNING))

    @precondition(lambda self: any(v.exists for v in self.model.vms))
    @rule(data=st.data(), named=st.booleans())
    def migrate(self, data: st.DataObject, named: bool) -> None:
        v = self._pick(data, lambda v: v.exists)
        others = tuple(n for n in NODES if n != (v.node if v.active else v.home))
        named = named or not (v.active or v.home)  # not the scheduler's free choice (see ANY)
        target = data.draw(st.sampled_from(others), label="target") if named else None
        chosen = target or self.model.place(v, among=others)
        cmd = c.MigrateVM(name=v.name, target_node=target)
        self._do(v, cmd, lambda: self.model.migrate(v, chosen))

    @precondition(lambda self: any(v.exists and v.last_node for v in self.model.vms))
    @rule(data=st.data())
    def snapshot(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: v.exists and bool(v.last_node))
        name = v.fresh("s")
        self._do(v, c.SnapshotVM(name=v.name, snapshot=name), lambda: self.model.snapshot(v, name))

    @precondition(lambda self: any(_restorable(v) for v in self.model.vms))
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        v = self._pick(data, _restorable)
        snaps = sorted(n for n, s in v.snapshots.items() if s.phase == "Succeeded")
        snap, name = data.draw(st.sampled_from(snaps), label="snapshot"), v.fresh("r")
        cmd = c.RestoreVM(name=v.name, snapshot=snap, restore=name)
        self._do(v, cmd, lambda: self.model.restore(v, snap, name))

    @precondition(lambda self: any(v.exists for v in self.model.vms))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: v.exists)
        self._do(v, c.DeleteVM(name=v.name), lambda: self.model.delete(v))

    @precondition(lambda self: any(v.deleted for v in self.model.vms))
    @rule(data=st.data())
    def undelete(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: v.deleted)
        self._do(v, c.UndeleteVM(name=v.name), lambda: self.model.undelete(v))

    # --- invalid commands ------------------------------------------------------------------------

    @precondition(lambda self: self.valid_steps >= 2)
    @rule(data=st.data())
    def refused(self, data: st.DataObject) -> None:
        v = self._pick(data, lambda v: True)
        cmd, reason = data.draw(st.sampled_from(self.model.refused(v)), label="refused")
        self.valid_steps = 0
        self.env.run(self._refused(v, cmd, reason))
        self.env.run(self._check())

    async def _refused(self, v: VM, cmd: c.Command, reason: str) -> None:
        store, ref = self.env.stack.store, Ref.vm(v.name)
        before = await store.read(ref)
        with pytest.raises(Rejected) as err:
            await send(self.env.stack.nc, cmd, wait_s=SETTLE_S)
        assert err.value.message.startswith(reason), f"{err.value.message!r} !~ {reason!r}"
        after = await store.read(ref)
        assert [r.seq for r in after[: len(before)]] == [r.seq for r in before]
        [rejected] = [r.envelope.data for r in after[len(before) :]]
        assert isinstance(rejected, m.CommandRejected)
        assert (rejected.command, rejected.reason) == (type(cmd).__name__, err.value.message)
        was, now = fold(r.envelope for r in before), fold(r.envelope for r in after)
        assert replace(now, version=was.version, updated=was.updated,
                       last_rejection=was.last_rejection) == was  # fmt: skip

    # --- the end of an example -------------------------------------------------------------------

    def teardown(self) -> None:
        """Delete this example's VMs, so the next one starts on empty nodes."""
        for v in self.model.vms:
            if v.exists:
                self._do(v, c.DeleteVM(name=v.name), lambda v=v: self.model.delete(v))


def _restorable(v: VM) -> bool:
    return v.exists and not v.active and any(s.phase == "Succeeded" for s in v.snapshots.values())


async def test_the_model_the_log_the_read_model_and_libvirt_agree(tmp_path: Path) -> None:
    async with driver_stack(tmp_path) as stack:
        workers = {node: await stack.driver_node(node) for node in NODES}
        machine = type("VMLifecycle", (Lifecycle,), {"env": Env(stack, workers)})
        await asyncio.to_thread(run_state_machine_as_test, machine, settings=SETTINGS)
