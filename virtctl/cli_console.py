"""The console verbs of the `virtbus` CLI: `vnc` and `console` (virtctl's flags).

`cli.py` registers them; the shared options and runner come from `cli_common.py`
(`python -m virtbus` loads `cli.py` as `__main__`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from bus.connect import server_url
from virtctl.cli_common import NsOpt, ServerOpt
from virtctl.cli_common import finish as _finish
from virtctl.cli_common import run as _run

NameArg = Annotated[str, typer.Argument(help="VM name")]


def vnc(
    name: NameArg,
    proxy_only: Annotated[
        bool, typer.Option("--proxy-only", help="only print the port; start no viewer")
    ] = False,
    address: Annotated[str, typer.Option("--address", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 picks one")] = 0,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Open a VNC connection to a running VM through a local port (prints {"port":N})."""
    from virtctl.console import vnc as vnc_

    _finish(_run(vnc_(server_url(server), name=name, namespace=namespace, address=address,
                      port=port, proxy_only=proxy_only)))  # fmt: skip


def console(
    name: NameArg,
    timeout: Annotated[
        int, typer.Option("--timeout", min=0, help="minutes to wait for a starting VMI")
    ] = 5,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Attach to a running VM's serial console (Ctrl-] to leave); a VMI still starting is waited
    for up to `--timeout` minutes, as virtctl does."""
    from virtctl.console import console as console_

    _finish(_run(console_(server_url(server), name=name, namespace=namespace,
                          timeout_s=timeout * 60)))  # fmt: skip
