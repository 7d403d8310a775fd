"""The `virtbus` command put together: kubectl and virtctl habits over the bus.

The verbs live where their code runs: `virtctl/` (the CLI's verbs, each area's `register` or typer
group) and `bench/cli.py` (`virtbus bench ...`); this module builds the one app from them, in the
order `virtbus --help` lists them, and keeps the two verbs of the embedded stack (`up`, `admin
rebuild-projections`, from `virtbus/up.py`). Exit codes: 0 ok, 1 rejected or failed (reason on
stderr), 2 usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench import cli as bench_cli
from bus.connect import server_url
from events.errors import VirtbusError
from virtctl import cli_guest, cli_history, cli_kubectl, cli_migrate, cli_snapshot, cli_verbs
from virtctl.cli_auth import auth_app
from virtctl.cli_common import Hypervisor, Output, ServerOpt, add_bus_options, run, usage
from virtctl.cli_console import (
    console,
    fslist,
    guestosinfo,
    port_forward,
    scp,
    ssh,
    userlist,
    vnc,
)
from virtctl.cli_errors import VirtbusGroup
from virtctl.cli_volume import image_upload, volume_app
from virtctl.cli_webhook import webhook_app
from virtctl.kubectlflags import HELP as KUBECTL_FLAGS_HELP

app = typer.Typer(
    name="virtbus",
    help="virtbus: virtual machines the KubeVirt way, on an event log.",
    epilog=KUBECTL_FLAGS_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=VirtbusGroup,  # every failure reads `error: <reason>` (virtctl/cli_errors.py)
    context_settings={"help_option_names": ["--help", "-h"]},  # virtctl's and kubectl's -h too
)
admin = typer.Typer(help="Maintenance of the orchestrator's state.")
deploy = typer.Typer(help="Running virtbus on Kubernetes (deploy/README.md).")
_FSYNC = "fsync before every ack (the default), or NATS's default: every two minutes"


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
    sync: Annotated[bool, typer.Option("--fsync-always/--fsync-default", help=_FSYNC)] = True,
    server: ServerOpt = None,
    mtls: Annotated[
        bool, typer.Option("--mtls", help="mutual TLS: every client shows a certificate too")
    ] = False,
    migrations: Annotated[
        Path | None, typer.Option(help="KubeVirt's migration settings (YAML), else its defaults")
    ] = None,
    cluster: Annotated[
        int, typer.Option(min=0, help="run N nats-servers as one JetStream cluster (0: one)")
    ] = 0,
    replicas: Annotated[
        int | None,
        typer.Option(min=1, help="copies of each stream and bucket (default: one per server)"),
    ] = None,
    orchestrators: Annotated[
        int,
        typer.Option(
            min=1, max=9, help="orchestrators (one acts, by a lease; the others stand by, warm)"
        ),
    ] = 1,
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C."""
    from orchestrator.migrations import load_policy
    from virtbus.up import run_up

    if cluster and server:
        raise usage("--cluster runs servers of its own: with --server, give --replicas instead")
    try:
        policy = load_policy(migrations) if migrations else None
    except VirtbusError as err:
        raise usage(f"--migrations: {err}") from None
    run(
        run_up(
            data_dir=data_dir, port=port, server=server, sync_always=sync, nodes=nodes,
            hypervisor=hypervisor.value, migration_policy=policy, mutual_tls=mtls,
            cluster=cluster, replicas=replicas, orchestrators=orchestrators,
        )
    )  # fmt: skip


@admin.command("rebuild-projections")
def rebuild_projections(
    data_dir: Annotated[Path, typer.Option(help="the orchestrator's data dir")] = Path(
        ".virtbus/orchestrator"
    ),
    server: ServerOpt = None,
) -> None:
    """Rebuild the read model from the start of the log."""
    from virtbus.up import rebuild

    count = run(rebuild(server_url(server), data_dir=data_dir))
    typer.echo(f"read model rebuilt from {count} events")


@admin.command("status")
def admin_status(
    server: ServerOpt = None,
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.table,
) -> None:
    """The stack's parts: servers (up, which leads each stream), orchestrator, dispatcher, nodes."""
    from virtctl.status import show, status

    typer.echo(show(run(status(server_url(server))), output=output.value))


@deploy.command("secrets")
def deploy_secrets(
    data_dir: Annotated[
        Path, typer.Option(help="the stack's data dir (its keys, CA and .creds; made if missing)")
    ] = Path(".virtbus"),
    namespace: Annotated[
        str, typer.Option(help="where virtbus and the NATS chart run")
    ] = "virtbus",
    release: Annotated[str, typer.Option(help="the NATS chart's Helm release")] = "virtbus-nats",
    replicas: Annotated[int, typer.Option(min=1, help="the chart's cluster.replicas")] = 3,
    cluster_domain: Annotated[str, typer.Option(help="the cluster's DNS domain")] = "cluster.local",
    node_creds: Annotated[
        list[Path],
        typer.Option("--node-creds", help="a node's NODE.creds (`auth add-node`; repeat)"),
    ] = [],  # noqa: B006 (typer reads it, never mutates it)
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="a file (0600), else standard output")
    ] = None,
) -> None:
    """The Secrets the NATS chart's values and deploy/*.yaml name, made from a data dir."""
    from bus.credentials import write_secret
    from virtbus.k8ssecrets import Place, dump, secret_manifests

    place = Place(release=release, namespace=namespace, cluster_domain=cluster_domain,
                  replicas=replicas)  # fmt: skip
    if output is not None and output.exists():  # as `auth add-user -o`: keys never overwrite
        raise usage(f"-o: {output} exists; remove it or name another file")
    try:
        text = dump(secret_manifests(data_dir, place=place, node_creds=node_creds))
    except VirtbusError as err:
        raise usage(str(err)) from None
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_secret(output, text)
        typer.echo(f"wrote {output}: apply it with `kubectl apply -f {output}`", err=True)


# The order of registration is the order of `virtbus --help` (verbs first, then the groups).
cli_verbs.register(app)
cli_guest.register(app)
cli_kubectl.register(app)
bench_cli.register(app)
app.add_typer(admin, name="admin")
app.add_typer(deploy, name="deploy")
app.add_typer(webhook_app, name="webhook")
cli_snapshot.register(app)
app.add_typer(volume_app, name="volume")
app.command("image-upload")(image_upload)
app.command()(vnc)
app.command()(console)
app.command("port-forward")(port_forward)
app.command()(ssh)
app.command()(scp)
app.command("soft-reboot")(cli_verbs.soft_reboot)
app.command("guestosinfo")(guestosinfo)
app.command("userlist")(userlist)
app.command("fslist")(fslist)
app.command("history")(cli_history.history)
app.add_typer(cli_history.audit, name="audit")
cli_migrate.register(app)
app.add_typer(auth_app, name="auth")
add_bus_options(app)  # last: every verb above that reaches the bus takes --creds and --tls-ca


def main() -> None:
    app()


if __name__ == "__main__":
    main()
