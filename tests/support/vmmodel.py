"""The model of test_model.py: what each VM should be after each command, predicted without the
product's code, and the commands the product must refuse (with KubeVirt's words).

Kept apart from the state machine so the prediction reads in one sitting. Only what can be
predicted exactly is modelled (status, run strategy, spec, node, home, snapshots, restore);
`facets` picks the same fields from a folded `VMState`, and the test compares the two with `==`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from driverstack import seed

from events import commands as c
from events.state import VMState

NODES = ("node-a", "node-b")
RUNNING, PAUSED, STOPPED, DELETED = "Running", "Paused", "Stopped", "Deleted"
GROUP = "snapshot.kubevirt.io"
ANY = "<any node>"  # the model leaves the choice to the scheduler


def spec_for(name: str, *, running: bool, cores: int) -> dict[str, Any]:
    """The seed VM, cut down to one persistent volume of its own: a hostDisk the node creates at
    the first start there (so snapshots have something to copy and a node to copy it on)."""
    spec = copy.deepcopy(seed(name).spec)
    spec["running"] = running
    vmi = spec["template"]["spec"]
    vmi["domain"]["cpu"]["cores"] = cores
    vmi["domain"]["resources"]["requests"]["memory"] = "64Mi"
    vmi["domain"]["devices"]["disks"] = [{"name": "harddrive", "disk": {"bus": "virtio"}}]
    vmi["volumes"] = [{"name": "harddrive", "hostDisk": {
        "capacity": "1Mi", "path": f"/data/{name}.img", "type": "DiskOrCreate"}}]  # fmt: skip
    return spec


@dataclass
class Snap:
    cores: int  # the spec's, when taken
    node: str
    phase: str


@dataclass
class VM:
    name: str
    created: bool = False  # a life began (the log has its VMCreated)
    exists: bool = False
    deleted: bool = False
    status: str = STOPPED
    strategy: str = "Halted"
    running: bool = False  # the spec's `running`
    cores: int = 1
    node: str = ""
    home: str = ""
    last_node: str = ""
    snapshots: dict[str, Snap] = field(default_factory=dict)
    restore: tuple[str, str, bool] | None = None  # (name, snapshot, complete)
    disk_on: set[str] = field(default_factory=set)  # nodes holding its hostDisk file
    counter: int = 0  # for snapshot and restore names never used before

    @property
    def active(self) -> bool:
        return self.status in (RUNNING, PAUSED)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def spec(self) -> dict[str, Any]:
        return spec_for(self.name, running=self.running, cores=self.cores) if self.created else {}

    def expected(self) -> dict[str, Any]:
        return {
            "exists": self.exists, "deleted": self.deleted, "status": self.status,
            "run_strategy": self.strategy, "spec": self.spec(), "node": self.node,
            "home": self.home, "last_node": self.last_node,
            "snapshots": {n: (s.phase, s.node) for n, s in self.snapshots.items()},
            "restore": self.restore,
        }  # fmt: skip


def facets(s: VMState) -> dict[str, Any]:
    """What the model predicts, read from a fold (or a read model row)."""
    restore = None if s.restore is None else (s.restore.name, s.restore.snapshot,
                                              s.restore.complete)  # fmt: skip
    return {
        "exists": s.exists, "deleted": s.deleted, "status": s.status,
        "run_strategy": s.run_strategy, "spec": s.spec, "node": s.node, "home": s.home,
        "last_node": s.last_node,
        "snapshots": {n: (snap.phase, snap.node) for n, snap in s.snapshots.items()},
        "restore": restore,
    }  # fmt: skip


class Cluster:
    """Every VM of one example, and the scheduler's choice as the model sees it."""

    def __init__(self, names: list[str]) -> None:
        self.vms = [VM(n) for n in names]

    def place(self, me: VM, *, among: tuple[str, ...] = NODES) -> str:
        """Most free memory first (every VM asks the same), then name: the fewest VMs wins."""
        if me.home and me.home in among:
            return me.home
        load = {n: sum(1 for v in self.vms if v is not me and v.active and v.node == n)
                for n in among}  # fmt: skip
        return min(among, key=lambda n: (load[n], n))

    def boot(self, v: VM) -> None:
        # Only a home is predicted: the scheduler's free choice once disagreed with `place` (see
        # the report of issue 12); ANY takes the node the fold names, checked against libvirt.
        v.node = v.home or ANY
        v.status, v.last_node = RUNNING, v.node
        v.disk_on.add(v.node)

    def placed(self, v: VM, node: str) -> None:
        """The scheduler chose `node` for `v`'s instance (any node was right)."""
        v.disk_on.discard(ANY)
        v.node = v.last_node = node
        v.disk_on.add(node)

    def halt(self, v: VM) -> None:
        v.status, v.node = STOPPED, ""

    def apply(self, v: VM, *, running: bool, cores: int) -> None:
        if not v.exists:  # a new life, under a new or a deleted name: it starts from nothing
            disk_on, counter = v.disk_on, v.counter
            v.__init__(v.name)  # type: ignore[misc]
            v.disk_on, v.counter = disk_on, counter
            v.created = v.exists = True
            v.running, v.cores, v.strategy = running, cores, "Always" if running else "Halted"
            if running:
                self.boot(v)
            return
        if (running, cores) == (v.running, v.cores):
            return  # unchanged
        v.running, v.cores, v.strategy = running, cores, "Always" if running else "Halted"
        if running and not v.active:
            self.boot(v)
        elif not running and v.active:
            self.halt(v)

    def start(self, v: VM) -> None:
        if v.strategy == "Halted":
            v.strategy, v.running = "Always", True
        self.boot(v)

    def stop(self, v: VM) -> None:
        if v.strategy == "Always":
            v.strategy, v.running = "Halted", False
        self.halt(v)

    def migrate(self, v: VM, target: str) -> None:
        if v.active:
            v.node, v.last_node = target, target
            v.home = target if v.home else ""
            v.disk_on.add(target)
        else:
            v.home = v.last_node = target

    def snapshot(self, v: VM, name: str) -> None:
        node = v.node if v.active else v.last_node
        phase = "Succeeded" if node in v.disk_on else "Failed"
        v.snapshots[name] = Snap(cores=v.cores, node=node, phase=phase)

    def restore(self, v: VM, snapshot: str, name: str) -> None:
        v.cores, v.running = v.snapshots[snapshot].cores, v.strategy == "Always"
        v.restore = (name, snapshot, True)

    def delete(self, v: VM) -> None:
        v.exists, v.deleted, v.status, v.node = False, True, DELETED, ""

    def undelete(self, v: VM) -> None:
        v.exists, v.deleted, v.status = True, False, STOPPED

    def refused(self, v: VM) -> list[tuple[c.Command, str]]:
        """Commands on `v` the product must reject now, each with the reason it must give (the
        most telling first: Hypothesis draws the first ones more often)."""
        name = v.name
        bad = copy.deepcopy(spec_for(name, running=True, cores=1))
        bad["runStrategy"] = "Always"
        invalid = (
            c.ApplyVM(name=name, spec=bad),
            "spec.running: spec.running and spec.runStrategy are mutually exclusive",
        )
        out: list[tuple[c.Command, str]] = []
        if not v.exists:
            gone = f'virtualmachine.kubevirt.io "{name}" not found in namespace "default"'
            out += [(cmd, gone) for cmd in (
                c.StartVM(name=name), c.StopVM(name=name), c.RestartVM(name=name),
                c.PauseVM(name=name), c.UnpauseVM(name=name), c.DeleteVM(name=name),
                c.MigrateVM(name=name), c.SnapshotVM(name=name, snapshot="never"),
            )]  # fmt: skip
            if not v.deleted:
                out.append((c.UndeleteVM(name=name), f'VM "{name}" is not deleted'))
            return [*out, invalid]
        out += [
            (c.UndeleteVM(name=name), f'VM "{name}" is not deleted'),
            (c.MigrateVM(name=name, target_node="ghost"), 'nodes "ghost" not found'),
            (c.RestoreVM(name=name, snapshot="nope"),
             f'virtualmachinesnapshots.{GROUP} "nope" not found'),
        ]  # fmt: skip
        if v.status != PAUSED:
            out.append((c.UnpauseVM(name=name), "VMI is not paused"))
        if v.active:
            out += [
                (c.StartVM(name=name), "VM is already running"),
                (c.MigrateVM(name=name, target_node=v.node),
                 f'the VMI is already running on node "{v.node}"; pick another target'),
            ]  # fmt: skip
            if v.status == PAUSED:
                out.append((c.PauseVM(name=name), "VMI is already paused"))
        else:
            out += [(c.RestartVM(name=name), "VM is not running"),
                    (c.PauseVM(name=name), "VMI is not running")]  # fmt: skip
            if v.strategy != "Always":
                out.append((c.StopVM(name=name), "VM is not running"))
            if v.home:
                out.append((c.MigrateVM(name=name, target_node=v.home),
                            f'the VM is already on node "{v.home}"'))  # fmt: skip
        if not v.last_node:
            out.append((c.SnapshotVM(name=name, snapshot=v.fresh("s")),
                        f"cannot snapshot VM '{name}': it has never run"))  # fmt: skip
        for snap_name, snap in v.snapshots.items():
            taken = f'virtualmachinesnapshots.{GROUP} "{snap_name}" already exists'
            out.append((c.SnapshotVM(name=name, snapshot=snap_name), taken))
            restore = c.RestoreVM(name=name, snapshot=snap_name, restore=v.fresh("r"))
            if snap.phase != "Succeeded":
                out.append((restore, f'VirtualMachineSnapshot "{snap_name}" is not ready to use'))
            elif v.active:
                out.append((restore, f'VirtualMachine "{name}" is not stopped'))
        return [*out, invalid]
