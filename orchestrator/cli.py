"""The `virtbus` command line: kubectl and virtctl habits over the bus.

Thin on purpose: each verb parses its flags and calls one coroutine. Exit codes: 0 ok, 1 rejected or
failed (reason on stderr), 2 usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
import uvloop

from events.commands import AnyCommand
from events.envelope import Envelope
from events.errors import VirtbusError

T = TypeVar("T")

app = typer.Typer(
    name="virtbus",
    help="virtbus: virtual machines the KubeVirt way, on an event log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench = typer.Typer(help="Benchmarks; each measures its raw baseline in the same run.")
app.add_typer(bench, name="bench")

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", "-s", help="NATS URL (else $VIRTBUS_NATS_URL, else nats://127.0.0.1:4222)"
    ),
]


class Output(StrEnum):
    table = "table"
    json = "json"


class Hypervisor(StrEnum):
    test = "test"
    qemu = "qemu"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return uvloop.run(coro)
    except VirtbusError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def up(
    nodes: Annotated[int, typer.Option(min=0, help="node workers to run")] = 2,
    hypervisor: Annotated[Hypervisor, typer.Option(help="libvirt test driver or real QEMU")] = (
        Hypervisor.test
    ),
    data_dir: Annotated[Path, typer.Option(help="where the bus keeps its data")] = Path(".virtbus"),
    port: Annotated[int, typer.Option(help="client port; -1 picks a free one")] = 4222,
    sync: Annotated[
        bool, typer.Option("--fsync-always/--fsync-default", help="fsync before every ack")
    ] = False,
    server: ServerOpt = None,
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C."""
    from orchestrator.up import run_up

    _run(
        run_up(
            data_dir=data_dir, port=port, server=server, sync_always=sync, nodes=nodes,
            hypervisor=hypervisor.value,
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
    from orchestrator.bench.log import run

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
