"""`virtbus bench ...`: the benchmarks' verbs, registered on the `virtbus` app by `register`.

Here, not in `virtctl/`, because the benchmarks are the one place allowed to import every side they
measure (the orchestrator, the node worker, raw libvirt); the CLI's own verbs never import them.
Each verb parses its flags, runs one benchmark in this process and prints its report: a table, or
`-o json`, one JSON object on stdout and nothing else there.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer

from virtctl.cli_common import Hypervisor, Output, finish, run, usage

bench = typer.Typer(help="Benchmarks; each measures its raw baseline in the same run.")

ServerOpt = Annotated[
    str | None,
    typer.Option("--server", help="bench against this server (default: a fresh one)"),
]


@bench.command("webhooks")
def bench_webhooks(
    events: Annotated[int, typer.Option(min=10, help="events to append")] = 10_000,
    receivers: Annotated[int, typer.Option(min=1, help="local HTTP receivers")] = 5,
    rate: Annotated[float, typer.Option(min=0, help="events/s to append (0: flat out)")] = 1000,
    shards: Annotated[int, typer.Option(min=1, help="dispatcher processes")] = 1,
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
    server: ServerOpt = None,
) -> None:
    """Fan-out of appended events to local receivers, against nats-py + aiohttp by hand."""
    from bench.webhooks import report
    from bench.webhooks import run as bench_run

    os.environ.setdefault("VIRTBUS_WEBHOOK_ALLOW_NETS", "127.0.0.0/8")
    r = run(bench_run(events=events, receivers=receivers, rate=rate, server=server, shards=shards))
    if output == "json":
        sys.stdout.write(json.dumps(r) + "\n")
    else:
        typer.echo(report(r))


SECURE_HELP = "a bus like `virtbus up`'s: every part logged in, over TLS, the baseline too"


@bench.command("log")
def bench_log(
    events: Annotated[int, typer.Option(min=200, help="events to append")] = 20_000,
    batch: Annotated[int, typer.Option(min=2, max=1000, help="events per atomic batch")] = 100,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    sync: Annotated[bool, typer.Option("--fsync-always/--fsync-default")] = False,
    secure: Annotated[bool, typer.Option(help=SECURE_HELP)] = False,
    server: ServerOpt = None,
    cluster: Annotated[
        int, typer.Option(min=0, help="N servers as one cluster, the log in N copies (0: one)")
    ] = 0,
) -> None:
    """Append and replay throughput of the event store against plain nats-py."""
    from bench.log import run as bench_run

    result = run(bench_run(events=events, batch=batch, server=server, sync_always=sync,
                           secure=secure, cluster=cluster))  # fmt: skip
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
        + ("; logged in, over TLS" if result["secure"] else "")
        + (f"; {result['replicas']} copies of each stream" if result["replicas"] > 1 else "")
    )
    typer.echo(f"replay reader alone (no decode): {result['replay_lean_pull_eps']:,.0f} ev/s")


@bench.command("failover")
def bench_failover(
    rounds: Annotated[int, typer.Option(min=1, help="SIGKILLs of the leader")] = 10,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    server: ServerOpt = None,
) -> None:
    """The leading orchestrator SIGKILLed: time to the standby's first decision."""
    from bench.failover import run as bench_run
    from bench.failover import table

    r = run(bench_run(rounds=rounds, server=server))
    sys.stdout.write(json.dumps(r) + "\n" if output is Output.json else table(r) + "\n")


