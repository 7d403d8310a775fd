"""What the official NATS Helm chart makes of deploy/helm/nats-values.yaml, for tests to check.

There is no helm binary here, nor a cluster. The chart ships no values schema, so its keys are
checked against the list taken from its values.yaml (nats_chart_keys.txt), and the two things the
values feed are rebuilt as the chart's templates (2.14.2: files/config/*.yaml,
files/stateful-set/*.yaml, templates/_helpers.tpl) build them, for the options these values use
only: the StatefulSet (checked against Kubernetes' schemas) and nats.conf (checked by nats-server
itself). A reading of the chart, not the chart: an option the values start to use must be added
here, and an unknown one is refused rather than guessed.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from paths import DEPLOY
from podfiles import mount_secrets, rooted

CHART_KEYS = Path(__file__).with_name("nats_chart_keys.txt")
CHART_VERSION = "2.14.2"
VALUES = DEPLOY / "helm" / "nats-values.yaml"
RELEASE = "virtbus-nats"  # deploy/*.yaml dial virtbus-nats.virtbus.svc
_KINDS = {"map": dict, "list": list, "bool": bool, "int": int, "str": str}


def values() -> dict[str, Any]:
    """deploy/helm/nats-values.yaml, a fresh copy each time (tests break it)."""
    return dict(yaml.safe_load(VALUES.read_text()))


def chart_keys() -> dict[str, str]:
    rows = (line.split() for line in CHART_KEYS.read_text().splitlines() if line[:1] != "#")
    return {path: kind for path, kind in rows}


def unknown_keys(values: dict[str, Any]) -> list[str]:
    """Each key of `values` the chart does not have, or whose value is not of its kind."""
    keys, found = chart_keys(), []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            kind = keys.get(path)
            if kind is None and any(k.startswith(path + ".") for k in keys):
                if isinstance(value, dict):
                    walk(value, path + ".")
                else:
                    found.append(f"{path}: a map in the chart, not {type(value).__name__}")
            elif kind is None:
                found.append(f"{path}: not a key of the chart")
            elif kind != "any" and not _of_kind(value, kind):
                found.append(f"{path}: the chart takes a {kind}, not {type(value).__name__}")

    walk(values, "")
    return found


def _of_kind(value: Any, kind: str) -> bool:
    if kind == "int" and isinstance(value, bool):  # YAML's true is no replica count
        return False
    return isinstance(value, _KINDS[kind])


def merged(base: Any, over: Any) -> Any:
    """Helm's mergeOverwrite: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merged(base.get(k), v)
        return out
    return copy.deepcopy(over)


def patched(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """A JSON Patch of `add` operations (all these values use); any other is refused."""
    doc = copy.deepcopy(doc)
    for op in ops:
        if op.get("op") != "add":
            raise ValueError(f"patch: only `add` is read here, not {op.get('op')!r}")
        *parents, last = op["path"].lstrip("/").split("/")
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), op["value"])
        else:
            target[last] = op["value"]
    return doc


def _merge_patch(doc: dict[str, Any], section: dict[str, Any]) -> Any:
    return patched(merged(doc, section.get("merge") or {}), section.get("patch") or [])


def _tls(values: dict[str, Any], protocol: str) -> dict[str, Any]:
    block = values["config"][protocol]["tls"]
    base = {"cert_file": f"/etc/nats-certs/{protocol}/tls.crt",
            "key_file": f"/etc/nats-certs/{protocol}/tls.key"}  # fmt: skip
    ca = values.get("tlsCA", {})
    if ca.get("enabled") and ca.get("secretName"):
        base["ca_file"] = f"/etc/nats-ca-cert/{ca.get('key', 'ca.crt')}"
    return _merge_patch(base, block)


def nats_config(values: dict[str, Any], *, release: str) -> dict[str, Any]:
    """The config the chart's files/config/config.yaml builds, before it is formatted."""
    cfg = values["config"]
    conf: dict[str, Any] = {
        "server_name": "<< $SERVER_NAME >>", "lame_duck_grace_period": "10s",
        "lame_duck_duration": "30s", "pid_file": "/var/run/nats/nats.pid",
        "port": cfg["nats"]["port"], "tls": _tls(values, "nats"), "http_port": 8222,
    }  # fmt: skip
    cl = cfg["cluster"]
    routes = [f"tls://{release}-{i}.{release}-headless:6222" for i in range(cl["replicas"])]
    conf["cluster"] = _merge_patch(
        {"name": release, "port": 6222, "no_advertise": True, "routes": routes,
         "tls": _tls(values, "cluster")}, cl)  # fmt: skip
    fs, mem = cfg["jetstream"]["fileStore"], cfg["jetstream"].get("memoryStore", {})
    memory = f"<< {mem['maxSize']} >>" if mem.get("enabled") else 0
    conf["jetstream"] = _merge_patch(
        {"max_memory_store": memory, "store_dir": fs["dir"],
         "max_file_store": f"<< {fs['pvc']['size']} >>"}, cfg["jetstream"])  # fmt: skip
    conf["resolver"] = _merge_patch({"dir": cfg["resolver"]["dir"]}, cfg["resolver"])
    return _merge_patch(conf, cfg)


def formatted(conf: dict[str, Any]) -> str:
    """A config as the chart's ConfigMap holds it: sorted JSON, `$include` keys as include
    directives, `<< x >>` unquoted (nats.formatConfig)."""
    text = json.dumps(conf, indent=2, sort_keys=True)
    text = re.sub(r'".*\$include": "(.*)",?', r"include \1;", text)
    return re.sub(r'"<<\s+(.*?)\s+>>"', r"\1", text)


