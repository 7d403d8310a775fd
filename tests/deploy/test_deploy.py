"""deploy/ checked offline: every manifest against Kubernetes' OpenAPI schemas, the NATS chart's
values against the chart's keys, what the chart makes of them against the schemas and nats-server,
and the Secrets `virtbus deploy secrets` makes against what the rest mounts.

No cluster runs here (nor helm): kubernetes-validate carries the schemas of each Kubernetes
release and validates strictly (an unknown field is an error); `natschart` rebuilds the chart's
StatefulSet and nats.conf for these values (tests/support/natschart.py says how far it goes).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from clirun import virtbus
from cryptography import x509
from natschart import RELEASE, VALUES, lay_out, nats_conf, statefulset, unknown_keys, values
from paths import DEPLOY
from podfiles import Made

from bus.server import nats_server_binary
from virtbus.k8ssecrets import Place

KUBERNETES = ("1.31", "1.37")  # the oldest release still patched when this was written, the newest


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
def test_every_secret_made_validates(made: Made, version: str) -> None:
    for name, doc in made.secrets.items():
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


def _nats_server_t(conf: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVER_NAME": f"{RELEASE}-0"}  # the chart sets it from the pod name
    return subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], env=env, timeout=30,
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_nats_server_accepts_the_config_the_chart_makes(made: Made, tmp_path: Path) -> None:
    conf = nats_conf(values(), release=RELEASE)
    assert "include ../virtbus-auth/auth.conf;" in conf
    done = _nats_server_t(lay_out(conf, made.all_files(), tmp_path))
    assert done.returncode == 0 and "is valid" in done.stderr, done.stderr

    bad = values()
    bad["config"]["jetstream"]["merge"] = {"sync_intervall": "always"}
    done = _nats_server_t(
        lay_out(nats_conf(bad, release=RELEASE), made.all_files(), tmp_path / "bad")
    )
    assert done.returncode == 1 and 'unknown field "sync_intervall"' in done.stderr, done.stderr


def test_the_secrets_hold_what_the_manifests_and_the_values_mount(
    made: Made,
) -> None:
    keys = {n: sorted(made.files(n)) for n in made.secrets}
    assert keys == {
        "virtbus-nats-auth": ["auth.conf"],
        "virtbus-nats-ca": ["ca.crt"],
        "virtbus-nats-server-tls": ["tls.crt", "tls.key"],
        "virtbus-nats-route-tls": ["tls.crt", "tls.key"],
        "virtbus-orchestrator": ["ca.pem", "dispatcher.creds", "orchestrator.creds"],
        "virtbus-trust": ["account.nk", "ca.pem", "callout.nk", "certlogin.nk",
                          "identities.json", "operator.nk", "system.nk"],
        "virtbus-node-creds": ["ca.pem", "node-a.creds"],
    }  # fmt: skip
    (orch,) = yaml.safe_load_all((DEPLOY / "orchestrator-deployment.yaml").read_text())
    (trust,) = [v for v in orch["spec"]["template"]["spec"]["volumes"] if v["name"] == "trust"]
    assert sorted(i["key"] for i in trust["secret"]["items"]) == keys["virtbus-trust"]
    assert json.loads(made.files("virtbus-nats-auth")["auth.conf"]).keys() == {
        "operator", "system_account", "resolver_preload"}  # fmt: skip
    ca = x509.load_pem_x509_certificate(made.files("virtbus-nats-ca")["ca.crt"].encode())
    for name, hosts in (("virtbus-nats-server-tls", Place().service_hosts()),
                        ("virtbus-nats-route-tls", Place().route_hosts())):  # fmt: skip
        cert = x509.load_pem_x509_certificate(made.files(name)["tls.crt"].encode())
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
