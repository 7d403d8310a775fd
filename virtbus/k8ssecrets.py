"""`virtbus deploy secrets`: a stack's trust root (`virtbus up --data-dir D`) as Kubernetes Secrets.

On a cluster the bus is the official NATS Helm chart (deploy/helm/nats-values.yaml) and virtbus's
parts are deploy/*.yaml; none of them carries a key or a certificate. This turns the data dir's
keys, CA and `.creds` into the Secrets those name, so the servers trust what `virtbus up`'s would:

    virtbus-nats-auth        auth.conf: the operator JWT, the system account, every account's JWT
                             (`Trust.server_config`'s, the chart includes it), revocations kept
    virtbus-nats-ca          ca.crt: the stack's CA (the chart's `tlsCA`)
    virtbus-nats-server-tls  the servers' certificate for the client Service's names
    virtbus-nats-route-tls   the route certificate (server and client auth) for each pod's name
    virtbus-orchestrator     orchestrator.creds, dispatcher.creds, ca.pem (deploy/*.yaml)
    virtbus-trust            the signing keys the orchestrator mints users with, ca.pem, and
                             identities.json: the admin's, its own and the dispatcher's roles and
                             JWTs, which it records in the log on start as `virtbus up` does (the
                             admin's commands are refused until the log knows the admin)
    virtbus-node-creds       ca.pem and one `<node>.creds` per node (`virtbus auth add-node`)

The server certificates are issued anew by the stack's CA on each run: the data dir's own
`server.pem` names only 127.0.0.1 and localhost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bus import pki
from bus.credentials import read_creds
from bus.roles import component_permissions, component_role
from bus.trust import IDENTITIES_FILE, Trust, ensure
from events.errors import ValidationError

PART_OF = {"app.kubernetes.io/part-of": "virtbus"}
TRUST_KEYS = ("operator", "account", "system", "certlogin", "callout")  # what --trust-dir loads
COMPONENTS = ("admin", "orchestrator", "dispatcher")  # `virtbus up` makes the same ones


@dataclass(frozen=True)
class Place:
    """Where the chart's release runs: its name and namespace make every DNS name a certificate
    must hold (the Service `<release>`, the pods `<release>-N.<release>-headless`)."""

    release: str = "virtbus-nats"
    namespace: str = "virtbus"
    cluster_domain: str = "cluster.local"
    replicas: int = 3

    def _qualified(self, host: str) -> list[str]:
        ns = self.namespace
        return [host, f"{host}.{ns}", f"{host}.{ns}.svc", f"{host}.{ns}.svc.{self.cluster_domain}"]

    def service_hosts(self) -> tuple[str, ...]:
        """The client Service's names, and localhost for `kubectl port-forward`."""
        return (*self._qualified(self.release), "localhost", "127.0.0.1")

    def route_hosts(self) -> tuple[str, ...]:
        """Each pod's name in the headless Service, as the chart's route URLs give them."""
        headless = f"{self.release}-headless"
        return tuple(h for i in range(self.replicas)
                     for h in self._qualified(f"{self.release}-{i}.{headless}"))  # fmt: skip


def secret(
    name: str, namespace: str, files: dict[str, str], *, tls: bool = False
) -> dict[str, Any]:
    """A Secret holding `files` (key -> text), labelled as virtbus's."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(PART_OF)},
        "type": "kubernetes.io/tls" if tls else "Opaque",
        "stringData": files,
    }


def nats_auth_conf(trust: Trust) -> str:
    """The operator-mode part of the servers' config, as `virtbus up` writes it for its own: the
    chart includes it (`config.merge`); JSON is nats-server's config syntax too."""
    conf = trust.server_config()
    return json.dumps({k: conf[k] for k in ("operator", "system_account", "resolver_preload")},
                      indent=2) + "\n"  # fmt: skip


def _leaf(trust: Trust, name: str, hosts: tuple[str, ...], *, route: bool) -> dict[str, str]:
    tls = trust.root / "tls"
    ca = pki.Issued((tls / "ca.pem").read_bytes(), (tls / "ca-key.pem").read_bytes())
    leaf = pki.issue(ca, name, hosts=hosts, route=route)
    return {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode()}


def _node_files(paths: list[Path]) -> dict[str, str]:
    files: dict[str, str] = {}
    for path in paths:
        if path.suffix != ".creds":
            raise ValidationError(
                f"{path}: a node's file is named <node>.creds", field="node-creds"
            )
        read_creds(path)  # a damaged file is said here, not by a handler that cannot log in
        if path.name in files:
            raise ValidationError(f"{path.name} given twice", field="node-creds")
        files[path.name] = path.read_text()
    return files


def secret_manifests(
    data_dir: Path, *, place: Place, node_creds: list[Path] | None = None
) -> list[dict[str, Any]]:
    """Every Secret the chart's values and deploy/*.yaml name, from the trust root in `data_dir`
    (made as `virtbus up` makes it when missing, the same components' `.creds` too)."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ValidationError(f"{data_dir} is not a directory", field="data-dir")
    trust = ensure(data_dir)
    for name in COMPONENTS:
        trust.ensure_creds(name, permissions=component_permissions(name))
    ns, ca = place.namespace, trust.ca_file.read_text()
    nodes = _node_files(node_creds or [])
    out = [
        secret("virtbus-nats-auth", ns, {"auth.conf": nats_auth_conf(trust)}),
        secret("virtbus-nats-ca", ns, {"ca.crt": ca}),
        secret("virtbus-nats-server-tls", ns,
               _leaf(trust, "nats-server", place.service_hosts(), route=False), tls=True),
        secret("virtbus-nats-route-tls", ns,
               _leaf(trust, "nats-route", place.route_hosts(), route=True), tls=True),
        secret("virtbus-orchestrator", ns, {
            "orchestrator.creds": trust.creds_file("orchestrator").read_text(),
            "dispatcher.creds": trust.creds_file("dispatcher").read_text(), "ca.pem": ca}),
        secret("virtbus-trust", ns, {
            **{f"{k}.nk": (trust.root / "keys" / f"{k}.nk").read_text() for k in TRUST_KEYS},
            "ca.pem": ca,
            IDENTITIES_FILE: trust.identities_json({n: component_role(n) for n in COMPONENTS})}),
    ]  # fmt: skip
    if nodes:
        out.append(secret("virtbus-node-creds", ns, {"ca.pem": ca, **nodes}))
    return out


class _Dumper(yaml.SafeDumper):
    """PEM blocks and JSON as literal blocks: the Secrets stay readable (and diffable)."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def dump(manifests: list[dict[str, Any]]) -> str:
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False)