def nats_conf(values: dict[str, Any], *, release: str) -> str:
    return formatted(nats_config(values, release=release))


def _container(values: dict[str, Any], *, release: str) -> dict[str, Any]:
    cfg, image = values["config"], values.get("container", {}).get("image", {})
    mounts = [{"name": "config", "mountPath": "/etc/nats-config"},
              {"name": "pid", "mountPath": "/var/run/nats"},
              {"name": f"{release}-js", "mountPath": cfg["jetstream"]["fileStore"]["dir"]},
              {"name": f"{release}-resolver", "mountPath": cfg["resolver"]["dir"]},
              {"name": "tls-ca", "mountPath": "/etc/nats-ca-cert"},
              {"name": "nats-tls", "mountPath": "/etc/nats-certs/nats"},
              {"name": "cluster-tls", "mountPath": "/etc/nats-certs/cluster"}]  # fmt: skip
    probe = {"httpGet": {"path": "/healthz", "port": "monitor"}, "initialDelaySeconds": 10,
             "timeoutSeconds": 5, "periodSeconds": 10, "successThreshold": 1}  # fmt: skip
    nats = {
        "name": "nats", "image": f"nats:{image.get('tag', CHART_VERSION + '-alpine')}",
        "ports": [{"name": "nats", "containerPort": cfg["nats"]["port"]},
                  {"name": "cluster", "containerPort": 6222},
                  {"name": "monitor", "containerPort": 8222}],
        "args": ["--config", "/etc/nats-config/nats.conf"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "SERVER_NAME", "value": "$(POD_NAME)"}],
        "lifecycle": {"preStop": {"exec": {"command": ["nats-server",
                                                       "-sl=ldm=/var/run/nats/nats.pid"]}}},
        "startupProbe": {**probe, "failureThreshold": 90},
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 3},
        "volumeMounts": mounts, "resources": {},
    }  # fmt: skip
    return _merge_patch(nats, values.get("container", {}))


def statefulset(values: dict[str, Any], *, release: str) -> dict[str, Any]:
    """The StatefulSet the chart's files/stateful-set/*.yaml build (nats and reloader)."""
    cfg = values["config"]
    labels = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": release,
              "app.kubernetes.io/component": "nats"}  # fmt: skip
    nats = _container(values, release=release)
    reloader = {
        "name": "reloader", "image": "natsio/nats-server-config-reloader:0.23.0",
        "args": ["-pid", "/var/run/nats/nats.pid", "-config", "/etc/nats-config/nats.conf"],
        "volumeMounts": [{"name": "pid", "mountPath": "/var/run/nats"},
                         *(m for m in nats["volumeMounts"] if m["mountPath"].startswith("/etc/"))],
    }  # fmt: skip
    secrets = [{"name": "tls-ca", "secret": {"secretName": values["tlsCA"]["secretName"]}}] + [
        {"name": f"{p}-tls", "secret": {"secretName": cfg[p]["tls"]["secretName"]}}
        for p in ("nats", "cluster")
    ]
    spreads = values.get("podTemplate", {}).get("topologySpreadConstraints", {})
    spread = [{"topologyKey": k, "labelSelector": {"matchLabels": labels}, **v}
              for k, v in spreads.items()]  # fmt: skip
    pod = {
        "metadata": {"labels": labels},
        "spec": {"containers": [nats, reloader], "enableServiceLinks": False,
                 "shareProcessNamespace": True,
                 "volumes": [{"name": "config", "configMap": {"name": f"{release}-config"}},
                             {"name": "pid", "emptyDir": {}}, *secrets],
                 "topologySpreadConstraints": spread, "terminationGracePeriodSeconds": 60},
    }  # fmt: skip

    def claim(name: str, size: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": size}}}}  # fmt: skip

    js, resolver = cfg["jetstream"]["fileStore"]["pvc"], cfg["resolver"]["pvc"]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": release, "labels": labels},
        "spec": {"selector": {"matchLabels": labels}, "replicas": cfg["cluster"]["replicas"],
                 "serviceName": f"{release}-headless", "podManagementPolicy": "Parallel",
                 "template": _merge_patch(pod, values.get("podTemplate", {})),
                 "volumeClaimTemplates": [
                     _merge_patch(claim(f"{release}-js", js["size"]), js),
                     _merge_patch(claim(f"{release}-resolver", resolver["size"]), resolver)]},
    }  # fmt: skip


def lay_out(conf: str, secrets: dict[str, dict[str, str]], root: Path) -> Path:
    """The nats pod's files under `root` instead of `/`: each of `secrets` (name -> key -> text)
    where the StatefulSet mounts it, the data dirs, and `conf` as nats.conf with its paths moved
    there; the config's path, to run nats-server on."""
    pod = statefulset(values(), release=RELEASE)["spec"]["template"]["spec"]
    mount_secrets(pod, pod["containers"][0], secrets, root)
    for path in ("/data", "/var/run/nats"):
        Path(rooted(path, root)).mkdir(parents=True)
    for path in ("/etc/", "/data", "/var/run/nats"):
        conf = conf.replace(f'"{path}', f'"{rooted(path, root)}')
    out = root / "etc" / "nats-config" / "nats.conf"
    out.parent.mkdir(parents=True)
    out.write_text(conf)
    return out
