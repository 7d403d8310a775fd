"""The stack every real-node benchmark stands up around its node workers, and the VM it starts.

`bench start` and `bench migrate` both run a throw-away nats-server, the orchestrator as its own
process (as deployed) and publish plain JetStream commands (the bus contract) of the density
test's small VM; this is that shared part, so the two measure the same thing the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop
from nats.aio.client import Client

from bus.cluster import until_ready
from bus.connect import Access, bus_for_bench, connect, use
from bus.provision import provision
from bus.roles import record_identities
from bus.server import die_with_parent
from bus.store import EventStore
from bus.trust import Trust, ensure
from events import commands as c
from events.envelope import encode
from events.errors import VirtbusError
from events.users import ADMIN

# The identities of a secured benchmark's stack: the orchestrator and the simulated nodes (one
# process playing many nodes, so it holds every permission, as the orchestrator does).
SECURE_ROLES = {"admin": ADMIN, "orchestrator": ADMIN, "simnodes": ADMIN}


@contextlib.asynccontextmanager
async def bench_bus(
    explicit: str | None, *, sync_always: bool = False, secure: bool = False, cluster: int = 0
) -> AsyncIterator[tuple[str, Trust | None]]:
    """`bus_for_bench`; `secure`: a bus like `virtbus up`'s (operator JWT, TLS), provisioned, its
    identities recorded, and this process logged in as its admin (the client side of the
    benchmark and its raw baseline both pay for TLS and the login); `cluster`: that many
    servers, the log in as many copies."""
    if not secure or explicit:
        async with bus_for_bench(explicit, sync_always=sync_always, cluster=cluster) as url:
            yield url, None
        return
    with tempfile.TemporaryDirectory(prefix="virtbus-bench-trust-") as keys:
        trust = ensure(Path(keys))
        for name in SECURE_ROLES:
            trust.ensure_creds(name)
        async with bus_for_bench(None, sync_always=sync_always, trust=trust,
                                 cluster=cluster) as url:  # fmt: skip
            use(Access(trust.creds_file("admin"), trust.ca_file))
            admin = await connect(url, name="virtbus-bench-admin")
            try:
                await until_ready(admin)
                await provision(admin.jetstream(), replicas=cluster or 1)
                await record_identities(EventStore(admin), trust, roles=SECURE_ROLES)
            finally:
                await admin.close()
            yield url, trust


def login_args(trust: Trust | None, name: str) -> list[str]:
    """A component's command-line login on the bench's bus (none on an open one)."""
    if trust is None:
        return []
    return ["--creds", str(trust.creds_file(name)), "--tls-ca", str(trust.ca_file)]


def vm_spec() -> dict[str, Any]:
    """The small VM of the density test, as a KubeVirt VirtualMachine spec."""
    return {
        "runStrategy": "Always",
        "template": {
            "spec": {
                "domain": {
                    "cpu": {"cores": 1},
                    "memory": {"guest": "64Mi"},
                    "machine": {"type": "q35"},
                    "devices": {
                        "disks": [{"name": "scratch", "disk": {"bus": "virtio"}}],
                        # 100 guests would not fit a node's 64 VNC ports; nobody watches them.
                        "autoattachGraphicsDevice": False,
                    },
                },
                "volumes": [{"name": "scratch", "emptyDisk": {"capacity": "16Mi"}}],
            }
        },
    }


async def publish(nc: Client, cmd: c.Command) -> None:
    # A generous ack wait: a node saturated by its guests slows the server too (nats-py: 0.5 s).
    subject = cmd.target.command_subject(type(cmd).__name__)
    await nc.jetstream().publish(subject, encode(cmd), timeout=10)


async def start_orchestrator(url: str, data_dir: Path) -> asyncio.subprocess.Process:
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    with (data_dir / "orchestrator.log").open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "--server", url, "--data-dir", str(data_dir),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=die_with_parent,
        )  # fmt: skip


async def stop_orchestrator(proc: asyncio.subprocess.Process, *, grace: float = 20) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


def report(
    bench: Coroutine[Any, Any, dict[str, Any]], *, output: str,
    table: Callable[[dict[str, Any]], str],
    shortfall: Callable[[dict[str, Any]], str] | None = None,
) -> int:  # fmt: skip
    """Run a benchmark and print its result; the exit code (`virtbus bench X` = `python -m`).

    The result alone on stdout (`-o json`: one JSON object), progress and errors on stderr; 1 when
    virtbus refused or `shortfall` names what fell short, 130 on Ctrl-C.
    """
    try:
        result = uvloop.run(bench)
    except VirtbusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result) if output == "json" else table(result), flush=True)
    if shortfall is not None and (why := shortfall(result)):
        print(f"error: {why}", file=sys.stderr)
        return 1
    return 0