@bench.command("control")
def bench_control(
    vms: Annotated[int, typer.Option(min=1, help="VMs to create and start")] = 1000,
    nodes: Annotated[int, typer.Option(min=1, help="simulated nodes")] = 10,
    concurrency: Annotated[int, typer.Option(min=1, help="commands in flight")] = 50,
    rate: Annotated[
        float, typer.Option(min=0, help="VMs created per second (0: as fast as accepted)")
    ] = 0.0,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    secure: Annotated[bool, typer.Option(help=SECURE_HELP)] = False,
    server: ServerOpt = None,
    sync: Annotated[bool, typer.Option("--fsync-always/--fsync-default")] = False,
    cluster: Annotated[
        int, typer.Option(min=0, help="N servers as one cluster, the log in N copies (0: one)")
    ] = 0,
) -> None:
    """VM creation to Running through the whole control plane, against plain nats-py."""
    from bench.control import run as bench_run

    r = run(bench_run(vms=vms, nodes=nodes, server=server, concurrency=concurrency,
                      rate=rate or None, secure=secure, cluster=cluster,
                      sync_always=sync))  # fmt: skip
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
        f"max {r['create_to_running_max_ms']:.0f}\n"
        f"bus                    {'logged in, over TLS' if r['secure'] else 'open'}, "
        f"{r['replicas']} cop{'ies' if r['replicas'] > 1 else 'y'} of each stream, "
        f"fsync {'always' if r['fsync_always'] else 'default'}\n"
        f"CPU ms per start       {_shares(r['cpu_ms_per_start'], '{:.2f}')}\n"
        f"  raw nats-py          {_shares(r['baseline_cpu_ms_per_start'], '{:.2f}')}\n"
        f"{_paced(r)}"
        f"bus writes per start   {_shares(r['bus_per_start'], '{:.2f}')}"
    )


def _paced(r: dict[str, Any]) -> str:
    """The raw run again at the offered rate: what the same bus work costs at that load."""
    if "paced_baseline_cpu_ms_per_start" not in r:
        return ""
    return (
        f"  raw nats-py at {r['offered_rate']:.0f}/s "
        f"{_shares(r['paced_baseline_cpu_ms_per_start'], '{:.2f}')}; "
        f"its {r['baseline_publishes_per_vm']} publishes p99 {r['paced_baseline_p99_ms']:.0f} ms\n"
    )


def _shares(parts: dict[str, float], fmt: str) -> str:
    """`total (part a, part b ...)`, the parts that cost anything, largest first."""
    if not parts:
        return "n/a (no VM started)"
    shown = sorted(((v, k) for k, v in parts.items() if v >= 0.005), reverse=True)
    inner = ", ".join(f"{k} {fmt.format(v)}" for v, k in shown)
    return f"{fmt.format(sum(v for v, _ in shown))} ({inner})"


@bench.command("scale")
def bench_scale(
    vms: Annotated[int, typer.Option(min=1, help="VMs to create and start")] = 10_000,
    nodes: Annotated[int, typer.Option(min=1, help="simulated nodes")] = 100,
    steady: Annotated[float, typer.Option(min=1, help="seconds of the quiet stretch")] = 10.0,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    server: ServerOpt = None,
) -> None:
    """Many VMs on many nodes: the orchestrator's memory, idle CPU, reads and restart."""
    from bench.scale import run as bench_run

    r = run(bench_run(vms=vms, nodes=nodes, server=server, steady_s=steady))
    if output is Output.json:
        sys.stdout.write(json.dumps(r) + "\n")
        return
    typer.echo(
        f"{r['running']}/{r['vms']} VMs Running on {r['nodes']} nodes "
        f"({r['starts_per_s']:,.0f} starts/s), {r['events']:,.0f} events\n"
        f"orchestrator memory       {r['orchestrator_rss_bytes'] / (1 << 20):8,.0f} MiB"
        "   (target <= 1,024)\n"
        f"orchestrator idle CPU     {r['steady_cpu_fraction'] * 100:8.1f} % of a core"
        "   (target <= 10)\n"
        f"get vm NAME               p50 {r['get_p50_ms']:.1f} ms, p99 {r['get_p99_ms']:.1f} ms"
        "   (target p99 <= 20)\n"
        f"get vms -A ({r['listed']:,} VMs)  {r['list_all_s']:8.2f} s through virtbus-api,"
        f" {r['cli_list_s']:.2f} s as `virtbus get vms -A -o json`   (target <= 1)\n"
        f"one VM's history          {r['history_ms']:8.1f} ms ({r['history_events']} events)\n"
        f"restart: API answers      {r['restart_to_api_s']:8.2f} s   (target <= 10)\n"
        f"restart: acting again     {r['restart_to_acting_s']:8.2f} s"
    )


