"""`virtbus up`: the embedded stack in the foreground until Ctrl-C.

Staged shutdown: the stop signal sets an event, components drain, then the server stops with a grace
period; a second Ctrl-C cuts the grace short. A node worker or the orchestrator that dies before
is started again with a back-off (`virtbus/supervise.py`); the stack stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path

from rich.console import Console

from bus.audit import describe_key, load_key
from bus.connect import Access, configured, connect, use
from bus.provision import provision
from bus.roles import component_permissions, component_role, record_identities
from bus.server import die_with_parent, fsync_policy
from bus.store import EventStore
from bus.trust import Trust, ensure
from events.errors import BusUnavailable
from events.work import MigrationPolicy
from orchestrator.app import run_orchestrator
from orchestrator.readmodel import ReadModel
from orchestrator.web import configured_port
from virtbus.guestdisk import serve_guest
from virtbus.supervise import supervise_process, supervise_task
from virtbus.upbus import OwnedBus, replicas_for, start_bus
from workers.accel import accelerator

# soft_wrap: a line per fact, however narrow the terminal (scripts read them)
console = Console(stderr=True, highlight=False, soft_wrap=True)


async def run_up(
    *, data_dir: Path, port: int, server: str | None, sync_always: bool, nodes: int,
    hypervisor: str, migration_policy: MigrationPolicy | None = None, mutual_tls: bool = False,
    cluster: int = 0, replicas: int | None = None, orchestrators: int = 1,
) -> None:  # fmt: skip
    """`cluster`: run that many nats-servers as one JetStream cluster (0: one server);
    `replicas`: copies of each stream (default: one per server, refused beyond what it holds);
    `orchestrators`: o1 in this process, the others as their own processes (standbys: the lease
    says which one acts)."""
    copies = replicas_for(cluster=cluster, replicas=replicas, external=server is not None)
    stop = asyncio.Event()
    lost = ""  # why the stack stopped, when not by Ctrl-C
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    owned: OwnedBus | None = None
    trust: Trust | None = None
    served = contextlib.ExitStack()  # the tiny guest's registry (QEMU nodes), stopped last
    try:
        if server:
            url, given = server, configured()  # one login for every part, as the user gave it
            logins = {"admin": given, "orchestrator": given}
            console.print(f"using the NATS server at {url} (not started by virtbus)")
        else:
            trust = ensure(data_dir)
            logins = _identities(trust, nodes=nodes, mutual_tls=mutual_tls)
            owned = await start_bus(data_dir, trust=trust, port=port, cluster=cluster,
                                    sync_always=sync_always, mutual_tls=mutual_tls,
                                    admin=logins["admin"])  # fmt: skip
            url = owned.url
            served.callback((data_dir / "bus.url").unlink, missing_ok=True)
            (data_dir / "bus.url").write_text(url + "\n")  # where the CLI finds every server
            for line in owned.describe():
                console.print(line)
            console.print(f"durability: {fsync_policy(sync_always)}")
        nc = await connect(url, name="virtbus-up", access=logins["admin"])
        orchestrator_nc = await connect(url, name="virtbus-orchestrator",
                                        access=logins["orchestrator"], lasting=True)  # fmt: skip
        dispatcher_nc = await connect(url, name="virtbus-webhooks",
                                      access=logins.get("dispatcher", logins["orchestrator"]),
                                      lasting=True)  # fmt: skip
        use(logins["orchestrator"])  # whatever else the orchestrator opens, it opens as itself
        try:
            created = await provision(nc.jetstream(), replicas=copies)
            console.print("provisioned: " + (", ".join(created) or "everything already in place"))
            if trust is not None:
                roles = {name: component_role(name) for name in logins}
                await record_identities(EventStore(nc, source="/virtbus/up"), trust,
                                        roles=roles)  # fmt: skip
            audit, web = describe_key(load_key()), configured_port()  # bad settings stop us here

            def orchestrate(own: asyncio.Event) -> Awaitable[None]:
                return run_orchestrator(orchestrator_nc, data_dir=data_dir / "orchestrator",
                                        stop=own, migration_policy=migration_policy,
                                        trust=trust, webhooks_nc=dispatcher_nc,
                                        name="o1")  # fmt: skip

            orchestrator = asyncio.create_task(
                supervise_task("orchestrator", orchestrate, stop=stop, console=console),
                name="orchestrator",
            )
            console.print(
                f"orchestrator o1: pid {os.getpid()} (in this process; virtbus-api "
                "and the webhook dispatcher on the bus)"
            )
            workers = []
            for k in range(2, orchestrators + 1):
                spawn_o = functools.partial(
                    _spawn_orchestrator, f"o{k}", url=url, data_dir=data_dir, logins=logins,
                    trusted=trust is not None,
                )  # fmt: skip
                first_o = await spawn_o()
                console.print(f"orchestrator o{k}: pid {first_o.pid} (a standby until it holds "
                              "the lease)")  # fmt: skip
                workers.append(asyncio.create_task(
                    supervise_process(f"orchestrator o{k}", spawn_o, first=first_o, stop=stop,
                                      console=console, stop_process=_stop_process),
                    name=f"up-orchestrator-o{k}",
                ))  # fmt: skip
            console.print(f"audit: {audit}")
            if web is not None:
                console.print(f"web view: http://127.0.0.1:{web}/")
            registries = None
            if hypervisor == "qemu" and nodes:
                registries = await asyncio.to_thread(
                    served.enter_context, serve_guest(data_dir / "registry", say=console.print)
                )
            for i in range(nodes):
                name = _node_name(i)
                spawn = functools.partial(_spawn_worker, name, url=url, data_dir=data_dir / "nodes",
                                          hypervisor=hypervisor, index=i,
                                          access=logins.get(name, logins["admin"]),
                                          registries=registries)  # fmt: skip
                first = await spawn()
                what = "libvirt test driver"
                if hypervisor == "qemu":
                    accel, why = accelerator()
                    what = f"its own libvirtd (QEMU, {accel}: {why})"
                console.print(f"node {name}: pid {first.pid}, {what}")
                workers.append(asyncio.create_task(
                    supervise_process(f"node {name}", spawn, first=first, stop=stop,
                                      console=console, stop_process=_stop_process),
                    name=f"up-node-{name}",
                ))  # fmt: skip
            print(f"bus: {url}", flush=True)
            console.print("press Ctrl-C to stop")
            try:
                lost = await _until_stopped(stop, owned)
                console.print("stopping...")
            finally:
                stop.set()  # the supervisors stop their children and return
                await asyncio.gather(*workers)
                await orchestrator
        finally:
            for conn in (dispatcher_nc, orchestrator_nc, nc):
                with contextlib.suppress(Exception):  # a dead server's connection cannot flush
                    await conn.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(served.close)
        if owned is not None:
            await owned.stop()
    if lost:
        raise BusUnavailable(lost)


async def _until_stopped(stop: asyncio.Event, bus: OwnedBus | None) -> str:
    """Until Ctrl-C (""), or until the bus we run is lost (why): all rests on it, so all stops."""
    waits: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait(), name="up-stop")]
    if bus is not None:
        waits.append(asyncio.create_task(bus.until_lost(stop, say=console.print),
                                         name="up-nats-server"))  # fmt: skip
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if stop.is_set():
        return ""
    return str(done.pop().result())


def _identities(trust: Trust, *, nodes: int, mutual_tls: bool) -> dict[str, Access]:
    """Each part's own credentials (made on the first run, kept after), the CA they trust, and
    with `mutual_tls` each one's client certificate (`D/tls/clients/`)."""
    names = ["admin", "orchestrator", "dispatcher", *(_node_name(i) for i in range(nodes))]
    for name in names:  # each part only what it needs (`bus/roles.py`)
        trust.ensure_creds(name, permissions=component_permissions(name))
    console.print(f"credentials: {trust.creds_file('admin')} (admin), CA {trust.ca_file}")
    if mutual_tls:
        console.print(
            f"mutual TLS: client certificates in {trust.root / 'tls' / 'clients'}; a "
            f"certificate alone logs in with {trust.sentinel_creds()} beside it"
        )
    out = {}
    for name in names:
        cert, key = trust.client_cert(name) if mutual_tls else (None, None)
        out[name] = Access(trust.creds_file(name), trust.ca_file, tls_cert=cert, tls_key=key)
    return out


