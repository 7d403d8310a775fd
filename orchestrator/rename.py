"""`virtbus rename OLD NEW`: a stopped VM goes on under another name, as `virtctl rename` did.

A VM's name is its aggregate, so a rename is two histories: `VMRenamed{to}` ends the old one and
`VMCreated{renamed_from}` (same spec, labels and run strategy) starts the new one, written in
one atomic append across both, each with its own expected version: no moment exists where both
names, or neither, hold the VM. The old history stays readable under the old name.
"""

from __future__ import annotations

from bus.store import Append, EventStore
from events import commands as c
from events import model as m
from events.errors import ValidationError
from events.names import Ref
from events.state import TERMINATING, VMState, fold


def decide_rename(s: VMState, cmd: c.RenameVM) -> list[m.Event]:
    """The old name's half of the decision (the new name's is `renamed_into`)."""
    if cmd.new_name == cmd.name:
        raise ValidationError("new_name: the VM already has this name", field="new_name")
    if s.status == TERMINATING:
        raise ValidationError("VM is being deleted")
    if s.running:
        raise ValidationError(f'VM "{cmd.name}" must be stopped to be renamed')
    if s.restoring or s.snapshotting:
        raise ValidationError(f'VM "{cmd.name}" has a snapshot or restore in progress')
    return [m.VMRenamed(to=cmd.new_name)]


async def renamed_into(store: EventStore, cmd: c.RenameVM, old: VMState) -> Append:
    """The new name's half: its history must hold no live VM."""
    ref = Ref("vm", cmd.namespace, cmd.new_name)
    history = await store.read(ref)
    if fold(r.envelope for r in history).exists:
        raise ValidationError(f'virtualmachine.kubevirt.io "{cmd.new_name}" already exists',
                              field="new_name")  # fmt: skip
    created = m.VMCreated(
        spec=old.spec,
        labels=old.labels,
        annotations=old.annotations,
        run_strategy=old.run_strategy,
        renamed_from=cmd.name,
    )
    return Append(ref, [created], history[-1].envelope.version if history else 0)
