"""`virtbus memory-dump get|download|remove`: virtctl's memory dump of a running VM, by bus.

`get` asks for the dump into a claim (`--create-claim` first makes one on the VM's node, sized as
virtctl sizes it: the guest's memory plus 100Mi, over CDI's default 5.5 % filesystem overhead);
`--output`, or `download`, waits for the dump to complete and streams it from the node that wrote
it (gzipped unless `--format raw`, as virtctl's download). `remove` dissociates the claim.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import sys
from pathlib import Path
from typing import IO

import typer
from nats.aio.client import Client

from bus.client import send, session
from bus.store import EventStore
from bus.tunnel import connect
from bus.vms import VMRepository
from events import commands as c
from events.errors import ValidationError, VirtbusError
from events.manifest import summarize
from events.names import Ref
from events.state import VMState
from events.volumes import FAILED
from virtctl.volumes import until_settled

DUMP_OVERHEAD = 100 << 20  # KubeVirt's memoryDumpOverhead
FS_OVERHEAD = 0.055  # CDI's default filesystem overhead
MiB = 1 << 20


def claim_size(s: VMState) -> str:
    """The claim `--create-claim` makes: what the dump needs, over the filesystem's overhead."""
    need = summarize(s.spec)["memory_bytes"] + DUMP_OVERHEAD
    return f"{math.ceil(need / (1 - FS_OVERHEAD) / MiB)}Mi"


async def _vm(nc: Client, name: str, namespace: str) -> VMState:
    s, _ = await VMRepository(EventStore(nc)).get(Ref.vm(name, namespace))
    if not s.exists:
        raise VirtbusError(f'virtualmachine.kubevirt.io "{name}" not found')
    return s


async def get(
    url: str, *, name: str, namespace: str, claim: str, create_claim: bool, output: str,
    raw: bool, storage_class: str, access_mode: str,
) -> int:  # fmt: skip
    if access_mode and access_mode not in ("ReadWriteOnce", "ReadWriteMany"):
        raise ValidationError("cannot dump memory to a readonly pvc, use either ReadWriteOnce or "
                              "ReadWriteMany if supported" if access_mode == "ReadOnlyMany" else
                              "invalid access mode, use either ReadWriteOnce or ReadWriteMany if "
                              "supported", field="access-mode")  # fmt: skip
    async with session(url) as nc:
        s = await _vm(nc, name, namespace)
        if create_claim:
            if s.memory_dump is not None:
                raise VirtbusError("please remove current memory dump association before "
                                   "creating a new claim for a new memory dump")  # fmt: skip
            if not s.node:
                raise VirtbusError(f"VirtualMachine {name} is not running; its memory cannot "
                                   "be dumped")  # fmt: skip
            made = c.CreateVolume(name=claim, namespace=namespace, size=claim_size(s), node=s.node,
                                  access_modes=[access_mode or "ReadWriteOnce"],
                                  storage_class=storage_class)  # fmt: skip
            await send(nc, made)
            v = await until_settled(nc, made.target, timeout_s=60)
            if v.phase == FAILED:
                raise VirtbusError(f'persistentvolumeclaims "{claim}" failed: {v.reason}')
            typer.echo(f"PVC {namespace}/{claim} created")
        await send(nc, c.MemoryDumpVM(name=name, namespace=namespace, claim=claim))
        typer.echo(f"Successfully submitted memory dump request of VM {name}")
        if output:
            await _download(nc, name=name, namespace=namespace, output=output, raw=raw)
    return 0


async def download(url: str, *, name: str, namespace: str, output: str, raw: bool) -> int:
    async with session(url) as nc:
        await _download(nc, name=name, namespace=namespace, output=output, raw=raw)
    return 0


async def _download(nc: Client, *, name: str, namespace: str, output: str, raw: bool) -> None:
    s = await _vm(nc, name, namespace)
    said = ""
    while s.memory_dump is not None and s.memory_dump.phase == "InProgress":
        if said != (phase := s.memory_dump.phase):
            typer.echo(f"Waiting for memorydump {s.memory_dump.claim} to complete, current "
                       f"phase: {phase}...")  # fmt: skip
            said = phase
        await asyncio.sleep(0.2)
        s = await _vm(nc, name, namespace)
    dump = s.memory_dump
    if dump is None:
        raise VirtbusError("claim name not on vm memory dump request")
    if dump.phase != "Completed":
        raise VirtbusError(f"memory dump into pvc [{dump.claim}] {dump.phase}: {dump.message}")
    pipe, info = await connect(nc, node=dump.node, kind="memorydump", namespace=namespace,
                               name=name)  # fmt: skip
    got = 0
    try:
        sink: IO[bytes] = (
            sys.stdout.buffer if output == "-" else await asyncio.to_thread(open, output, "wb")
        )
        out: IO[bytes] | gzip.GzipFile = sink if raw else gzip.GzipFile(fileobj=sink, mode="wb")
        try:
            async for frame in pipe.frames(idle_s=60, idle=lambda: VirtbusError(
                    f"the memory dump of {name} stopped coming")):  # fmt: skip
                await asyncio.to_thread(out.write, frame)
                got += len(frame)
        finally:
            if out is not sink:
                out.close()
            if sink is not sys.stdout.buffer:
                sink.close()
    finally:
        await pipe.close("received")
    if got != int(info.get("size", -1)):
        raise VirtbusError(f"the memory dump of {name} came short: {got} of {info.get('size')} "
                           f"bytes ({pipe.reason})")  # fmt: skip
    if output != "-":
        typer.echo(f"Downloaded {info.get('fileName')} to {Path(output)}", err=True)


async def remove(url: str, *, name: str, namespace: str) -> int:
    async with session(url) as nc:
        await send(nc, c.RemoveMemoryDump(name=name, namespace=namespace))
    typer.echo(f"Successfully submitted remove memory dump association of VM {name}")
    return 0
