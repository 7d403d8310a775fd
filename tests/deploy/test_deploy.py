"""deploy/ checked offline: every manifest against Kubernetes' OpenAPI schemas, the NATS chart's
values against the chart's keys, what the chart makes of them against the schemas and nats-server,
and the Secrets `virtbus deploy secrets` makes against what the rest mounts.

No cluster runs here (nor helm): kubernetes-validate carries the schemas of each Kubernetes
release and validates strictly (an unknown field is an error); `natschart` rebuilds the chart's
StatefulSet and nats.conf for these values (tests/support/natschart.py says how far it goes).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import nats
import pytest
import yaml
from clirun import virtbus
from cryptography import x509
from natschart import formatted, nats_conf, nats_config, statefulset, unknown_keys
from paths import DEPLOY

from bus.connect import tls_context
from bus.roles import node_permissions
from bus.server import NatsServer, nats_server_binary
from bus.trust import ensure
from virtbus.k8ssecrets import Place, secret_manifests

KUBERNETES = ("1.31", "1.37")  # the oldest release still patched when this was written, the newest
VALUES = DEPLOY / "helm" / "nats-values.yaml"
RELEASE = "virtbus-nats"  # deploy/*.yaml dial virtbus-nats.virtbus.svc


def values() -> dict[str, Any]:
    return dict(yaml.safe_load(VALUES.read_text()))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """The Secrets of a fresh data dir with one node (as `auth add-node` writes its .creds)."""
    root = tmp_path_factory.mktemp("deploy")
    trust = ensure(root / "D")
    node = trust.issue("node-a", permissions=node_permissions("node-a"), out=root / "node-a.creds")
    yield {s["metadata"]["name"]: s for s in secret_manifests(root / "D", place=Place(),
                                                               node_creds=[node])}  # fmt: skip


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            out.append((f"{f.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
            if f.name == "launcher-pod-template.yaml":  # the Pod the worker makes from it
                (body,) = doc["data"].values()
                out.append((f"{f.name}:Pod", yaml.safe_load(body)))
    out.append((f"{VALUES.name}:StatefulSet", statefulset(values(), release=RELEASE)))
    return out


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize(("where", "doc"), _manifests(), ids=[w for w, _ in _manifests()])
def test_every_manifest_validates_against_the_kubernetes_schemas(
    where: str, doc: dict[str, Any], version: str
) -> None:
    assert kubernetes_validate.validate(doc, version, strict=True) == version, where


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_secret_made_validates(made: dict[str, dict[str, Any]], version: str) -> None:
    for name, doc in made.items():
        assert kubernetes_validate.validate(doc, version, strict=True) == version, name


def _broken(change: str) -> dict[str, Any]:
    (doc,) = yaml.safe_load_all((DEPLOY / "orchestrator-deployment.yaml").read_text())
    spec = doc["spec"]
    if change == "misspelt":
        spec["replica"] = spec.pop("replicas")
    elif change == "mistyped":
        spec["replicas"] = "two"
    else:  # an env var with no name
        del spec["template"]["spec"]["containers"][0]["env"][0]["name"]
    return dict(doc)


@pytest.mark.parametrize(
    ("change", "path", "says"),
    [("misspelt", ["spec"], "Additional properties are not allowed ('replica' was unexpected)"),
     ("mistyped", ["spec", "replicas"], "'two' is not of type 'integer', 'null'"),
     ("unnamed", ["spec", "template", "spec", "containers", 0, "env", 0],
      "'name' is a required property")],
)  # fmt: skip
def test_a_broken_manifest_is_refused(change: str, path: list[Any], says: str) -> None:
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        kubernetes_validate.validate(_broken(change), KUBERNETES[-1], strict=True)
    assert (list(err.value.path), err.value.message) == (path, says)


def test_the_nats_values_use_only_the_charts_keys() -> None:
    assert unknown_keys(values()) == []
    bad = values()
    bad["config"]["jetstream"]["filestore"] = bad["config"]["jetstream"].pop("fileStore")
    bad["config"]["cluster"]["replicas"] = "3"
    bad["tlsCA"] = "virtbus-nats-ca"
    assert unknown_keys(bad) == [
        "config.cluster.replicas: the chart takes a int, not str",
        "config.jetstream.filestore: not a key of the chart",
        "tlsCA: a map in the chart, not str",
    ]


def test_the_chart_makes_a_three_server_cluster_that_mounts_the_auth_secret() -> None:
    sts = statefulset(values(), release=RELEASE)
    pod = sts["spec"]["template"]["spec"]
    nats_ctr, reloader = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert sts["spec"]["replicas"] == 3
    assert volumes["virtbus-auth"]["secret"] == {"secretName": "virtbus-nats-auth",
                                                 "defaultMode": 0o400}  # fmt: skip
    for ctr in (nats_ctr, reloader):  # the reloader watches the include: it mounts it too
        assert {"name": "virtbus-auth", "mountPath": "/etc/virtbus-auth",
                "readOnly": True} in ctr["volumeMounts"]  # fmt: skip
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == [
        "virtbus-nats-js", "virtbus-nats-resolver"]  # fmt: skip
    assert {s for v in volumes.values() if (s := v.get("secret", {}).get("secretName"))} == {
        "virtbus-nats-auth",
        "virtbus-nats-ca",
        "virtbus-nats-server-tls",
        "virtbus-nats-route-tls",
    }


def _lay_out(conf: str, made: dict[str, dict[str, Any]], root: Path) -> Path:
    """The pod's files under `root`: nats.conf (its paths moved there) and each Secret's keys
    where the chart and the values mount them."""
    mounts = {"nats-config": None, "virtbus-auth": "virtbus-nats-auth",
              "nats-ca-cert": "virtbus-nats-ca", "nats-certs/nats": "virtbus-nats-server-tls",
              "nats-certs/cluster": "virtbus-nats-route-tls"}  # fmt: skip
    for where, name in mounts.items():
        (root / "etc" / where).mkdir(parents=True, exist_ok=True)
        for key, text in (made[name]["stringData"] if name else {}).items():
            (root / "etc" / where / key).write_text(text)
    conf = conf.replace('"/etc/', f'"{root}/etc/').replace('"/data', f'"{root}/data')
    conf = conf.replace('"/var/run/nats', f'"{root}/run')
    (root / "run").mkdir()
    path = root / "etc" / "nats-config" / "nats.conf"
    path.write_text(conf)
    return path


def _nats_server_t(conf: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVER_NAME": f"{RELEASE}-0"}  # the chart sets it from the pod name
    return subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], env=env, timeout=30,
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_nats_server_accepts_the_config_the_chart_makes(
    made: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    conf = nats_conf(values(), release=RELEASE)
    assert "include ../virtbus-auth/auth.conf;" in conf
    done = _nats_server_t(_lay_out(conf, made, tmp_path))
    assert done.returncode == 0 and "is valid" in done.stderr, done.stderr

    bad = values()
    bad["config"]["jetstream"]["merge"] = {"sync_intervall": "always"}
    done = _nats_server_t(_lay_out(nats_conf(bad, release=RELEASE), made, tmp_path / "bad"))
    assert done.returncode == 1 and 'unknown field "sync_intervall"' in done.stderr, done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pod_files(made: dict[str, dict[str, Any]], root: Path) -> tuple[Path, int]:
    """One server of the chart's config on a free loopback port (its routes left out: their
    hosts do not resolve here), laid out under `root`; the clients' files beside it."""
    conf = nats_config(values(), release=RELEASE)
    del conf["cluster"], conf["http_port"]
    conf |= {"port": _free_port(), "host": "127.0.0.1"}
    creds = made["virtbus-orchestrator"]["stringData"]
    for name, text in creds.items():
        (root / name).write_text(text)
    return _lay_out(formatted(conf), made, root), conf["port"]


