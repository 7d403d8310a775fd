"""Small KubeVirt manifests for end-to-end tests: a VM (or a VMI) and a replica set that run on
libvirt's test driver with nothing to provide on the node (no disks)."""

from __future__ import annotations

from typing import Any


def vm(name: str, *, labels: dict[str, str] | None = None, strategy: str = "Halted",
       kind: str = "VirtualMachine") -> dict[str, Any]:  # fmt: skip
    """A small VM (or VMI) without disks: it runs on the test driver with nothing to provide."""
    vmi = {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}}
    meta: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
    spec: dict[str, Any] = {"runStrategy": strategy, "template": {"spec": vmi}}
    if kind == "VirtualMachineInstance":
        spec = vmi
    return {"apiVersion": "kubevirt.io/v1", "kind": kind, "metadata": meta, "spec": spec}


def replica_set(name: str, replicas: int = 1) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": name}}, "spec": vm("x")["spec"]["template"]["spec"]}
    spec = {"replicas": replicas, "template": template}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip
