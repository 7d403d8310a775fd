"""The console verbs of the `virtbus` CLI: `vnc`, `console`, `port-forward`, `ssh`, `scp` and the
guest agent's (virtctl's flags).

`cli.py` registers them; the shared options and runner come from `cli_common.py`
(`python -m virtbus` loads `cli.py` as `__main__`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from bus.connect import configured, server_url
from events.errors import ValidationError
from virtctl.cli_common import NsOpt, ServerOpt, usage
from virtctl.cli_common import finish as _finish
from virtctl.cli_common import run as _run

NameArg = Annotated[str, typer.Argument(help="VM name")]
# ssh's and scp's options, virtctl's names
IdentityOpt = Annotated[str | None, typer.Option("--identity-file", "-i", help="private key")]
UserOpt = Annotated[str | None, typer.Option("--username", "-l", help="user name")]
SshPortOpt = Annotated[int, typer.Option("--port", "-p", min=1, max=65535)]
KnownHostsOpt = Annotated[  # ssh's own file (it reads and adds to it): a string passed on
    str | None, typer.Option("--known-hosts", help="default ~/.ssh/virtbus_known_hosts")
]
SshOpts = Annotated[
    list[str] | None, typer.Option("--local-ssh-opts", "-t", help="passed on to ssh or scp")
]
LocalSsh = (
    Annotated[  # virtctl's choice between its own client and the system's; ours is the latter
        bool,
        typer.Option("--local-ssh/--no-local-ssh", help="the system ssh (virtbus has no other)"),
    ]
)


def vnc(
    name: NameArg,
    shot_of: Annotated[
        str | None, typer.Argument(help="with `screenshot`: the VM whose screen to save")
    ] = None,
    proxy_only: Annotated[
        bool, typer.Option("--proxy-only", help="only print the port; start no viewer")
    ] = False,
    address: Annotated[str, typer.Option("--address", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 picks one")] = 0,
    file: Annotated[
        str | None, typer.Option("--file", "-f", help="screenshot: the PNG's path, - for stdout")
    ] = None,
    move_cursor: Annotated[
        bool, typer.Option("--move-cursor", "-m", help="screenshot: accepted, not needed here")
    ] = False,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Open a VNC connection to a running VM through a local port (prints {"port":N}); `vnc
    screenshot NAME --file F` saves its screen as a PNG, as virtctl does."""
    if name == "screenshot" and shot_of is not None:
        from virtctl.console import screenshot

        if not file:
            raise usage('vnc screenshot: required flag(s) "file" not set')
        _finish(_run(screenshot(server_url(server), name=shot_of, namespace=namespace,
                                file=file)))  # fmt: skip
        return
    if shot_of is not None or file is not None:
        raise usage("vnc: give vnc NAME, or vnc screenshot NAME --file F")
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


TargetArg = Annotated[str, typer.Argument(help="vm/NAME[/NAMESPACE] (or vmi/..., svc/NAME)")]


def port_forward(
    target: TargetArg,
    ports: Annotated[list[str], typer.Argument(help="[tcp/|udp/][LOCAL:]REMOTE, one or more")],
    stdio: Annotated[
        bool, typer.Option("--stdio", help="one connection on stdin/stdout (an ssh ProxyCommand)")
    ] = False,
    address: Annotated[str, typer.Option("--address", help="address to listen on")] = "127.0.0.1",
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Forward local ports to a VM's ports over the bus (the node connects to the VM's address;
    no port is opened on it); `svc/NAME PORT` forwards to the target port of the Service's VM."""
    from virtctl.portforward import forward
    from virtctl.portforward import stdio as stdio_
    from virtctl.portforward import target as target_
    from virtctl.portspec import port_spec

    async def go() -> int:
        specs = [port_spec(p) for p in ports]
        url = server_url(server)
        kind, _, named = target.partition("/")
        if kind.lower() in ("svc", "service", "services"):  # kubectl's: a Service's target ports
            from virtctl.services import forward_target

            ns = namespace
            name, specs = await forward_target(url, name=named, namespace=ns, ports=specs)
        else:
            name, ns = target_(target, namespace=namespace)
        if stdio:
            if len(specs) != 1:
                raise ValidationError("port: --stdio forwards exactly one port", field="port")
            if specs[0].protocol != "tcp":
                raise ValidationError(f"port: --stdio forwards a tcp port, not {ports[0]!r}",
                                      field="port")  # fmt: skip
            return await stdio_(url, name=name, namespace=ns, port=specs[0].remote)
        return await forward(url, name=name, namespace=ns, ports=specs, address=address)

    _finish(_run(go()))


