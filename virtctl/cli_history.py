"""`virtbus history` and `virtbus audit`: the auditor's verbs, kept apart from the lifecycle CLI.

`history NAME` prints every command, decision and observation of a VM with its status after each,
life by life; `--at T` prints the VM as it was at T in `get vm -o yaml` shape; `--follow` keeps
printing. `audit checkpoint|verify` seal and check the log (see `bus/audit.py`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import history as h
from bus.client import session
from bus.connect import server_url
from bus.consumers import follow
from events import render
from events.envelope import Recorded, attested, chain_hash, decode_envelope
from events.errors import TamperDetected, ValidationError, VirtbusError
from events.names import COMMANDS_STREAM, EVENTS_STREAM, Ref
from virtctl import kinds as k
from virtctl.cli_common import NsOpt, ServerOpt, finish, run
from virtctl.cli_common import usage as _usage

OUTPUTS = ("table", "json", "yaml")
HEADER = ["TIME", "CATEGORY", "TYPE", "ACTOR", "STATUS", "SUMMARY"]

audit = typer.Typer(help="Tamper evidence: signed checkpoints of the log, and their check.")
KeyFileOpt = Annotated[
    Path | None,
    typer.Option("--key-file", help="HMAC key file (else $VIRTBUS_AUDIT_KEY)"),
]


def _run(coro: Coroutine[Any, Any, int]) -> None:
    """Run a verb: exit with its code, 1 with the reason on stderr when virtbus says no."""
    finish(run(coro))


def _when(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        return h.parse_time(text)
    except ValidationError as err:
        raise _usage(f"{flag}: {err.message}") from None


# The kinds with a history besides the VM's (`history KIND/NAME`), by their aggregate.
_AGGREGATES = {k.VM: "vm", k.VMIRS: "rs", k.VMPOOL: "vmpool", k.KUBEVIRT: "kubevirt",
               k.SERVICE: "service", k.MIGRATION_POLICY: "migrationpolicy",
               k.DATASOURCE: "datasource"}  # fmt: skip


def _target(name: str, namespace: str) -> tuple[Ref, k.Kind]:
    """`NAME` (a VM) or `KIND/NAME` (a pool, a replica set, the KubeVirt object)."""
    kind, named = k.split(name, None) if "/" in name else (k.VM, name)
    if kind not in _AGGREGATES or named is None:
        raise ValidationError(f"history: {name!r}: give a VM's name, or vmpool/NAME, "
                              "vmirs/NAME, kubevirt/NAME, svc/NAME, migrationpolicy/NAME, "
                              "datasource/NAME", field="name")  # fmt: skip
    if kind is k.KUBEVIRT and namespace == "default":  # where the KubeVirt object lives
        namespace = "kubevirt"
    return Ref.of(_AGGREGATES[kind], named, namespace), kind


def history(
    name: Annotated[str, typer.Argument(help="VM name (deleted VMs too), or KIND/NAME")],
    namespace: NsOpt = "default",
    since: Annotated[str | None, typer.Option(help="RFC 3339 time or a duration ago (10m)")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339 time or a duration ago")] = None,
    at: Annotated[str | None, typer.Option(help="print the VM as it was at this time")] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="table, json or yaml")] = "table",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing")] = False,
    server: ServerOpt = None,
) -> None:
    """Every command, decision and observation of a VM, with its status after each; of a pool,
    a replica set or the KubeVirt object as KIND/NAME (`history kubevirt/kubevirt`)."""
    if output not in OUTPUTS:
        raise _usage(f"-o {output!r}: use table, json or yaml")
    try:
        ref, _ = _target(name, namespace)
    except ValidationError as err:
        raise _usage(err.message) from None
    if ref.kind != "vm" and at is not None:
        raise _usage("--at prints a VM as it was; for other kinds read the history")
    moment, start, end = _when(at, "--at"), _when(since, "--since"), _when(until, "--until")
    if moment is not None and (follow or start or end):
        raise _usage("--at prints one moment; it does not combine with --since, --until, --follow")
    url = server_url(server)
    if moment is not None:
        _run(_at(url, ref, moment, output=output))
        return
    _run(_history(url, ref, since=start, until=end, output=output, follow=follow))


async def _read(nc: Client, ref: Ref) -> h.History:
    try:  # the read model indexes VMs' histories only; the others are read off their subjects
        found = await h.read_history(nc, ref, indexed=ref.kind == "vm")
    except TamperDetected as err:
        raise VirtbusError(f"{err}; run `virtbus audit verify {ref.name}`") from None
    if not found.events and not found.commands:
        kind = next(kind for kind, agg in _AGGREGATES.items() if agg == ref.kind)
        raise VirtbusError(kind.not_found(ref.name))
    return found


async def _at(url: str, ref: Ref, moment: datetime, *, output: str) -> int:
    async with session(url) as nc:
        found = await _read(nc, ref)
    s = h.state_at(found.events, moment)
    if not s.exists:
        why = "was deleted by then" if s.deleted else "did not exist yet"
        raise VirtbusError(
            f'virtualmachines.kubevirt.io "{ref.name}" not found at '
            f"{moment.astimezone(UTC).isoformat()}: it {why}"
        )
    if output == "table":
        sys.stdout.write(render.vm_table([s], namespace=ref.namespace, now=moment))
    else:
        obj = render.vm_object(s)
        sys.stdout.write(render.to_json(obj) if output == "json" else render.to_yaml(obj))
    return 0


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _cells(e: h.Entry) -> list[str]:
    kind = e.type.removeprefix("io.virtbus.").removesuffix(".v1")
    return [_time(e.time), e.category, kind, e.actor or "-", e.status or "-", e.summary]


def _life_line(life: int, items: list[h.Entry]) -> str:
    if life == 0:
        return "# before the VM was first created"
    created = next((e.time for e in items if e.type == "io.virtbus.vm.created.v1"), None)
    gone = next((e.time for e in items if e.type == "io.virtbus.vm.deleted.v1"), None)
    span = f"created {render.timestamp(created)}" if created else ""
    if gone:
        span += f", deleted {render.timestamp(gone)}"
    return f"# life {life}: {span}"


def _print(items: list[h.Entry], *, output: str) -> None:
    if output != "table":
        doc = render.as_list(h.entry_object(e) for e in items)
        sys.stdout.write(render.to_json(doc) if output == "json" else render.to_yaml(doc))
        return
    if not items:
        typer.echo("No history in that window.")
        return
    lives = sorted({e.life for e in items})
    # One table for all, so columns line up across lives; a comment line opens each life.
    lines = render.table(HEADER, (_cells(e) for e in items)).splitlines()
    typer.echo(lines[0])
    for life in lives:
        mine = [i for i, e in enumerate(items) if e.life == life]
        if len(lives) > 1 or life == 0:
            typer.echo(_life_line(life, [items[i] for i in mine]))
        for i in mine:
            typer.echo(lines[i + 1])


async def _history(
    url: str, ref: Ref, *, since: datetime | None, until: datetime | None, output: str,
    follow: bool,
) -> int:  # fmt: skip
    async with session(url) as nc:
        found = await (_read(nc, ref) if not follow else
                       h.read_history(nc, ref, indexed=ref.kind == "vm"))  # fmt: skip
        entries = h.entries(found)
        _print(h.window(entries, since=since, until=until), output=output)
        if follow:
            sys.stdout.flush()
            last = found.events[-1] if found.events else None
            await _follow(nc, ref, found, after=last, output=output)
    return 0


async def _follow(
    nc: Client, ref: Ref, found: h.History, *, after: Recorded | None, output: str
) -> None:
    """Print new events and commands as they arrive, until interrupted."""
    timeline = h.Timeline()
    for r in found.events:
        timeline.event(r)
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def tail(stream: str, subject: str, start: int | None) -> None:
        async for msg in follow(nc, stream, subjects=[subject], from_seq=start or 1):
            await queue.put(msg)

    start = (after.seq + 1) if after else None
    last_cmd = found.commands[-1].seq + 1 if found.commands else None
    subs = [
        asyncio.create_task(tail(EVENTS_STREAM, ref.wildcard, start), name="history-follow-events"),
        asyncio.create_task(tail(COMMANDS_STREAM, ref.command_subject(">"), last_cmd),
                            name="history-follow-commands"),
    ]  # fmt: skip
    try:
        while True:
            msg = await queue.get()
            entry = _live_entry(msg, timeline)
            if entry is None:
                continue
            if output == "table":
                typer.echo("  ".join(_cells(entry)))
            else:
                obj: Any = h.entry_object(entry)
                text = render.to_json(obj) if output == "json" else "---\n" + render.to_yaml(obj)
                sys.stdout.write(text)
            sys.stdout.flush()
    finally:
        for task in subs:
            task.cancel()
        await asyncio.gather(*subs, return_exceptions=True)


def _live_entry(msg: Msg, timeline: h.Timeline) -> h.Entry | None:
    seq = msg.metadata.sequence.stream
    if msg.subject.startswith("virt.cmd."):
        headers = {**(msg.headers or {}), "Nats-Sequence": str(seq),
                   "Nats-Time-Stamp": msg.metadata.timestamp.isoformat()}  # fmt: skip
        cmd = h.command_record(msg.data, headers)
        return timeline.command(cmd, summary=f"{cmd.kind}: asked")
    try:
        env = attested(decode_envelope(msg.data), msg.subject)
    except Exception:  # garbage on the tree: `audit verify` reports it
        return None
    return timeline.event(Recorded(env, seq, msg.subject, chain_hash(msg.data)))


def _key(path: Path | None) -> bytes | None:
    from bus.audit import load_key

    try:
        return load_key(path)
    except ValidationError as err:
        raise _usage(err.message) from None


@audit.command("checkpoint")
def audit_checkpoint(key_file: KeyFileOpt = None, server: ServerOpt = None) -> None:
    """Seal the log now: sign the heads of every history that changed since the last one."""
    key = _key(key_file)
    if key is None:
        raise _usage("audit checkpoint: no audit key; set VIRTBUS_AUDIT_KEY or pass --key-file")
    _run(_checkpoint(server_url(server), key))


async def _checkpoint(url: str, key: bytes) -> int:
    from bus.audit import Checkpointer

    async with session(url) as nc:
        sealed = await Checkpointer(nc, key).checkpoint()
    if not sealed:
        typer.echo("nothing new to seal: every history is covered by the latest checkpoint")
        return 0
    count = sum(len(cp.heads) for cp in sealed)
    numbers = ", ".join(f"#{cp.number}" for cp in sealed)
    typer.echo(f"checkpoint {numbers}: {count} histories sealed through seq "
               f"{sealed[-1].through_seq}")  # fmt: skip
    return 0


@audit.command("verify")
def audit_verify(
    name: Annotated[str | None, typer.Argument(help="one VM (default: the whole log)")] = None,
    namespace: NsOpt = "default",
    key_file: KeyFileOpt = None,
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
    server: ServerOpt = None,
) -> None:
    """Check the hash chains and the signed checkpoints; name the first bad event (exit 1)."""
    if output not in ("table", "json"):
        raise _usage(f"-o {output!r}: use table or json")
    try:
        ref = Ref.vm(name, namespace) if name is not None else None
    except ValidationError as err:
        raise _usage(err.message) from None
    _run(_verify(server_url(server), ref, key=_key(key_file), output=output))


async def _verify(url: str, ref: Ref | None, *, key: bytes | None, output: str) -> int:
    from bus.audit import verify

    async with session(url) as nc:
        report = await verify(nc, key=key, ref=ref)
    if ref is not None and not report.events and not report.findings:
        raise VirtbusError(f'virtualmachines.kubevirt.io "{ref.name}" not found')
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if output == "json":
        sys.stdout.write(render.to_json(msgspec.to_builtins(report)))
    else:
        what = str(ref) if ref else "the log"
        sealed = (f"{report.checkpoints} checkpoints through seq {report.sealed_through}"
                  + (f", signed by key {report.key_id}" if report.signatures_checked else
                     ", signatures not checked"))  # fmt: skip
        verdict = "intact" if report.ok else f"{len(report.findings)} bad histories"
        typer.echo(f"audit of {what}: {verdict}: {report.events} events in "
                   f"{report.aggregates} histories; {sealed}")  # fmt: skip
        for f in report.findings:
            typer.echo(f"{f.aggregate}: {f.problem}: {f.message}")
    if report.findings:
        first = report.findings[0]
        typer.echo(f"error: first bad event: {first.aggregate} version {first.version}: "
                   f"{first.message}", err=True)  # fmt: skip
        return 1
    return 0
