"""The `virtbus` command line: kubectl and virtctl habits over the bus.

Thin on purpose: each verb parses its flags and calls one coroutine. Exit codes: 0 ok, 1 rejected or
failed (reason on stderr), 2 usage error.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer

from bus.connect import server_url
from events import commands as c
from events.commands import AnyCommand
from events.envelope import Envelope
from events.errors import VirtbusError
from virtctl import cli_history, cli_migrate, cli_snapshot, snapshots
from virtctl.cli_common import NameArg, NsOpt, Output, ServerOpt, optional_name
from virtctl.cli_common import actor as _actor
from virtctl.cli_common import finish as _finish
from virtctl.cli_common import lifecycle as _lifecycle
from virtctl.cli_common import run as _run
from virtctl.cli_console import console, vnc
from virtctl.cli_errors import VirtbusGroup
from virtctl.cli_storage import image_upload, volume_app
from virtctl.cli_webhook import bench_webhooks, webhook_app

T = TypeVar("T")

app = typer.Typer(
    name="virtbus",
    help="virtbus: virtual machines the KubeVirt way, on an event log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=VirtbusGroup,  # every failure reads `error: <reason>` (cli_errors.py)
)
bench = typer.Typer(help="Benchmarks; each measures its raw baseline in the same run.")
app.add_typer(bench, name="bench")
admin = typer.Typer(help="Maintenance of the orchestrator's state.")
app.add_typer(admin, name="admin")
app.add_typer(webhook_app, name="webhook")
bench.command("webhooks")(bench_webhooks)


class Hypervisor(StrEnum):
    test = "test"
    qemu = "qemu"


@app.command()
def up(
    nodes: Annotated[int, typer.Option(min=0, help="node workers to run")] = 2,
    hypervisor: Annotated[Hypervisor, typer.Option(help="libvirt test driver or real QEMU")] = (
        Hypervisor.test
    ),
    data_dir: Annotated[Path, typer.Option(help="where the bus keeps its data")] = Path(".virtbus"),
    port: Annotated[
        int, typer.Option(min=-1, max=65535, help="client port; -1 picks a free one")
    ] = 4222,
    sync: Annotated[
        bool, typer.Option("--fsync-always/--fsync-default", help="fsync before every ack")
    ] = False,
    server: ServerOpt = None,
    migrations: Annotated[
        Path | None, typer.Option(help="KubeVirt's migration settings (YAML), else its defaults")
    ] = None,
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C."""
    from orchestrator.migrations import load_policy
    from virtbus.up import run_up

    try:
        policy = load_policy(migrations) if migrations else None
    except VirtbusError as err:
        typer.echo(f"error: --migrations: {err}", err=True)
        raise typer.Exit(2) from None
    _run(
        run_up(
            data_dir=data_dir, port=port, server=server, sync_always=sync, nodes=nodes,
            hypervisor=hypervisor.value, migration_policy=policy,
        )
    )  # fmt: skip


@app.command()
def schema(
    which: Annotated[str, typer.Argument(help="commands, events or all")] = "all",
) -> None:
    """Print the JSON Schema of commands and events, for clients in other languages."""
    schemas = {"commands": AnyCommand, "events": Envelope}
    if which not in (*schemas, "all"):
        typer.echo(f"error: schema: unknown {which!r}; use commands, events or all", err=True)
        raise typer.Exit(2)
    chosen = schemas if which == "all" else {which: schemas[which]}
    out = {k: msgspec.json.schema(v) for k, v in chosen.items()}
    sys.stdout.write(json.dumps(out if which == "all" else out[which], indent=2) + "\n")