def ssh(
    target: Annotated[str, typer.Argument(help="[USER@]vm/NAME[/NAMESPACE]")],
    identity: IdentityOpt = None,
    command: Annotated[
        str | None, typer.Option("--command", "-c", help="run this and exit")
    ] = None,
    username: UserOpt = None,
    port: SshPortOpt = 22,
    known_hosts: KnownHostsOpt = None,
    local_ssh_opts: SshOpts = None,
    local_ssh: LocalSsh = True,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Open an SSH session to a VM with the system ssh, through `port-forward --stdio` (virtctl's
    local ssh); its exit code is ssh's."""
    from virtctl.portforward import ssh_argv

    _system_ssh_only(local_ssh)
    from virtctl.portforward import target as target_

    user, _, rest = target.rpartition("@")
    try:
        name, ns = target_(rest, namespace=namespace)
    except ValidationError as err:
        print(f"error: {err.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    argv = ssh_argv(
        name=name, namespace=ns, user=username or user or os.environ.get("USER", "root"),
        port=port, identity=identity, command=command,
        known_hosts=known_hosts or str(Path.home() / ".ssh" / "virtbus_known_hosts"),
        local_opts=local_ssh_opts or [], server=server_url(server),
    )  # fmt: skip
    _exec_on_bus(argv)


def scp(
    source: Annotated[str, typer.Argument(help="a local path, or [USER@]vm/NAME[.NS]:PATH")],
    destination: Annotated[str, typer.Argument(help="the other side")],
    identity: IdentityOpt = None,
    username: UserOpt = None,
    port: SshPortOpt = 22,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="copy directories")] = False,
    known_hosts: KnownHostsOpt = None,
    local_ssh_opts: SshOpts = None,
    local_ssh: LocalSsh = True,
    namespace: NsOpt = "default",
    server: ServerOpt = None,
) -> None:
    """Copy files to or from a VM with the system scp, through `port-forward --stdio` (virtctl's
    local scp); its exit code is scp's."""
    from virtctl.portforward import scp_argv

    _system_ssh_only(local_ssh)

    try:
        argv = scp_argv(
            source=source, destination=destination, namespace=namespace,
            user=username or os.environ.get("USER", "root"), port=port, identity=identity,
            recursive=recursive, local_opts=local_ssh_opts or [], server=server_url(server),
            known_hosts=known_hosts or str(Path.home() / ".ssh" / "virtbus_known_hosts"),
        )  # fmt: skip
    except ValidationError as err:
        print(f"error: {err.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    _exec_on_bus(argv)


def _system_ssh_only(local_ssh: bool) -> None:
    if not local_ssh:
        print("error: --no-local-ssh: virtbus has no ssh client of its own; it runs the system's",
              file=sys.stderr)  # fmt: skip
        raise typer.Exit(2)


def _exec_on_bus(argv: list[str]) -> None:
    """Become `argv` (ssh or scp), whose ProxyCommand logs in to the bus as this command did.
    Access found rather than given (the local stack's, in the same directory) is found again by
    the ProxyCommand; passed on, it would be held to as given, and an open bus refused."""
    access = configured()
    passed = () if access.adaptive else (
        ("VIRTBUS_CREDS", access.creds),
        ("VIRTBUS_TLS_CA", access.tls_ca),
        ("VIRTBUS_TLS_CERT", access.tls_cert),
        ("VIRTBUS_TLS_KEY", access.tls_key),
    )  # fmt: skip
    env = {**os.environ, **{var: str(path) for var, path in passed if path}}
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


def _agent_verb(verb: str, doc: str) -> Callable[..., None]:
    def command(name: NameArg, namespace: NsOpt = "default", server: ServerOpt = None) -> None:
        from virtctl.guestagent import ask

        _finish(_run(ask(server_url(server), verb=verb, name=name, namespace=namespace)))

    command.__doc__ = doc
    return command


guestosinfo = _agent_verb("guestosinfo", "Print the guest agent's view of a running VM (OS, "
                          "hostname, timezone, users, filesystems) as JSON.")  # fmt: skip
userlist = _agent_verb("userlist", "Print the users logged in to a running VM (guest agent).")
fslist = _agent_verb("fslist", "Print the filesystems of a running VM (guest agent).")