@bench.command("start")
def bench_start(
    vms: Annotated[int, typer.Option(min=1, help="VMs to create, one every --interval-ms")] = 100,
    hypervisor: Annotated[Hypervisor, typer.Option(help="real QEMU or libvirt's test driver")] = (
        Hypervisor.qemu
    ),
    interval_ms: Annotated[float, typer.Option(min=0, help="between two creations")] = 100.0,
    boots: Annotated[
        int, typer.Option(min=0, help="tiny-guest boots each way, timed to the guest (qemu)")
    ] = 3,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
) -> None:
    """KubeVirt's density test: creation->Running on one real node, against raw libvirt; and the
    tiny guest's creation->booted against raw libvirt's define+create+boot."""
    from bench.start import measure

    finish(measure(vms=vms, hypervisor=hypervisor.value, interval_ms=interval_ms,
                   output=output.value, boots=boots))  # fmt: skip


@bench.command("history")
def bench_history(
    events: Annotated[int, typer.Option(min=1000, help="events in the log")] = 1_000_000,
    vm_events: Annotated[int, typer.Option(min=10, help="of which the VM's own")] = 200,
    rounds: Annotated[int, typer.Option(min=1, help="reads of each kind")] = 21,
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
) -> None:
    """One VM's history among N events: `virtbus history`'s read against raw nats-py reads."""
    from bench.history import READERS
    from bench.history import run as bench_run

    if output not in ("table", "json"):
        raise usage(f"-o {output!r}: use table or json")
    if vm_events * 2 > events:
        raise usage(f"--vm-events {vm_events}: at most half of --events ({events})")
    r: dict[str, Any] = run(bench_run(events=events, vm_events=vm_events, rounds=rounds,
                                      server=None))  # fmt: skip
    if output == "json":
        sys.stdout.write(json.dumps(r) + "\n")
        return
    typer.echo(
        f"one VM's history: {r['vm_events']} events and {r['vm_commands']} commands among "
        f"{r['events']:,} events (generated in {r['generate_s']} s, indexed in "
        f"{r['index_catch_up_s']} s), {r['rounds']} rounds"
    )
    typer.echo(f"{'read':34} {'p50 ms':>8} {'min ms':>8}")
    for name in READERS:
        label = {
            "virtbus": "virtbus history (index)",
            "virtbus_subject": "virtbus history (subject read)",
        }.get(name, f"raw {name}")
        typer.echo(f"{label:34} {r[f'{name}_ms_p50']:8.2f} {r[f'{name}_ms_min']:8.2f}")
    verdict = "met" if r["virtbus_ms_p50"] <= r["target_ms"] else "NOT met"
    typer.echo(f"index path vs raw by-seq gets {r['index_vs_raw_by_seq']:.2f}; subject read vs "
               f"raw batched gets {r['subject_vs_raw_batched']:.2f}")  # fmt: skip
    typer.echo(f"ratio virtbus / best raw filtered read p50: {r['ratio']:.2f} (subject read: "
               f"{r['subject_ratio']:.2f}); target <= {r['target_ms']} ms: {verdict}")  # fmt: skip


@bench.command("migrate")
def bench_migrate(
    rounds: Annotated[int, typer.Option(min=1, help="live migrations per mode (even)")] = 6,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
) -> None:
    """Orchestrated live migration against raw libvirt migrateToURI3, same VM, same run."""
    from bench.migrate import measure

    finish(measure(rounds=rounds, output=output.value))


def register(app: typer.Typer) -> None:
    """Add `bench ...` to the `virtbus` app."""
    app.add_typer(bench, name="bench")