async def test_the_secrets_let_the_orchestrator_and_the_dispatcher_in(
    made: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The Secrets' files in the chart's config: the orchestrator and the dispatcher log in with
    theirs over TLS checked against the CA, the account has JetStream, a stranger is refused."""
    conf, port = _pod_files(made, tmp_path)
    server = await asyncio.create_subprocess_exec(
        str(nats_server_binary()), "-c", str(conf), env={**os.environ, "SERVER_NAME": "one"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        said = [line async for line in _until_ready(server.stderr)]
        assert b"Server is ready" in said[-1], b"".join(said).decode()
        url, ca = f"tls://127.0.0.1:{port}", tls_context(tmp_path / "ca.pem")
        for who in ("orchestrator", "dispatcher"):
            nc = await nats.connect(url, user_credentials=str(tmp_path / f"{who}.creds"), tls=ca,
                                    allow_reconnect=False)  # fmt: skip
            try:
                if who == "orchestrator":  # JetStream on, unlimited: the account's claim
                    assert (await nc.jetstream().account_info()).limits.max_streams == -1
            finally:
                await nc.close()
        stranger = ensure(tmp_path / "other").ensure_creds("admin")  # another stack's admin
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, user_credentials=str(stranger), tls=ca, allow_reconnect=False)
    finally:
        server.terminate()
        await server.wait()


async def _until_ready(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The server's log lines up to the one that says it is ready (or its last, if it exits)."""
    async for line in stream:
        yield line
        if b"Server is ready" in line:
            return


def test_the_secrets_hold_what_the_manifests_and_the_values_mount(
    made: dict[str, dict[str, Any]],
) -> None:
    keys = {n: sorted(s["stringData"]) for n, s in made.items()}
    assert keys == {
        "virtbus-nats-auth": ["auth.conf"],
        "virtbus-nats-ca": ["ca.crt"],
        "virtbus-nats-server-tls": ["tls.crt", "tls.key"],
        "virtbus-nats-route-tls": ["tls.crt", "tls.key"],
        "virtbus-orchestrator": ["ca.pem", "dispatcher.creds", "orchestrator.creds"],
        "virtbus-trust": ["account.nk", "ca.pem", "callout.nk", "certlogin.nk", "operator.nk",
                          "system.nk"],
        "virtbus-node-creds": ["ca.pem", "node-a.creds"],
    }  # fmt: skip
    (orch,) = yaml.safe_load_all((DEPLOY / "orchestrator-deployment.yaml").read_text())
    (trust,) = [v for v in orch["spec"]["template"]["spec"]["volumes"] if v["name"] == "trust"]
    assert sorted(i["key"] for i in trust["secret"]["items"]) == keys["virtbus-trust"]
    assert json.loads(made["virtbus-nats-auth"]["stringData"]["auth.conf"]).keys() == {
        "operator", "system_account", "resolver_preload"}  # fmt: skip
    ca = x509.load_pem_x509_certificate(made["virtbus-nats-ca"]["stringData"]["ca.crt"].encode())
    for name, hosts in (("virtbus-nats-server-tls", Place().service_hosts()),
                        ("virtbus-nats-route-tls", Place().route_hosts())):  # fmt: skip
        cert = x509.load_pem_x509_certificate(made[name]["stringData"]["tls.crt"].encode())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        named = [*sans.get_values_for_type(x509.DNSName),
                 *(str(a) for a in sans.get_values_for_type(x509.IPAddress))]  # fmt: skip
        assert sorted(named) == sorted(hosts)
    assert "virtbus-nats-2.virtbus-nats-headless" in Place().route_hosts()  # the chart's route host
    assert "virtbus-nats.virtbus.svc" in Place().service_hosts()  # what deploy/*.yaml dial


async def test_virtbus_deploy_secrets_writes_them_for_its_owner_alone(tmp_path: Path) -> None:
    out = tmp_path / "secrets.yaml"
    (await virtbus("deploy", "secrets", "--data-dir", str(tmp_path / "D"), "-o", str(out))).ok()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(out.read_text())]
    assert names == ["virtbus-nats-auth", "virtbus-nats-ca", "virtbus-nats-server-tls",
                     "virtbus-nats-route-tls", "virtbus-orchestrator", "virtbus-trust"]  # fmt: skip
    (tmp_path / "node-b.creds").write_text("not a creds file")
    bad = await virtbus("deploy", "secrets", "--data-dir", str(tmp_path / "D"),
                        "--node-creds", str(tmp_path / "node-b.creds"))  # fmt: skip
    assert (bad.code, bad.out) == (2, "")
    assert bad.err.startswith("error: ") and "node-b.creds" in bad.err, bad.err


def test_the_values_carry_no_secret() -> None:
    """No key, certificate or JWT in the values: the Secrets hold them."""
    text = VALUES.read_text()
    assert ("-----BEGIN" in text, "eyJ" in text) == (False, False)


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
