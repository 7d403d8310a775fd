"""virtctl's verbs about one guest beyond its lifecycle: `create vm` (the manifest generator,
beside kubectl's `create -f`), `memory-dump`, `expose`.

The typer layer only: flags are checked here, the work is in `createvm`, `guestops` and
`services`. `register` adds them to the `virtbus` app.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from bus.connect import server_url
from events.errors import ValidationError
from virtctl.cli_common import KustomizeOpt, NsOpt, ServerOpt, each_source, finish, run, usage

Many = Annotated[list[str] | None, typer.Option()]


def create(
    what: Annotated[str | None, typer.Argument(help="vm: print a VirtualMachine manifest")] = None,
    filename: Annotated[
        list[str] | None,
        typer.Option("--filename", "-f", help="manifest file, or - for stdin; repeatable"),
    ] = None,
    kustomize: KustomizeOpt = None,
    name: Annotated[str, typer.Option("--name", help="vm: its name (default vm-xxxxx)")] = "",
    run_strategy: Annotated[str, typer.Option("--run-strategy")] = "Always",
    termination_grace_period: Annotated[
        int, typer.Option("--termination-grace-period", min=0)
    ] = 180,
    memory: Annotated[str, typer.Option("--memory", help="vm: default 512Mi")] = "",
    instancetype: Annotated[str, typer.Option("--instancetype", help="[KIND/]NAME")] = "",
    preference: Annotated[str, typer.Option("--preference", help="[KIND/]NAME")] = "",
    infer_instancetype: Annotated[
        bool | None,
        typer.Option(
            "--infer-instancetype/--no-infer-instancetype",
            help="vm: from the first boot disk (by default, quietly)",
        ),
    ] = None,
    infer_instancetype_from: Annotated[
        str, typer.Option("--infer-instancetype-from", help="vm: a volume's name")
    ] = "",
    infer_preference: Annotated[
        bool | None,
        typer.Option(
            "--infer-preference/--no-infer-preference",
            help="vm: from the first boot disk (by default, quietly)",
        ),
    ] = None,
    infer_preference_from: Annotated[
        str, typer.Option("--infer-preference-from", help="vm: a volume's name")
    ] = "",
    volume_containerdisk: Annotated[
        list[str] | None, typer.Option("--volume-containerdisk", help="src:IMAGE[,name:N]")
    ] = None,
    volume_pvc: Annotated[
        list[str] | None, typer.Option("--volume-pvc", help="src:CLAIM[,name:N]")
    ] = None,
    volume_import: Annotated[
        list[str] | None,
        typer.Option("--volume-import", help="type:blank|http|registry|pvc,size:S,..."),
    ] = None,
    volume_datasource: Annotated[list[str] | None, typer.Option("--volume-datasource")] = None,
    volume_sysprep: Annotated[str, typer.Option("--volume-sysprep")] = "",
    access_cred: Annotated[list[str] | None, typer.Option("--access-cred")] = None,
    user: Annotated[str, typer.Option("--user")] = "",
    password_file: Annotated[str, typer.Option("--password-file")] = "",
    ssh_key: Annotated[list[str] | None, typer.Option("--ssh-key")] = None,
    ga_manage_ssh: Annotated[
        bool,
        typer.Option("--ga-manage-ssh", help="vm: let the guest agent manage SSH keys (SELinux)"),
    ] = False,
    cloud_init: Annotated[str, typer.Option("--cloud-init", help="nocloud or none")] = "",
    cloud_init_user_data: Annotated[
        str, typer.Option("--cloud-init-user-data", help="base64")
    ] = "",
    cloud_init_network_data: Annotated[
        str, typer.Option("--cloud-init-network-data", help="base64")
    ] = "",
    cpu: Annotated[int | None, typer.Option("--cpu", min=0, help="instancetype: vCPUs")] = None,
    gpu: Annotated[list[str] | None, typer.Option("--gpu", help="instancetype: refused")] = None,
    hostdevice: Annotated[
        list[str] | None, typer.Option("--hostdevice", help="instancetype: refused")
    ] = None,
    iothreadspolicy: Annotated[
        str | None, typer.Option("--iothreadspolicy", help="instancetype: auto or shared")
    ] = None,
    namespaced: Annotated[
        bool, typer.Option("--namespaced", help="instancetype, preference: the namespaced kind")
    ] = False,
    cpu_topology: Annotated[
        str | None, typer.Option("--cpu-topology", help="preference: sockets, cores, ...")
    ] = None,
    volume_storage_class: Annotated[
        str | None, typer.Option("--volume-storage-class", help="preference")
    ] = None,
    machine_type: Annotated[str | None, typer.Option("--machine-type", help="preference")] = None,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Create the objects of a manifest (`-f`; one that exists is refused, AlreadyExists), or
    print a manifest as virtctl's `create vm|instancetype|preference` does (for `virtbus apply
    -f -`)."""
    if what is None:
        if not filename and kustomize is None:
            raise usage("create: give -f FILE or -k DIR, or `create vm [flags]` for a manifest")
        from virtctl.objects import create_file

        url = server_url(server)
        finish(run(each_source(filename, kustomize, lambda path, kz: create_file(
            url, path=path, namespace=namespace, kustomize=kz))))  # fmt: skip
        return
    kind = what.lower()
    if (
        kind not in ("vm", "virtualmachine", "instancetype", "preference")
        or filename
        or (kustomize is not None)
    ):
        raise usage(f"create {what}: virtbus generates `create vm`, `create instancetype` and "
                    "`create preference` manifests; objects from files are "
                    "`create -f FILE`")  # fmt: skip
    if kind in ("instancetype", "preference"):
        from virtctl import createtypes as t

        ns = "" if namespace == "default" else namespace
        try:
            obj = t.instancetype(t.InstancetypeFlags(
                name=name, cpu=cpu, memory=memory, namespaced=namespaced, namespace=ns,
                gpus=gpu or [], host_devices=hostdevice or [], io_threads_policy=iothreadspolicy,
            )) if kind == "instancetype" else t.preference(t.PreferenceFlags(
                name=name, namespaced=namespaced, namespace=ns, cpu_topology=cpu_topology,
                volume_storage_class=volume_storage_class, machine_type=machine_type,
            ))  # fmt: skip
        except ValidationError as err:
            typer.echo(f"error: {err.message}", err=True)
            raise typer.Exit(1) from None
        sys.stdout.write(t.dump(obj))
        return
    from virtctl.createvm import VMSpecFlags, manifest

    refused = [flag for flag, given in (("volume-datasource", volume_datasource),
                                        ("volume-sysprep", volume_sysprep),
                                        ("access-cred", access_cred)) if given]  # fmt: skip
    flags = VMSpecFlags(
        name=name, run_strategy=run_strategy, termination_grace_period=termination_grace_period,
        memory=memory, instancetype=instancetype, preference=preference,
        containerdisks=volume_containerdisk or [], pvcs=volume_pvc or [],
        imports=volume_import or [], user=user, password_file=password_file,
        ssh_keys=ssh_key or [], cloud_init=cloud_init, cloud_init_user_data=cloud_init_user_data,
        cloud_init_network_data=cloud_init_network_data, refused=refused,
        infer_instancetype=infer_instancetype, infer_instancetype_from=infer_instancetype_from,
        infer_preference=infer_preference, infer_preference_from=infer_preference_from,
        ga_manage_ssh=ga_manage_ssh,
    )  # fmt: skip
    try:
        text = manifest(flags)
    except ValidationError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(1) from None
    sys.stdout.write(text)