@app.command()
def apply(
    filename: Annotated[
        str, typer.Option("--filename", "-f", help="manifest file, or - for stdin")
    ],
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Create or update VMs from KubeVirt manifests (multi-document YAML)."""
    from virtctl.verbs import apply_file

    _finish(_run(apply_file(server_url(server), path=filename, namespace=namespace)))


@app.command()
def start(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Start a VM."""
    _lifecycle(c.StartVM(name=name, namespace=namespace, actor=_actor()), server)


@app.command()
def stop(
    name: NameArg,
    namespace: NsOpt = "default",
    grace_period: Annotated[int | None, typer.Option("--grace-period", min=0)] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
    server: ServerOpt = None,
) -> None:
    """Stop a VM (graceful shutdown, then destroy after the grace period)."""
    cmd = c.StopVM(name=name, namespace=namespace, grace_period_seconds=grace_period, force=force,
                   actor=_actor())  # fmt: skip
    _lifecycle(cmd, server)


@app.command()
def restart(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Restart a running VM."""
    _lifecycle(c.RestartVM(name=name, namespace=namespace, actor=_actor()), server)


@app.command()
def pause(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Pause a running VM."""
    _lifecycle(c.PauseVM(name=name, namespace=namespace, actor=_actor()), server)


@app.command()
def unpause(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Unpause a paused VM."""
    _lifecycle(c.UnpauseVM(name=name, namespace=namespace, actor=_actor()), server)


@app.command()
def delete(
    what: Annotated[str, typer.Argument(help="a VM name, or a kind: vm NAME, vmsnapshot NAME")],
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Delete a VM (its disks are kept, see `undelete`) or a VM snapshot (`delete vmsnapshot S`)."""
    if name is None:
        what, name = "vm", what
    if what.lower() in snapshots.SNAPSHOT_KINDS:
        _finish(
            _run(
                snapshots.delete_snapshot(
                    server_url(server), snapshot=name, namespace=namespace, actor=_actor()
                )
            )
        )
        return
    if what.lower() not in ("vm", "vms", "virtualmachine", "virtualmachines"):
        typer.echo(f"error: delete {what}: use a VM name, vm NAME or vmsnapshot NAME", err=True)
        raise typer.Exit(2)
    _lifecycle(c.DeleteVM(name=name, namespace=namespace, actor=_actor()), server)


@app.command()
def rename(
    name: NameArg,
    new_name: Annotated[str, typer.Argument(help="the VM's new name")],
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Give a stopped VM another name (virtctl rename); its history stays under the old one."""
    _lifecycle(c.RenameVM(name=name, namespace=namespace, new_name=new_name, actor=_actor()),
               server)  # fmt: skip


@app.command()
def undelete(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
    """Bring a deleted VM back, stopped, with its disks."""
    _lifecycle(c.UndeleteVM(name=name, namespace=namespace, actor=_actor()), server)


class DiskType(StrEnum):
    disk = "disk"
    lun = "lun"


VolumeNameOpt = Annotated[
    str, typer.Option("--volume-name", help="the volume: a PersistentVolumeClaim of that name")
]
PersistOpt = Annotated[
    bool, typer.Option("--persist", help="change the VM spec too, not only the running VMI")
]


@app.command()
def addvolume(
    name: NameArg,
    volume_name: VolumeNameOpt,
    disk_type: Annotated[DiskType, typer.Option("--disk-type")] = DiskType.disk,
    serial: Annotated[str | None, typer.Option("--serial", help="the disk's serial")] = None,
    persist: PersistOpt = False,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Hotplug a PVC into a running VM as a disk on the scsi bus (virtctl addvolume)."""
    volume = {"name": volume_name, "persistentVolumeClaim": {"claimName": volume_name}}
    disk: dict[str, Any] = {"name": volume_name, disk_type.value: {"bus": "scsi"}}
    if serial:
        disk["serial"] = serial
    cmd = c.AddVolume(name=name, namespace=namespace, volume=volume, disk=disk, persist=persist,
                      actor=_actor())  # fmt: skip
    _lifecycle(cmd, server)


@app.command()
def removevolume(
    name: NameArg,
    volume_name: VolumeNameOpt,
    persist: PersistOpt = False,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Unplug a hotplugged volume from a VM (virtctl removevolume)."""
    cmd = c.RemoveVolume(name=name, namespace=namespace, volume=volume_name, persist=persist,
                         actor=_actor())  # fmt: skip
    _lifecycle(cmd, server)


@app.command()
def scale(
    name: Annotated[str, typer.Argument(help="VirtualMachineInstanceReplicaSet name")],
    replicas: Annotated[int, typer.Option("--replicas", min=0, max=10_000)],
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Set the number of replicas of a VMI replica set."""
    cmd = c.ScaleReplicaSet(name=name, namespace=namespace, replicas=replicas, actor=_actor())
    _lifecycle(cmd, server)


@app.command()
def get(
    kind: Annotated[
        str, typer.Argument(help="vms, vmis, nodes, vmirs, migrations, vmsnapshots, vmrestores")
    ],
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NsOpt = "default",
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
    output: Annotated[str, typer.Option("-o", "--output", help="wide, json or yaml")] = "",
    watch: Annotated[bool, typer.Option("--watch", "-w")] = False,
    server: ServerOpt = None,
) -> None:
    """List VMs, VMIs, nodes, replica sets or migrations like kubectl."""
    from virtctl.verbs import get as get_

    if output not in ("", "wide", "json", "yaml"):
        typer.echo(f"error: -o {output!r}: use wide, json or yaml", err=True)
        raise typer.Exit(2)
    ns = None if all_namespaces else namespace
    _finish(_run(get_(server_url(server), what=kind, name=optional_name(name), namespace=ns,
                      output=output, watch=watch)))  # fmt: skip


@app.command()
def describe(
    kind: Annotated[str, typer.Argument(help="vm")],
    name: NameArg,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Show a VM's state, conditions and latest events."""
    from virtctl.verbs import describe as describe_

    if kind not in ("vm", "vms", "virtualmachine"):
        typer.echo(f"error: describe {kind}: only vm is supported", err=True)
        raise typer.Exit(2)
    _finish(_run(describe_(server_url(server), name=name, namespace=namespace)))


@app.command()
def wait(
    kind: Annotated[str, typer.Argument(help="vm")],
    name: NameArg,
    for_: Annotated[str, typer.Option("--for", help="status=Running, condition=Ready, delete")],
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="seconds")] = 30.0,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Wait until a VM reaches a status or condition."""
    from virtctl.verbs import matcher
    from virtctl.verbs import wait as wait_

    if kind not in ("vm", "vms", "virtualmachine"):
        typer.echo(f"error: wait {kind}: only vm is supported", err=True)
        raise typer.Exit(2)
    try:
        matcher(for_)
    except VirtbusError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    coro = wait_(server_url(server), name=name, namespace=namespace, condition=for_,
                 timeout_s=timeout)  # fmt: skip
    _finish(_run(coro))


@admin.command("rebuild-projections")
def rebuild_projections(
    data_dir: Annotated[Path, typer.Option(help="the orchestrator's data dir")] = Path(
        ".virtbus/orchestrator"
    ),
    server: ServerOpt = None,
) -> None:
    """Rebuild the read model from the start of the log."""
    from virtbus.up import rebuild

    count = _run(rebuild(server_url(server), data_dir=data_dir))
    typer.echo(f"read model rebuilt from {count} events")


@bench.command("log")
def bench_log(
    events: Annotated[int, typer.Option(min=200, help="events to append")] = 20_000,
    batch: Annotated[int, typer.Option(min=2, max=1000, help="events per atomic batch")] = 100,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    sync: Annotated[bool, typer.Option("--fsync-always/--fsync-default")] = False,
    server: Annotated[
        str | None,
        typer.Option("--server", help="bench against this server (default: a fresh one)"),
    ] = None,
) -> None:
    """Append and replay throughput of the event store against plain nats-py."""
    from bench.log import run

    result = _run(run(events=events, batch=batch, server=server, sync_always=sync))
    if output is Output.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    rows = [
        ("append, one at a time", "append_eps", "append_baseline_eps", "append_ratio"),
        ("append, atomic batches", "batch_append_eps", "batch_append_baseline_eps",
         "batch_append_ratio"),
        ("replay (decode+verify+fold)", "replay_eps", "replay_baseline_eps", "replay_ratio"),
    ]  # fmt: skip
    typer.echo(f"{'':30} {'virtbus ev/s':>14} {'raw nats-py ev/s':>17} {'ratio':>7}")
    for label, ours, raw, ratio in rows:
        typer.echo(f"{label:30} {result[ours]:14,.0f} {result[raw]:17,.0f} {result[ratio]:7.2f}")
    typer.echo(
        f"append latency p50 {result['append_p50_us']:.0f} us, "
        f"p99 {result['append_p99_us']:.0f} us;"
        f" {result['events']} events over {result['vms']} VMs; fsync {result['fsync']}"
    )
    typer.echo(f"replay reader alone (no decode): {result['replay_lean_pull_eps']:,.0f} ev/s")


@bench.command("control")
def bench_control(
    vms: Annotated[int, typer.Option(min=1, help="VMs to create and start")] = 1000,
    nodes: Annotated[int, typer.Option(min=1, help="simulated nodes")] = 10,
    concurrency: Annotated[int, typer.Option(min=1, help="commands in flight")] = 50,
    rate: Annotated[
        float, typer.Option(min=0, help="VMs created per second (0: as fast as accepted)")
    ] = 0.0,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    server: Annotated[
        str | None,
        typer.Option("--server", help="bench against this server (default: a fresh one)"),
    ] = None,
) -> None:
    """VM creation to Running through the whole control plane, against plain nats-py."""
    from bench.control import run

    r = _run(run(vms=vms, nodes=nodes, server=server, concurrency=concurrency, rate=rate or None))
    offered = f", offered {r['offered_rate']:.0f}/s" if r["offered_rate"] else ""
    if output is Output.json:
        sys.stdout.write(json.dumps(r) + "\n")
        return
    typer.echo(
        f"{r['running']}/{r['vms']} VMs Running on {r['nodes']} nodes, {r['concurrency']} in flight"
        f"{offered} ({r['accepted']} accepted, {r['rejected']} rejected)\n"
        f"commands/s             {r['commands_per_s']:10,.0f}\n"
        f"VM starts/s            {r['starts_per_s']:10,.0f}\n"
        f"raw nats-py starts/s   {r['baseline_starts_per_s']:10,.0f}"
        f"  ({r['baseline_publishes_per_vm']} publishes per VM)\n"
        f"ratio                  {r['ratio']:10.2f}\n"
        f"creation->Running ms   p50 {r['create_to_running_p50_ms']:.0f}, "
        f"p95 {r['create_to_running_p95_ms']:.0f}, p99 {r['create_to_running_p99_ms']:.0f}, "
        f"max {r['create_to_running_max_ms']:.0f}"
    )


@bench.command("start")
def bench_start(
    vms: Annotated[int, typer.Option(min=1, help="VMs to create, one every --interval-ms")] = 100,
    hypervisor: Annotated[Hypervisor, typer.Option(help="real QEMU or libvirt's test driver")] = (
        Hypervisor.qemu
    ),
    interval_ms: Annotated[float, typer.Option(min=0, help="between two creations")] = 100.0,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
) -> None:
    """KubeVirt's density test: creation->Running on one real node, against raw libvirt."""
    import subprocess

    # The benchmark runs a node worker, and the CLI never imports workers: run it as its own module.
    args = ["--vms", str(vms), "--hypervisor", hypervisor.value, "--interval-ms", str(interval_ms),
            "-o", output.value]  # fmt: skip
    cmd = [sys.executable, "-m", "bench.start", *args]
    _finish(subprocess.run(cmd, check=False).returncode)


cli_snapshot.register(app)
app.add_typer(volume_app, name="volume")
app.command("image-upload")(image_upload)
app.command()(vnc)
app.command()(console)
app.command("history")(cli_history.history)
app.add_typer(cli_history.audit, name="audit")
bench.command("history")(cli_history.bench_history)
cli_migrate.register(app, bench)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
