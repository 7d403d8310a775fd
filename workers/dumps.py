"""`virtbus memory-dump`, the node's end: a running domain's memory written into a claim, and
read back for `memory-dump download` (virtctl's `--output`).

As KubeVirt's virt-launcher does, the dump is libvirt's virDomainCoreDumpWithFormat, raw, memory
only, named `<vm>-<claim>-<YYYYmmdd-HHMMSS>.memory.dump` in the claim, here its directory on this
node (a claim bound to another node, or not yet bound, cannot take it: the dump fails, saying so).
libvirt's test driver takes no memory-only flag: there the dump is its whole (tiny) core.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt

from bus.store import EventStore
from bus.tunnel import FRAME, Pipe, SessionOpen
from bus.vms import VMRepository
from events import model as m
from events import work as w
from events.errors import HypervisorError, ValidationError
from events.names import Ref
from events.state import VMState
from workers.node_context import NodeContext
from workers.sessions import Body
from workers.volumes import claim_dir

DUMP_MODE = 0o600  # a guest's memory: its secrets too


def plain_name(file_name: str) -> str:
    """The dump's name as the log has it (a node wrote it), if it is a plain name in the claim's
    own directory: a path out of it is never served, whoever wrote it."""
    if not file_name or file_name != Path(file_name).name or file_name.startswith("."):
        raise ValidationError(f"the memory dump's file name {file_name!r} is not a plain file "
                              "name; nothing served", field="fileName")  # fmt: skip
    return file_name


def dump_name(vm: str, claim: str, now: datetime) -> str:
    return f"{vm}-{claim}-{now:%Y%m%d-%H%M%S}.memory.dump"


class MemoryDumps:
    def __init__(self, ctx: NodeContext, *, root: Path) -> None:
        self.ctx = ctx
        self.root = root

    async def do(self, item: w.DumpMemory, s: VMState) -> None:
        dump = s.memory_dump
        if dump is None or dump.phase != "InProgress" or dump.requested != item.version:
            return  # answered before (a redelivery), or removed since
        node, directory = self.ctx.node, claim_dir(self.root, item.namespace, item.claim)
        if not await asyncio.to_thread(directory.is_dir):
            why = f'persistentvolumeclaims "{item.claim}" is not on node {node}, where the VMI runs'
            await self._observe(item, m.MemoryDumpFailed(claim=item.claim, reason=why, node=node))
            return
        name = dump_name(item.name, item.claim, datetime.now(UTC))
        path = directory / name
        memory_only = 0 if self.ctx.hv.uri.startswith("test:") else libvirt.VIR_DUMP_MEMORY_ONLY
        raw = libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW
        try:
            await self.ctx.hv.on_domain(
                f"{item.namespace}_{item.name}",
                lambda dom: dom.coreDumpWithFormat(str(path), raw, memory_only),
            )
            await asyncio.to_thread(os.chmod, path, DUMP_MODE)
            size = (await asyncio.to_thread(path.stat)).st_size
        except (HypervisorError, OSError) as err:
            why = err.message if isinstance(err, HypervisorError) else str(err)
            await self._observe(item, m.MemoryDumpFailed(claim=item.claim, reason=why, node=node))
            return
        done = m.MemoryDumpCompleted(claim=item.claim, file_name=name, size_bytes=size, node=node)
        await self._observe(item, done)

    async def _observe(self, item: w.DumpMemory, event: m.Event) -> None:
        await self.ctx.observe(item.ref, [event])

    async def serve(self, req: SessionOpen) -> tuple[dict[str, Any], Body]:
        """The VM's completed dump, streamed to `memory-dump download`."""
        store: EventStore = self.ctx.store
        s, _ = await VMRepository(store).get(Ref.vm(req.name, req.namespace))
        dump = s.memory_dump
        if dump is None or dump.phase != "Completed":
            raise ValidationError(f"VirtualMachine {req.name} has no completed memory dump")
        path = claim_dir(self.root, req.namespace, dump.claim) / plain_name(dump.file_name)
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except OSError as err:
            raise ValidationError(f"the memory dump {dump.file_name} is not on node "
                                  f"{self.ctx.node}: {err.strerror}") from err  # fmt: skip

        async def body(pipe: Pipe) -> None:
            with await asyncio.to_thread(path.open, "rb") as f:
                while data := await asyncio.to_thread(f.read, FRAME * 16):
                    await pipe.send(data)
            await pipe.close("done")

        return {"size": size, "fileName": dump.file_name}, body