def memory_dump(
    action: Annotated[str, typer.Argument(help="get, download or remove")],
    what: Annotated[str, typer.Argument(help="the VM's name (or vm NAME)")],
    vm_name: Annotated[str | None, typer.Argument(help="the VM, after `vm`")] = None,
    claim_name: Annotated[
        str, typer.Option("--claim-name", help="pvc name to contain the memory dump")
    ] = "",
    create_claim: Annotated[
        bool, typer.Option("--create-claim", help="create the pvc, on the VM's node")
    ] = False,
    output: Annotated[
        str, typer.Option("--output", help="download the dump to this file (- for stdout)")
    ] = "",
    format_: Annotated[str, typer.Option("--format", help="gzipped (default) or raw")] = "",
    storage_class: Annotated[str, typer.Option("--storage-class")] = "",
    access_mode: Annotated[str, typer.Option("--access-mode")] = "",
    port_forward: Annotated[bool, typer.Option("--port-forward", help="accepted; not needed")] = (
        False
    ),
    local_port: Annotated[str, typer.Option("--local-port", help="accepted; not needed")] = "0",
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Dump a running VM's memory into a claim (`memory-dump get NAME --claim-name C
    [--create-claim] [--output F]`), download it, or dissociate the claim (`remove`)."""
    from virtctl import guestops

    if vm_name is not None and what.lower() not in ("vm", "virtualmachine"):
        raise usage(f"memory-dump {action} {what} {vm_name}: give the VM, as NAME or vm NAME")
    name = vm_name or what
    if format_ not in ("", "gzipped", "raw"):
        raise usage(f"--format {format_!r}: use gzipped or raw")
    url, raw = server_url(server), format_ == "raw"
    if action == "get":
        if not claim_name and create_claim:
            raise usage("missing claim name")
        finish(run(guestops.get(url, name=name, namespace=namespace, claim=claim_name,
                                create_claim=create_claim, output=output, raw=raw,
                                storage_class=storage_class, access_mode=access_mode)))  # fmt: skip
    elif action == "download":
        if not output:
            raise usage("missing outputFile to download the memory dump")
        finish(run(guestops.download(url, name=name, namespace=namespace, output=output,
                                     raw=raw)))  # fmt: skip
    elif action == "remove":
        finish(run(guestops.remove(url, name=name, namespace=namespace)))
    else:
        raise usage(f"invalid action type {action}")


def expose(
    what: Annotated[str, typer.Argument(help="vm or vmi")],
    name: Annotated[str, typer.Argument(help="its name")],
    service: Annotated[str, typer.Option("--name", help="the Service's name")] = "",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="the port to serve")] = 0,
    target_port: Annotated[
        str, typer.Option("--target-port", help="the VM's port (default: --port)")
    ] = "",
    protocol: Annotated[str, typer.Option("--protocol", help="TCP or UDP")] = "TCP",
    type_: Annotated[
        str, typer.Option("--type", help="ClusterIP (headless here), NodePort or LoadBalancer")
    ] = "ClusterIP",
    port_name: Annotated[str, typer.Option("--port-name")] = "",
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Make a Service for a VM's port (virtctl expose); virtbus's are headless: the VMI's own
    address, reached from the nodes, is its endpoint; a NodePort one is also forwarded from a
    port of 30000-32767 on every node."""
    from events.services import TYPES
    from virtctl.cli_common import actor
    from virtctl.services import expose as expose_

    kind_of = next((t for t in TYPES if t.lower() == type_.lower()), "")
    if not kind_of:
        raise usage(f"unknown service type: {type_}")
    if protocol.upper() not in ("TCP", "UDP"):
        raise usage(f"unknown protocol: {protocol}")
    finish(run(expose_(server_url(server), what=what, name=name, namespace=namespace,
                       service=service, port=port, target_port=target_port, protocol=protocol,
                       kind_of_service=kind_of, port_name=port_name, actor=actor())))  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add these verbs to the `virtbus` app, in `--help`'s order."""
    app.command()(create)
    app.command("memory-dump")(memory_dump)
    app.command()(expose)
