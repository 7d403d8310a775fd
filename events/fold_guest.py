"""The VM fold's handlers for a memory dump (KubeVirt's `status.memoryDumpRequest`).

Apart from the lifecycle handlers because the dump's claim outlives the instance: the association
stays on the VM (Completed or Failed) until `memory-dump remove`, as in KubeVirt.
"""

from __future__ import annotations

from msgspec.structs import replace

from events import model as m
from events.envelope import Stamped
from events.vmstate import MemoryDump, VMState

COMPLETED, FAILED, IN_PROGRESS = "Completed", "Failed", "InProgress"


def memory_dump_requested(s: VMState, e: m.MemoryDumpRequested, env: Stamped) -> VMState:
    dump = MemoryDump(claim=e.claim, requested=env.version, vmi_uid=e.vmi_uid, started=env.time)
    return replace(s, memory_dump=dump)


def memory_dump_ended(
    s: VMState, e: m.MemoryDumpCompleted | m.MemoryDumpFailed, env: Stamped
) -> VMState:
    dump = s.memory_dump
    if dump is None or dump.claim != e.claim or dump.phase != IN_PROGRESS:
        return s  # a late answer to a request since removed or replaced
    if isinstance(e, m.MemoryDumpCompleted):
        done = replace(dump, phase=COMPLETED, ended=env.time, file_name=e.file_name, node=e.node)
    else:
        done = replace(dump, phase=FAILED, ended=env.time, message=e.reason)
    return replace(s, memory_dump=done)


def memory_dump_removed(s: VMState, e: m.MemoryDumpRemoved, env: Stamped) -> VMState:
    return replace(s, memory_dump=None)