def _node_name(index: int) -> str:
    return f"node-{chr(ord('a') + index)}"


async def _spawn_worker(
    name: str, *, url: str, data_dir: Path, hypervisor: str, index: int, access: Access,
    registries: str | None = None,
) -> asyncio.subprocess.Process:  # fmt: skip
    """A node worker as its own process: the orchestrator and workers meet only on the bus."""
    given = {"--creds": access.creds, "--tls-ca": access.tls_ca, "--tls-cert": access.tls_cert,
             "--tls-key": access.tls_key}  # fmt: skip
    login = [arg for option, path in given.items() if path for arg in (option, str(path))]
    extra = ["--registries", registries] if registries else []
    if hypervisor == "qemu":  # real guests get real addresses (the node says if it cannot)
        extra.append("--vm-network")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers", "--node", name, "--data-dir", str(data_dir),
        "--server", url, "--hypervisor", hypervisor, "--index", str(index), *login, *extra,
        stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent,
    )  # fmt: skip


async def _spawn_orchestrator(
    name: str, *, url: str, data_dir: Path, logins: dict[str, Access], trusted: bool
) -> asyncio.subprocess.Process:  # fmt: skip
    """Another orchestrator as its own process, logged in like the first (and its dispatcher)."""
    me, hooks = logins["orchestrator"], logins.get("dispatcher")
    given = {"--creds": me.creds, "--tls-ca": me.tls_ca, "--tls-cert": me.tls_cert,
             "--tls-key": me.tls_key, "--dispatcher-creds": hooks.creds if hooks else None,
             "--trust-dir": data_dir if trusted else None}  # fmt: skip
    login = [arg for option, path in given.items() if path for arg in (option, str(path))]
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "--server", url, "--name", name,
        "--data-dir", str(data_dir / f"orchestrator-{name}"), *login,
        stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent,
    )  # fmt: skip


async def _stop_process(proc: asyncio.subprocess.Process, *, grace: float = 10) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def rebuild(url: str, *, data_dir: Path) -> int:
    """`virtbus admin rebuild-projections`: the read model anew, from the first event."""
    nc = await connect(url, name="virtbus-admin")
    try:
        async with ReadModel(data_dir / "readmodel.sqlite", EventStore(nc)) as rm:
            return await rm.rebuild()
    finally:
        await nc.close()
