"""The `kubernetes` pod driver: one virt-launcher pod per running VM, like KubeVirt's virt-handler.

`KubernetesPods` is a `PodDriver` (`workers/pods.py`), like `ProcessPods`. Each pod is named by
the worker (`virt-launcher-<vm>-<uid5>`), lives in the VM's namespace, carries KubeVirt's labels
plus the node, is pinned to the node with `spec.nodeName` (no scheduler round trip: the VM is
already placed) and is built from a launcher pod template (`deploy/launcher-pod-template.yaml`).

One named task watches this node's launcher pods. A pod the driver did not delete that ends
(phase Failed or Succeeded) or disappears is reported once through `on_exit(pod, code)` with the
launcher container's exit code (-1 when the status has none), which the node's `Launchers`
turns into `LauncherFailed`. Every phase change it sees goes to the optional `on_phase(pod, phase)`.
`close()` stops the watch but leaves the pods: like KubeVirt, a restarting node agent must not
take its VMs' pods down with it. The next worker `adopt()`s the launchers of the VMs it keeps and
deletes the rest.

The watch lists first, then watches from the list's resourceVersion, and lists again after any
disconnect so a deletion it missed meanwhile is still reported.

Gaps of kmock 0.8 (the emulator the tests run against) this module works around, and how:

- Label and field selectors are ignored: every pod is checked client-side for our labels and
  `spec.nodeName` before it counts.
- Pods get no `status.phase` on create (there is no kubelet or admission): no phase reads as
  "Pending", Kubernetes' initial phase.
- No uid, resourceVersion or creationTimestamp is assigned: a pod is known by namespace and name
  only, and the watch passes on whatever resourceVersion the list gave (kmock answers "...").
- Every watch replays all objects as ADDED (as a real server does only without a resourceVersion):
  ADDED is handled like MODIFIED, so a replay changes nothing.
- PUT answers 404: nothing here replaces an object, only create, delete and (in tests) patch.
- `watch=True` is sent as `watch=True` by kubernetes-asyncio while kmock wants `watch=true`: the
  real API server accepts both, so the fix is in the test fixture, not here.
- Listing an undeclared kind is 404 until an object of it exists: the test fixture declares
  `v1/pods`; here a 404 on the list is retried like any other API error.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from events.errors import VirtbusError
from workers.pods import ExitHandler

log = logging.getLogger("virtbus.k8spods")
PhaseHandler = Callable[[str, str], Awaitable[None]]
DEFAULT_IMAGE = "virtbus/virt-launcher:latest"
LAUNCHER_CONTAINER = "compute"  # KubeVirt's name for the container that runs the VM
TERMINAL = ("Failed", "Succeeded")
WATCH_TIMEOUT_S = 300  # the server ends the watch then; we list and watch again
SYNC_TIMEOUT_S = 30.0
POD_PREFIX = "virt-launcher-"


class PodApiError(VirtbusError):
    """The Kubernetes API refused a pod operation or did not answer; it may work later."""

    retryable = True


def launcher_template(image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The built-in launcher pod: the `process` launcher in a container, named via downward API."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {}, "annotations": {}},
        "spec": {
            "restartPolicy": "Never",  # a dead launcher is the worker's to report, not to restart
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": LAUNCHER_CONTAINER,
                "image": image,
                "command": ["python", "-m", "workers.launcher", "--pod", "$(POD_NAME)"],
                "env": [{"name": "POD_NAME",
                         "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    }  # fmt: skip


def load_template(path: Path) -> dict[str, Any]:
    """A launcher pod template from a file: a Pod manifest, or the ConfigMap in `deploy/`."""
    doc = yaml.safe_load(path.read_text())
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        (text,) = doc["data"].values()  # the ConfigMap carries one file: the pod
        doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or doc.get("kind") != "Pod":
        raise ValueError(f"{path}: not a Pod template")
    return doc


def vm_of_pod(pod: str) -> str:
    """`virt-launcher-<vm>-<uid5>` -> `<vm>` (the worker names pods with `pod_name`)."""
    return pod.removeprefix(POD_PREFIX).rpartition("-")[0] or pod


def exit_code(obj: Mapping[str, Any]) -> int:
    """The launcher container's exit code from a pod status, else any container's, else -1."""
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    for st in sorted(statuses, key=lambda s: s.get("name") != LAUNCHER_CONTAINER):
        for state in (st.get("state"), st.get("lastState")):
            terminated = (state or {}).get("terminated") or {}
            if "exitCode" in terminated:
                return int(terminated["exitCode"])
    return -1


class KubernetesPods:
    def __init__(
        self, on_exit: ExitHandler, *, node: str, kube_url: str | None = None,
        image: str | None = None, template: Mapping[str, Any] | None = None,
        on_phase: PhaseHandler | None = None,
    ) -> None:  # fmt: skip
        self.on_exit = on_exit
        self.on_phase = on_phase
        self.node = node
        self.kube_url = kube_url
        if template is None and (path := os.environ.get("VIRTBUS_LAUNCHER_TEMPLATE")):
            template = load_template(Path(path))
        self.template = copy.deepcopy(dict(template or launcher_template()))
        self.image = image or os.environ.get("VIRTBUS_LAUNCHER_IMAGE")
        self._api: client.ApiClient | None = None
        self._pods: dict[str, str] = {}  # our live pods: name -> namespace
        self._born: dict[str, float] = {}  # when we created each, to judge a list taken before
        self._phases: dict[str, str] = {}
        self._reported: set[str] = set()  # ended and reported once; still ours to delete
        self._leaving: set[str] = set()  # deleted by us: never reported
        self._watcher: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    # --- the pod driver interface ----------------------------------------------------------------

    def running(self) -> set[str]:
        return {p for p in self._pods if p not in self._reported}

    async def create(
        self, pod: str, *, namespace: str = "default", owner: Mapping[str, Any] | None = None
    ) -> str:
        if pod in self.running():
            return pod  # idempotent: a redelivered start finds its launcher
        await self._ensure_watching()
        core = await self._core()
        body = self.manifest(pod, namespace=namespace, owner=owner)
        self._leaving.discard(pod)
        self._reported.discard(pod)
        self._phases.pop(pod, None)
        self._pods[pod] = namespace
        self._born[pod] = time.monotonic()
        try:
            try:
                await core.create_namespaced_pod(namespace, body)
            except ApiException as err:
                if err.status != 409:
                    raise
                await self._adopt_or_replace(core, pod, namespace, body)
        except (ApiException, aiohttp.ClientError, OSError) as err:
            self._pods.pop(pod, None)
            raise PodApiError(f"creating pod {namespace}/{pod}: {_why(err)}") from err
        return pod

    async def delete(self, pod: str) -> None:
        namespace = self._pods.pop(pod, None)
        self._reported.discard(pod)
        self._born.pop(pod, None)
        if namespace is None:
            return
        self._leaving.add(pod)  # its DELETED (or Failed on the way out) is ours, not news
        core = await self._core()
        try:
            await core.delete_namespaced_pod(pod, namespace)
        except ApiException as err:
            if err.status != 404:
                raise PodApiError(f"deleting pod {namespace}/{pod}: {_why(err)}") from err
        except (aiohttp.ClientError, OSError) as err:
            raise PodApiError(f"deleting pod {namespace}/{pod}: {_why(err)}") from err

    async def adopt(self, wanted: Mapping[str, str]) -> set[str]:
        """After a restart of the worker: take back the live launchers of `wanted` (pod ->
        namespace), delete every other launcher pod of this node, and return the wanted pods
        that are gone or ended (their VMs lost their launcher while no worker watched)."""
        core = await self._core()
        try:
            resp = await core.list_pod_for_all_namespaces(
                label_selector=f"kubevirt.io=virt-launcher,virtbus.io/node={self.node}",
                field_selector=f"spec.nodeName={self.node}", _preload_content=False,
            )  # fmt: skip
            listing = json.loads(await resp.read())
            alive: set[str] = set()
            for obj in listing.get("items") or []:
                if not self._mine(obj):
                    continue
                meta = obj["metadata"]
                pod, namespace = meta["name"], meta.get("namespace") or "default"
                ended = ((obj.get("status") or {}).get("phase") in TERMINAL
                         or meta.get("deletionTimestamp"))  # fmt: skip
                if wanted.get(pod) == namespace and not ended:
                    self._pods[pod] = namespace
                    self._born[pod] = time.monotonic()
                    alive.add(pod)
                elif pod not in self._pods:
                    # An orphan: its VM stopped, moved or failed while we were away.
                    self._leaving.add(pod)
                    with contextlib.suppress(ApiException):
                        await core.delete_namespaced_pod(pod, namespace)
        except (ApiException, aiohttp.ClientError, OSError) as err:
            raise PodApiError(f"listing launcher pods of {self.node}: {_why(err)}") from err
        await self._ensure_watching()
        return set(wanted) - alive

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._api is not None:
            await self._api.close()
            self._api = None

    # --- building pods ---------------------------------------------------------------------------

    def manifest(
        self, pod: str, *, namespace: str, owner: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        body = copy.deepcopy(self.template)
        meta = body.setdefault("metadata", {})
        meta.pop("generateName", None)
        meta.update(name=pod, namespace=namespace)
        meta["labels"] = {
            **(meta.get("labels") or {}),
            "kubevirt.io": "virt-launcher",
            "kubevirt.io/domain": vm_of_pod(pod),
            "virtbus.io/node": self.node,
        }
        if owner is not None:
            meta["ownerReferences"] = [{"controller": True, "blockOwnerDeletion": True, **owner}]
        spec = body.setdefault("spec", {})
        spec["nodeName"] = self.node
        if self.image is not None:
            for container in spec.get("containers", []):
                if container.get("name") == LAUNCHER_CONTAINER:
                    container["image"] = self.image
        return body

    async def _adopt_or_replace(
        self, core: Any, pod: str, namespace: str, body: dict[str, Any]
    ) -> None:
        """The name exists: keep a live launcher (a restart of ours), replace an ended one."""
        resp = await core.read_namespaced_pod(pod, namespace, _preload_content=False)
        existing = json.loads(await resp.read())
        phase = (existing.get("status") or {}).get("phase")
        if phase not in TERMINAL and not existing["metadata"].get("deletionTimestamp"):
            return
        # The old pod's DELETED is ours; it clears `_leaving` and, the watch being ordered, comes
        # before any event of the new pod.
        self._leaving.add(pod)
        with contextlib.suppress(ApiException):
            await core.delete_namespaced_pod(pod, namespace)
        await core.create_namespaced_pod(namespace, body)

    async def _core(self) -> Any:
        # Any: we pass plain dicts and read raw responses (`_preload_content=False`), which the
        # stubs' model types do not describe.
        return client.CoreV1Api(await self._client())

    async def _client(self) -> client.ApiClient:
        if self._api is None:
            cfg = client.Configuration()
            if self.kube_url is not None:
                cfg.host = self.kube_url
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            else:
                await config.load_kube_config(client_configuration=cfg)
            self._api = client.ApiClient(cfg)
        return self._api

    # --- watching --------------------------------------------------------------------------------

    async def _ensure_watching(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._synced.clear()
            self._watcher = asyncio.create_task(self._watch(), name=f"k8spods-{self.node}-watch")
        try:
            await asyncio.wait_for(self._synced.wait(), SYNC_TIMEOUT_S)
        except TimeoutError as err:
            raise PodApiError("the Kubernetes API did not answer the pod list") from err

    async def _watch(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._list_then_watch()
                backoff = 0.5  # the server ended the watch in time: a normal turn
            except (ApiException, aiohttp.ClientError, OSError, ValueError) as err:
                log.warning("watching launcher pods on %s: %s", self.node, _why(err))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _list_then_watch(self) -> None:
        core = await self._core()
        selector = f"kubevirt.io=virt-launcher,virtbus.io/node={self.node}"
        fields = f"spec.nodeName={self.node}"
        asked = time.monotonic()
        resp = await core.list_pod_for_all_namespaces(
            label_selector=selector, field_selector=fields, _preload_content=False
        )
        listing = json.loads(await resp.read())
        present = set()
        for obj in listing.get("items") or []:
            if self._mine(obj):
                present.add(obj["metadata"]["name"])
                await self._observe("ADDED", obj)
        for pod in list(self._pods):  # ours, created before the list, and not in it: gone
            if pod not in present and self._born.get(pod, asked) < asked:
                await self._observe("DELETED", {"metadata": {"name": pod}})
        stream = await core.list_pod_for_all_namespaces(
            watch=True, label_selector=selector, field_selector=fields,
            resource_version=(listing.get("metadata") or {}).get("resourceVersion"),
            timeout_seconds=WATCH_TIMEOUT_S, _preload_content=False,
        )  # fmt: skip
        # Synced once the watch is open, not at the list: a pod made and deleted in between
        # would otherwise go unseen where the server cannot replay from the list's version.
        self._synced.set()
        async with stream:
            async for line in stream.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":  # e.g. 410 Gone: list again from scratch
                    raise ValueError(f"watch error: {event.get('object')}")
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    obj = event.get("object") or {}
                    if self._mine(obj):
                        await self._observe(event["type"], obj)

    def _mine(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return (
            labels.get("kubevirt.io") == "virt-launcher"
            and labels.get("virtbus.io/node") == self.node
            and (obj.get("spec") or {}).get("nodeName") == self.node
        )

    async def _observe(self, kind: str, obj: Mapping[str, Any]) -> None:
        pod = obj["metadata"]["name"]
        if pod in self._leaving:
            if kind == "DELETED":
                self._leaving.discard(pod)
            return
        if pod not in self._pods or pod in self._reported:
            return  # not one we run here now, or already told
        if kind == "DELETED":
            await self._ended(pod, exit_code(obj), forget=True)
            return
        phase = (obj.get("status") or {}).get("phase") or "Pending"
        await self._phase(pod, phase)
        if phase in TERMINAL:
            await self._ended(pod, exit_code(obj), forget=False)

    async def _phase(self, pod: str, phase: str) -> None:
        if self._phases.get(pod) == phase:
            return
        self._phases[pod] = phase
        if self.on_phase is not None:
            try:
                await self.on_phase(pod, phase)
            except Exception:  # a failing observer must not stop the watch
                log.exception("on_phase(%s, %s) failed", pod, phase)

    async def _ended(self, pod: str, code: int, *, forget: bool) -> None:
        self._reported.add(pod)
        if forget:  # the object is gone: nothing left to delete
            self._pods.pop(pod, None)
            self._reported.discard(pod)
            self._born.pop(pod, None)
        self._phases.pop(pod, None)
        try:
            await self.on_exit(pod, code)
        except Exception:  # the report is lost, not the watch of every other pod
            log.exception("on_exit(%s, %s) failed", pod, code)


def _why(err: BaseException) -> str:
    if isinstance(err, ApiException):
        return f"{err.status} {err.reason}"
    return str(err) or type(err).__name__
