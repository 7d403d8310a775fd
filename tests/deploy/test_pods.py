"""The deployment's pods run here, on loopback, from what deploy/ and the Secrets say.

One nats-server of the config the NATS chart makes of deploy/helm/nats-values.yaml (its routes
left out: their hosts resolve only in a cluster), with the Secrets' files where the chart mounts
them; then the orchestrator as deploy/orchestrator-deployment.yaml runs it (its command, its
environment, its Secrets where it mounts them). What a cluster adds (scheduling, the Service, the
other two servers) is not here.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import nats
import pytest
import yaml
from clirun import virtbus
from natschart import RELEASE, formatted, lay_out, nats_config, values
from paths import DEPLOY
from podfiles import Made, mount_secrets, rooted
from waits import api_ready

from bus.cluster import free_ports
from bus.connect import connect, tls_context
from bus.server import NatsServer, nats_server_binary
from bus.trust import ensure


def _free_port() -> int:
    return free_ports(1)[0]


def _nats_pod(made: Made, root: Path) -> tuple[Path, int]:
    """The nats pod's files under `root` (one server on a free loopback port) and that port."""
    conf = nats_config(values(), release=RELEASE)
    del conf["cluster"], conf["http_port"]
    conf |= {"port": _free_port(), "host": "127.0.0.1"}
    return lay_out(formatted(conf), made.all_files(), root), conf["port"]


async def _until_ready(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The server's log lines up to the one that says it is ready (or its last, if it exits)."""
    async for line in stream:
        yield line
        if b"Server is ready" in line:
            return


@pytest.fixture
async def nats_pod(made: Made, tmp_path: Path) -> AsyncIterator[str]:
    conf, port = _nats_pod(made, tmp_path / "nats")
    server = await asyncio.create_subprocess_exec(
        str(nats_server_binary()), "-c", str(conf), env={**os.environ, "SERVER_NAME": "one"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        said = [line async for line in _until_ready(server.stderr)]
        assert b"Server is ready" in said[-1], b"".join(said).decode()
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        await server.wait()


async def test_the_secrets_let_the_parts_in_and_keep_strangers_out(
    made: Made, nats_pod: str, tmp_path: Path
) -> None:
    """The orchestrator, the dispatcher and a node log in with theirs over TLS checked against
    the CA, the account has JetStream, another stack's admin is refused."""
    for name, text in (
        made.files("virtbus-orchestrator") | made.files("virtbus-node-creds")
    ).items():
        (tmp_path / name).write_text(text)
    ca = tls_context(tmp_path / "ca.pem")
    for who in ("orchestrator", "dispatcher", "node-a"):
        nc = await nats.connect(nats_pod, user_credentials=str(tmp_path / f"{who}.creds"), tls=ca,
                                allow_reconnect=False)  # fmt: skip
        try:
            if who == "orchestrator":  # JetStream on, unlimited: the account's claim
                assert (await nc.jetstream().account_info()).limits.max_streams == -1
        finally:
            await nc.close()
    stranger = ensure(tmp_path / "other").ensure_creds("admin")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_pod, user_credentials=str(stranger), tls=ca, allow_reconnect=False)


def _orchestrator_pod(made: Made, root: Path, url: str) -> tuple[list[str], dict[str, str]]:
    """The Deployment's container as a command and environment here: its Secrets mounted under
    `root`, its paths moved there, the bus at `url`, one copy of each stream (one server)."""
    (doc,) = yaml.safe_load_all((DEPLOY / "orchestrator-deployment.yaml").read_text())
    pod = doc["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    mount_secrets(pod, ctr, made.all_files(), root)
    env = {e["name"]: rooted(e["value"], root) for e in ctr["env"]}
    assert env.pop("VIRTBUS_NATS_URL") == "nats://virtbus-nats.virtbus.svc:4222"
    args = [rooted(a, root) for a in ctr["args"]]
    args[args.index("--replicas") + 1] = "1"
    python, *command = ctr["command"]
    assert python == "python"
    return [sys.executable, *command, *args], {**os.environ, **env, "VIRTBUS_NATS_URL": url}


async def test_the_orchestrator_pod_records_the_stacks_users_so_the_admin_adds_a_node(
    made: Made, nats_pod: str, tmp_path: Path
) -> None:
    """A fresh bus's log knows nobody, and the intake refuses a caller it does not know: the pod
    records the stack's own users from the trust Secret (as `virtbus up` does), so the admin's
    `auth add-node` goes through."""
    command, env = _orchestrator_pod(made, tmp_path / "pod", nats_pod)
    log = tmp_path / "orchestrator.log"
    with _opened(log) as out:
        proc = await asyncio.create_subprocess_exec(
            *command, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
    d = made.data_dir
    admin = {"VIRTBUS_NATS_URL": nats_pod, "VIRTBUS_CREDS": str(d / "creds" / "admin.creds"),
             "VIRTBUS_TLS_CA": str(d / "tls" / "ca.pem")}  # fmt: skip
    try:
        nc = await connect(nats_pod, creds=d / "creds" / "admin.creds", tls_ca=d / "tls" / "ca.pem")
        try:
            ready = asyncio.create_task(api_ready(nc), name="orchestrator-pod-ready")
            died = asyncio.create_task(proc.wait(), name="orchestrator-pod-exit")
            await asyncio.wait({ready, died}, return_when=asyncio.FIRST_COMPLETED)
            for task in (ready, died):
                task.cancel()
            assert proc.returncode is None, _tail(log)
            await ready
        finally:
            await nc.close()
        out = tmp_path / "worker-1.creds"
        added = await virtbus("auth", "add-node", "worker-1", "-o", str(out),
                              env={**os.environ, **admin})  # fmt: skip
        added.ok()
        listed = await virtbus("auth", "list", "-o", "json", env={**os.environ, **admin})
        roles = {u["name"]: u["role"] for u in listed.json()}
        assert roles == {"admin": "admin", "orchestrator": "admin", "dispatcher": "dispatcher",
                         "worker-1": "node"}  # fmt: skip
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def _opened(path: Path) -> BinaryIO:
    return path.open("wb")


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-30:])


def test_the_orchestrator_makes_a_copy_of_the_log_on_every_nats_server() -> None:
    (orch,) = yaml.safe_load_all((DEPLOY / "orchestrator-deployment.yaml").read_text())
    args = orch["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--replicas") + 1] == str(values()["config"]["cluster"]["replicas"])


async def test_python_m_orchestrator_provisions_the_replicas_it_is_given(tmp_path: Path) -> None:
    """On a single server three copies cannot be kept: the orchestrator says so and stops (the
    count reached the provisioning, where a three-server cluster takes it)."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "--server", server.url, "--replicas", "3",
            "--data-dir", str(tmp_path / "o"), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode != 0
    assert "replicas: 3 copies of each stream asked, but the bus cannot hold them" in err.decode()
