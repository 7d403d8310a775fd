"""A pod's files on this machine, as the kubelet would lay them out: each Secret volume a
container mounts, under a root directory instead of `/`, so a process of the pod's command can
run here on the files the Secrets hold (tests/deploy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Made:
    """A fresh data dir (`data_dir`) and its Secrets by name, with one node's (`node-a`, as
    `auth add-node` writes its .creds)."""

    data_dir: Path
    secrets: dict[str, dict[str, Any]]

    def files(self, name: str) -> dict[str, str]:
        return dict(self.secrets[name]["stringData"])

    def all_files(self) -> dict[str, dict[str, str]]:
        return {name: self.files(name) for name in self.secrets}


def mount_secrets(
    pod: dict[str, Any], container: dict[str, Any], secrets: dict[str, dict[str, str]], root: Path
) -> None:
    """Write each Secret `container` mounts (by `pod`'s volumes; `secrets`: name -> key -> text)
    at its mount path under `root`, its `items` only where it names some."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        secret = volumes.get(mount["name"], {}).get("secret")  # else a claim or the like
        if secret is None:
            continue
        files = secrets[secret["secretName"]]
        items = secret.get("items") or [{"key": k, "path": k} for k in files]
        for item in items:
            path = root / mount["mountPath"].lstrip("/") / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[item["key"]])


def rooted(value: str, root: Path) -> str:
    """An absolute path of the pod's, moved under `root` (anything else as it is)."""
    return f"{root}{value}" if value.startswith("/") else value
