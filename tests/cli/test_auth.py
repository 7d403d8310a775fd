"""`virtbus auth ...` on the stack `make run` starts (secured): users added with a role get a
`.creds` file that works, are refused what their role does not allow (recorded, as who they are),
and a revoked one is refused from then on, with no restart."""

from __future__ import annotations

import asyncio
import signal
import stat
import sys
from pathlib import Path

import pytest
from clirun import Result, cli_env, virtbus
from paths import ROOT
from upstack import virtbus_up

VM = """apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: a, namespace: NS}
spec:
  runStrategy: Halted
  template:
    spec:
      domain: {devices: {}, resources: {requests: {memory: 64Mi}}}
"""


@pytest.fixture
def here(tmp_path: Path) -> Path:
    for ns in ("team-a", "default"):
        (tmp_path / f"vm-{ns}.yaml").write_text(VM.replace("NS", ns))
    return tmp_path


async def test_users_with_roles_from_add_to_revoke(here: Path) -> None:
    async with virtbus_up("--port", "-1", "--data-dir", ".virtbus", "--nodes", "0",
                          cwd=here) as (proc, url):  # fmt: skip
        env = cli_env(url)
        ca = str(here / ".virtbus" / "tls" / "ca.pem")

        async def cli(*args: str) -> Result:  # run where `make run` ran: the admin, found
            return await virtbus(*args, env=env, cwd=here)

        async def as_(user: str, *args: str) -> Result:
            return await virtbus(*args, "--creds", f"{user}.creds", "--tls-ca", ca, env=env,
                                 cwd=here)  # fmt: skip

        added = await cli("auth", "add-user", "alice", "--role", "edit", "-n", "team-a")
        assert added.ok().out == 'user "alice" added (edit in team-a): credentials in alice.creds\n'
        assert stat.S_IMODE((here / "alice.creds").stat().st_mode) == 0o600
        (await cli("auth", "add-user", "vera", "--role", "view")).ok()
        again = await cli("auth", "add-user", "alice", "--role", "view")
        assert (again.code, again.err) == (
            2, "error: -o: alice.creds exists; remove it or name another file\n",
        )  # fmt: skip

        who = await as_("alice", "auth", "whoami")
        assert who.ok().out == (
            "ATTRIBUTE    VALUE\nUsername     alice\nRole         edit\nNamespaces   team-a\n"
            "Status       Active\n"
        )
        # kubectl's `auth can-i`: yes (0) or no (1), as the intake and virtbus-api will judge
        for user, ask, answer in (
            ("alice", ["start", "vms", "-n", "team-a"], "yes"),
            ("alice", ["delete", "vm", "-n", "default"], "no"),
            ("alice", ["drain", "nodes"], "no"),
            ("alice", ["get", "vms", "-n", "default"], "no"),
            ("vera", ["get", "vmis", "-n", "default"], "yes"),
            ("vera", ["create", "pvc", "-n", "team-a"], "no"),
        ):  # fmt: skip
            said = await as_(user, "auth", "can-i", *ask)
            assert (said.code, said.out) == (0 if answer == "yes" else 1, answer + "\n"), ask
        created = await as_("alice", "apply", "-f", "vm-team-a.yaml")
        assert created.ok().out == "virtualmachine.kubevirt.io/a created\n"
        elsewhere = await as_("alice", "apply", "-f", "vm-default.yaml")
        assert (elsewhere.code, elsewhere.err) == (1, (
            'error: a: forbidden: user "alice" (edit in team-a) cannot ApplyVM virtualmachines in '
            'the namespace "default"\n'
        ))  # fmt: skip
        looked = await as_("vera", "get", "vms", "-n", "team-a")
        row = looked.ok().out.splitlines()[1].split()
        assert (row[0], row[2]) == ("a", "Stopped")  # (the AGE column between them)
        started = await as_("vera", "start", "a", "-n", "team-a")
        assert (started.code, started.err) == (1, (
            'error: forbidden: user "vera" (view) cannot StartVM virtualmachines in the namespace '
            '"team-a"\n'
        ))  # fmt: skip
        history = (await cli("history", "a", "-n", "team-a")).ok().out
        assert [line.split()[3] for line in history.splitlines() if "Z   " in line][-3:] == [
            "alice", "vera", "vera",
        ]  # the creation, then vera's command and its rejection  # fmt: skip
        # the log itself, read with alice's credentials: her namespace's, whole; no other's
        assert (await as_("alice", "history", "a", "-n", "team-a")).ok().out == history
        other = await as_("alice", "history", "a", "-n", "default")
        assert (other.code, other.out, other.err) == (1, "", (
            'error: forbidden: user "alice" cannot read the history of virtualmachines in the '
            'namespace "default"\n'
        ))  # fmt: skip

        (await cli("auth", "revoke", "alice")).ok()
        cut = await as_("alice", "get", "vms", "-n", "team-a")
        assert (cut.code, cut.err) == (1, (
            f"error: cannot reach NATS at {url}: nats: 'Authorization Violation' (the server "
            "refused these credentials: revoked, expired or not signed by it)\n"
        ))  # fmt: skip
        listed = (await cli("auth", "list")).ok().out.splitlines()
        assert [line.split()[:4] for line in listed] == [
            ["NAME", "ROLE", "NAMESPACES", "STATUS"],
            ["admin", "admin", "*", "Active"],
            ["alice", "edit", "team-a", "Revoked"],
            ["dispatcher", "dispatcher", "*", "Active"],
            ["orchestrator", "admin", "*", "Active"],
            ["vera", "view", "*", "Active"],
        ]
        # The log's hash chains hold over subjects with a node's name or a user's last
        verified = await cli("audit", "verify")
        assert verified.ok().out.splitlines()[-1] == (
            "audit of the log: intact: 9 events in 7 histories; 0 checkpoints through seq 0, "
            "signatures not checked"  # 5 users (alice twice), a in team-a twice, a in default
        )
        # Any NATS client, as examples/publish_command.py drives it: recorded as the admin it is.
        example = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "examples" / "publish_command.py"), cwd=here, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(example.communicate(), 60)
        assert (example.returncode, out.decode().split(" ", 2)[:2]) == (
            0, ["io.virtbus.command.rejected.v1", "admin"],
        ), err  # fmt: skip
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 0


