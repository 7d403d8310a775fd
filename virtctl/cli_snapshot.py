"""`virtbus snapshot` and `restore`: the typer verbs; what they do is in `snapshots.py`.

`get vmsnapshots|vmrestores` goes through `get` and `delete vmsnapshot` through `delete`
(`cli_verbs.py`); both end in `snapshots.py` too.
"""

from __future__ import annotations

import secrets
from typing import Annotated

import typer

from bus.connect import server_url
from events import commands as c
from virtctl.cli_common import NsOpt, ServerOpt, actor, finish, run
from virtctl.snapshots import send_and_say


def register(app: typer.Typer) -> None:
    """Add `snapshot` and `restore` to the `virtbus` app."""

    @app.command()
    def snapshot(
        name: Annotated[str, typer.Argument(help="the VM")],
        snapshot: Annotated[str, typer.Argument(help="the snapshot's name")],
        namespace: NsOpt = "default",
        server: ServerOpt = None,
    ) -> None:
        """Snapshot a VM, running or stopped: its spec and copies of its persistent volumes."""
        cmd = c.SnapshotVM(name=name, namespace=namespace, snapshot=snapshot, actor=actor())
        done = f"virtualmachinesnapshot.snapshot.kubevirt.io/{snapshot} created"
        finish(run(send_and_say(server_url(server), cmd, done)))

    @app.command()
    def restore(
        name: Annotated[str, typer.Argument(help="the VM (stopped)")],
        snapshot: Annotated[str, typer.Argument(help="the snapshot to restore")],
        restore_name: Annotated[str | None, typer.Option("--restore-name")] = None,
        namespace: NsOpt = "default",
        server: ServerOpt = None,
    ) -> None:
        """Restore a stopped VM from one of its snapshots (volumes, then spec)."""
        restore = restore_name or f"{snapshot[:48]}-restore-{secrets.token_hex(3)}"
        cmd = c.RestoreVM(name=name, namespace=namespace, snapshot=snapshot, restore=restore,
                          actor=actor())  # fmt: skip
        done = f"virtualmachinerestore.snapshot.kubevirt.io/{restore} created"
        finish(run(send_and_say(server_url(server), cmd, done)))