async def test_mutual_tls_asks_every_client_for_a_certificate_too(here: Path) -> None:
    """`virtbus up --mtls`: the stack's own parts get client certificates (the nodes register),
    the CLI run where it ran finds the admin's, a user added with `--client-cert` gets one, and
    a client with credentials but no certificate is told what it lacks."""
    async with virtbus_up("--port", "-1", "--data-dir", ".virtbus", "--nodes", "1", "--mtls",
                          cwd=here) as (proc, url):  # fmt: skip
        env = cli_env(url)
        data = here / ".virtbus"
        ca = str(data / "tls" / "ca.pem")
        assert sorted(p.name for p in (data / "tls" / "clients").iterdir()) == [
            "admin-key.pem", "admin.pem", "dispatcher-key.pem", "dispatcher.pem", "node-a-key.pem",
            "node-a.pem", "orchestrator-key.pem", "orchestrator.pem",
        ]  # fmt: skip
        added = await virtbus("auth", "add-user", "bob", "--role", "view", "--client-cert",
                              env=env, cwd=here)  # fmt: skip
        assert added.ok().out == (
            'user "bob" added (view): credentials in bob.creds\n'
            "client certificate in bob.pem, its key in bob-key.pem\n"
            "to log in by the certificate alone (no --creds): sentinel.creds, beside it\n"
        )
        bob = ["--creds", "bob.creds", "--tls-ca", ca]
        uncertified = await virtbus("get", "vms", *bob, env=env, cwd=here)
        assert (uncertified.code, uncertified.err) == (1, (
            f"error: cannot reach NATS at {url}: the bus asks every client for a certificate its "
            "CA signed (mutual TLS): give --tls-cert FILE and --tls-key FILE, or VIRTBUS_TLS_CERT "
            "and VIRTBUS_TLS_KEY\n"
        ))  # fmt: skip
        certified = await virtbus("get", "nodes", *bob, "--tls-cert", "bob.pem", "--tls-key",
                                  "bob-key.pem", env=env, cwd=here)  # fmt: skip
        assert certified.ok().out.splitlines()[1].split()[:2] == ["node-a", "Ready"]
        # the certificate alone (and the stack's sentinel beside it): bob, as the log has him
        alone = ["--tls-cert", "bob.pem", "--tls-key", "bob-key.pem"]
        me = await virtbus("auth", "whoami", *alone, env=env, cwd=here)
        assert me.ok().out == (
            "ATTRIBUTE    VALUE\nUsername     bob\nRole         view\nNamespaces   *\n"
            "Status       Active\n"
        )
        revoked = await virtbus("auth", "revoke", "bob", env=env, cwd=here)
        assert revoked.ok().out == 'user "bob" revoked\n'
        refused = await virtbus("get", "vms", *alone, env=env, cwd=here)
        assert (refused.code, refused.err) == (1, (
            f"error: cannot reach NATS at {url}: nats: 'Authorization Violation' (the bus refused "
            "this certificate's login: its user is unknown or revoked, the orchestrator's log says "
            "which)\n"
        ))  # fmt: skip
        # a whole replay of the log, on the lean reader's own TLS connection with the admin's
        verified = await virtbus("audit", "verify", env=env, cwd=here)
        assert verified.ok().out.splitlines()[-1].startswith("audit of the log: intact: ")
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 0
