"""The `kubernetes` pod driver against kmock, an in-process Kubernetes API emulator.

There is no cluster here. kmock stores pods and serves create/get/list/delete/patch and watches
over HTTP; the test plays the kubelet and other users by patching and deleting pods through a
plain kubernetes-asyncio client. Assertions read the emulated API and the event log, never
driver or worker internals. The deploy manifests are checked here too: they must parse.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import pytest
import yaml
from driverstack import Stack, seed
from kmock._internal import parsing as kmock_parsing
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.client.rest import ApiException
from paths import DEPLOY

from bus.client import send
from events import commands as c
from events import model as m
from events.names import Ref
from workers.k8spods import KubernetesPods, load_template
from workers.node import run_node
from workers.pods import pod_name


class Kube:
    """The emulator's URL and a plain client on it: what `kubectl` would see."""

    def __init__(self, url: str, api: ApiClient) -> None:
        self.url = url
        self.core: Any = CoreV1Api(api)

    async def pods(self, namespace: str | None = None) -> list[Any]:
        if namespace is None:
            return list((await self.core.list_pod_for_all_namespaces()).items)
        return list((await self.core.list_namespaced_pod(namespace)).items)


@pytest.fixture
async def kube(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kube]:
    # kmock gap: it takes a watch only as `watch=true`; kubernetes-asyncio sends `watch=True`
    # (which the real API server accepts), so teach kmock's query parser the capital form.
    guess = kmock_parsing.guess_k8s

    def guess_k8s(k8s: Any, method: Any, query: dict[str, str]) -> Any:
        if query.get("watch") == "True":
            query = {**query, "watch": "true"}
        return guess(k8s, method, query)

    monkeypatch.setattr(kmock_parsing, "guess_k8s", guess_k8s)
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        # kmock gap: listing a kind no object of which exists yet is a 404 unless declared.
        emulator.resources["v1/pods"] = kmock.ResourceInfo()
        url = str(server.url).rstrip("/")
        async with ApiClient(Configuration(host=url)) as api:
            yield Kube(url, api)


class Recorder:
    def __init__(self) -> None:
        self.exits: list[tuple[str, int]] = []
        self.phases: list[tuple[str, str]] = []

    async def on_exit(self, pod: str, code: int) -> None:
        self.exits.append((pod, code))

    async def on_phase(self, pod: str, phase: str) -> None:
        self.phases.append((pod, phase))


@pytest.fixture
async def pods(kube: Kube) -> AsyncIterator[tuple[KubernetesPods, Recorder]]:
    rec = Recorder()
    driver = KubernetesPods(rec.on_exit, node="node-a", kube_url=kube.url, on_phase=rec.on_phase)
    try:
        yield driver, rec
    finally:
        await driver.close()


async def until(what: str, check: Callable[[], bool], *, within: float = 5) -> None:
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"never: {what}")


async def test_create_makes_a_labelled_pod_pinned_to_the_node(
    kube: Kube, pods: tuple[KubernetesPods, Recorder]
) -> None:
    driver, _ = pods
    name = await driver.create("virt-launcher-centos7-ab12c", namespace="vms")
    assert name == "virt-launcher-centos7-ab12c"
    got = await kube.core.read_namespaced_pod(name, "vms")
    assert got.metadata.namespace == "vms"
    assert got.metadata.labels == {
        "kubevirt.io": "virt-launcher",
        "kubevirt.io/domain": "centos7",
        "virtbus.io/node": "node-a",
    }
    assert got.spec.node_name == "node-a"
    assert got.spec.restart_policy == "Never"
    assert got.spec.containers[0].image == "virtbus/virt-launcher:latest"
    assert [p.metadata.name for p in await kube.pods("vms")] == [name]
    assert driver.running() == {name}
    assert await driver.create(name, namespace="vms") == name  # idempotent
    assert len(await kube.pods()) == 1


async def test_an_owner_reference_and_the_image_are_set_when_given(kube: Kube) -> None:
    rec = Recorder()
    driver = KubernetesPods(rec.on_exit, node="node-b", kube_url=kube.url, image="reg/l:1")
    try:
        owner = {"apiVersion": "v1", "kind": "Pod", "name": "virtbus-handler-x", "uid": "u-1"}
        await driver.create("virt-launcher-vm1-00000", owner=owner)
        got = await kube.core.read_namespaced_pod("virt-launcher-vm1-00000", "default")
        (ref,) = got.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller) == ("Pod", "virtbus-handler-x",
                                                                 "u-1", True)  # fmt: skip
        assert got.spec.containers[0].image == "reg/l:1"
    finally:
        await driver.close()


async def test_delete_removes_the_pod_and_is_not_reported(
    kube: Kube, pods: tuple[KubernetesPods, Recorder]
) -> None:
    driver, rec = pods
    await driver.create("virt-launcher-mine-11111")
    await driver.create("virt-launcher-theirs-22222")
    await driver.delete("virt-launcher-mine-11111")
    with pytest.raises(ApiException) as err:
        await kube.core.read_namespaced_pod("virt-launcher-mine-11111", "default")
    assert err.value.status == 404
    # The watch delivers in order: once the later deletion is reported, ours was seen and skipped.
    await kube.core.delete_namespaced_pod("virt-launcher-theirs-22222", "default")
    await until("the foreign deletion reported", lambda: bool(rec.exits))
    assert rec.exits == [("virt-launcher-theirs-22222", -1)]
    assert driver.running() == set()


async def test_a_pod_deleted_by_someone_else_is_reported(
    kube: Kube, pods: tuple[KubernetesPods, Recorder]
) -> None:
    driver, rec = pods
    await driver.create("virt-launcher-gone-33333", namespace="vms")
    await kube.core.delete_namespaced_pod("virt-launcher-gone-33333", "vms")
    await until("on_exit", lambda: bool(rec.exits))
    assert rec.exits == [("virt-launcher-gone-33333", -1)]
    assert driver.running() == set()


async def test_a_failed_pod_reports_its_exit_code_and_phases(
    kube: Kube, pods: tuple[KubernetesPods, Recorder]
) -> None:
    driver, rec = pods
    name = await driver.create("virt-launcher-oom-44444", namespace="vms")
    await until("the first phase", lambda: bool(rec.phases))
    status = {"status": {"phase": "Failed", "containerStatuses": [{
        "name": "compute", "ready": False, "restartCount": 0, "image": "i", "imageID": "",
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    }]}}  # fmt: skip
    await kube.core.patch_namespaced_pod_status(name, "vms", status)
    await until("on_exit", lambda: bool(rec.exits))
    assert rec.exits == [(name, 137)]
    assert rec.phases == [(name, "Pending"), (name, "Failed")]
    assert driver.running() == set()
    await driver.delete(name)  # what the worker does next: the ended pod is cleaned up
    assert await kube.pods() == []
    await asyncio.sleep(0.1)
    assert rec.exits == [(name, 137)]  # and that deletion is not news


async def test_close_leaves_no_task_and_the_pods(kube: Kube) -> None:
    rec = Recorder()
    driver = KubernetesPods(rec.on_exit, node="node-a", kube_url=kube.url)
    await driver.create("virt-launcher-stay-55555")
    assert any(t.get_name() == "k8spods-node-a-watch" for t in asyncio.all_tasks())
    await driver.close()
    assert not any(t.get_name().startswith("k8spods-") for t in asyncio.all_tasks())
    assert [p.metadata.name for p in await kube.pods()] == ["virt-launcher-stay-55555"]
    assert rec.exits == []


async def test_a_restarted_driver_adopts_live_launchers_and_deletes_orphans(kube: Kube) -> None:
    """A worker restart: the launchers of the VMs it keeps are its own again (their end is
    reported, deleting them works); a pod no VM wants is deleted; a wanted pod that ended or
    is gone comes back as missing, for the worker to fail its VM."""
    old = KubernetesPods(Recorder().on_exit, node="node-a", kube_url=kube.url)
    for pod in ("virt-launcher-keep-11111", "virt-launcher-orphan-22222",
                "virt-launcher-ended-33333", "virt-launcher-kept2-44444"):  # fmt: skip
        await old.create(pod, namespace="vms")
    await old.close()
    await kube.core.patch_namespaced_pod_status(
        "virt-launcher-ended-33333", "vms", {"status": {"phase": "Failed"}}
    )
    rec = Recorder()
    new = KubernetesPods(rec.on_exit, node="node-a", kube_url=kube.url)
    try:
        wanted = {
            p: "vms"
            for p in (
                "virt-launcher-keep-11111",
                "virt-launcher-ended-33333",
                "virt-launcher-kept2-44444",
                "virt-launcher-gone-55555",
            )
        }
        missing = await new.adopt(wanted)
        assert missing == {"virt-launcher-ended-33333", "virt-launcher-gone-55555"}
        assert new.running() == {"virt-launcher-keep-11111", "virt-launcher-kept2-44444"}
        assert sorted(p.metadata.name for p in await kube.pods()) == [
            "virt-launcher-keep-11111",
            "virt-launcher-kept2-44444",
        ]  # the orphan and the ended pod are gone
        await kube.core.delete_namespaced_pod("virt-launcher-keep-11111", "vms")
        await until("the adopted pod's end reported", lambda: bool(rec.exits))
        assert rec.exits == [("virt-launcher-keep-11111", -1)]
        await new.delete("virt-launcher-kept2-44444")
        assert await kube.pods() == []
        await asyncio.sleep(0.1)
        assert rec.exits == [("virt-launcher-keep-11111", -1)]  # our own deletion is not news
    finally:
        await new.close()


def test_the_deploy_manifests_parse() -> None:
    kinds = {
        f.name: [d["kind"] for d in yaml.safe_load_all(f.read_text())]
        for f in sorted(DEPLOY.glob("*.yaml"))
    }
    assert kinds == {
        "launcher-pod-template.yaml": ["ConfigMap"],
        "orchestrator-deployment.yaml": ["Deployment"],
        "rbac.yaml": ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
        "worker-daemonset.yaml": ["DaemonSet"],
    }
    (ds,) = yaml.safe_load_all((DEPLOY / "worker-daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    (ctr,) = spec["containers"]
    assert spec["hostPID"] is True and ctr["securityContext"]["privileged"] is True
    assert ctr["command"] + ctr["args"][:4] == ["python", "-m", "workers", "--node",
                                                "$(NODE_NAME)", "--pods", "kubernetes"]  # fmt: skip
    env = {e["name"]: e for e in ctr["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "VIRTBUS_NATS_URL" in env
    mounts = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert {"/dev/kvm", "/var/run/libvirt"} <= set(mounts.values())
    rules = next(d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text())
                 if d["kind"] == "ClusterRole")["rules"]  # fmt: skip
    assert {"get", "list", "watch", "create", "delete", "patch"} <= set(rules[0]["verbs"])


def test_the_deploy_manifests_carry_the_credentials_as_secrets() -> None:
    """Each component that reaches the bus reads its `.creds` and the CA from a Secret mounted
    read-only (0400), never from the manifest; the orchestrator reads its keys the same way."""
    texts = "".join(f.read_text() for f in DEPLOY.glob("*.yaml"))
    assert "-----BEGIN" not in texts  # no certificate, no JWT, no key in a manifest
    assert not re.search(r"S[OAU][A-Z2-7]{56}", texts)  # nor an nkey seed
    mounted = {}
    for name, secret in (("worker-daemonset.yaml", "virtbus-node-creds"),
                         ("orchestrator-deployment.yaml", "virtbus-orchestrator")):  # fmt: skip
        (doc,) = yaml.safe_load_all((DEPLOY / name).read_text())
        spec = doc["spec"]["template"]["spec"]
        (ctr,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in ctr["env"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in ctr["volumeMounts"]}
        for var in ("VIRTBUS_CREDS", "VIRTBUS_TLS_CA"):
            where = env[var].rpartition("/")[0]
            assert mounts[where]["secret"]["secretName"] == secret, (name, var)
            assert mounts[where]["secret"]["defaultMode"] == 0o400
        mounted[name] = (env["VIRTBUS_CREDS"], env["VIRTBUS_TLS_CA"], env.get("VIRTBUS_TRUST_DIR"))
        if name == "orchestrator-deployment.yaml":
            trust = mounts[env["VIRTBUS_TRUST_DIR"]]["secret"]
            assert (trust["secretName"], trust["defaultMode"]) == ("virtbus-trust", 0o400)
            assert sorted(i["path"] for i in trust["items"]) == [
                "identities.json", "keys/account.nk", "keys/callout.nk", "keys/certlogin.nk",
                "keys/operator.nk", "keys/system.nk", "tls/ca.pem",
            ]  # what `python -m orchestrator --trust-dir` loads  # fmt: skip
    assert mounted == {
        "worker-daemonset.yaml": ("/etc/virtbus-creds/$(NODE_NAME).creds",
                                  "/etc/virtbus-creds/ca.pem", None),
        "orchestrator-deployment.yaml": ("/etc/virtbus-creds/orchestrator.creds",
                                         "/etc/virtbus-creds/ca.pem", "/etc/virtbus-trust"),
    }  # fmt: skip


async def test_the_deploy_launcher_template_builds_a_pod(kube: Kube) -> None:
    rec = Recorder()
    template = load_template(DEPLOY / "launcher-pod-template.yaml")
    driver = KubernetesPods(rec.on_exit, node="node-a", kube_url=kube.url, template=template)
    try:
        await driver.create("virt-launcher-tpl-66666", namespace="vms")
        got = await kube.core.read_namespaced_pod("virt-launcher-tpl-66666", "vms")
        assert got.metadata.labels["app.kubernetes.io/part-of"] == "virtbus"
        assert got.metadata.labels["kubevirt.io/domain"] == "tpl"
        assert got.spec.containers[0].name == "compute"
    finally:
        await driver.close()


# --- end to end: a worker with launcher pods -----------------------------------------------------


async def kube_node(st: Stack, name: str, kube_url: str) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_node(st.nc, node=name, uri=None, data_dir=st.root / "nodes", stop=stop,
                 pods="kubernetes", kube_url=kube_url),
        name=f"node-{name}",
    )  # fmt: skip
    st._nodes.append((stop, task))  # stopped with the stack's own nodes, before kmock goes
    await st.until_node(name)


async def test_a_vm_runs_in_a_launcher_pod_and_a_deleted_pod_restarts_it(
    kube: Kube, stack: Stack
) -> None:
    stack.provide_seed_volumes("node-a")
    await kube_node(stack, "node-a", kube.url)
    await send(stack.nc, seed("podvm", runStrategy="Always"))
    await stack.until("podvm", "Running")
    (pod,) = await kube.pods()
    assert pod.metadata.name.startswith("virt-launcher-podvm-")
    assert (pod.metadata.namespace, pod.spec.node_name) == ("default", "node-a")

    await kube.core.delete_namespaced_pod(pod.metadata.name, "default")
    for _ in range(400):
        kinds = await stack.kinds("podvm")
        now = [p.metadata.name for p in await kube.pods()]
        if "LauncherFailed" in kinds and (await stack.state("podvm")).status == "Running" and now:
            break
        await asyncio.sleep(0.05)
    failed = [r.envelope.data for r in await stack.store.read(Ref.vm("podvm"))
              if isinstance(r.envelope.data, m.LauncherFailed)]  # fmt: skip
    assert [(f.pod, f.exit_code) for f in failed] == [(pod.metadata.name, -1)]
    assert (await stack.state("podvm")).status == "Running"
    (again,) = await kube.pods()
    assert again.metadata.name != pod.metadata.name  # a new instance, a new pod

    await send(stack.nc, c.StopVM(name="podvm"))
    await stack.until("podvm", "Stopped")
    assert await kube.pods() == []


async def test_a_restarted_worker_leaves_exactly_the_launcher_of_the_running_instance(
    kube: Kube, stack: Stack
) -> None:
    """The test driver forgets its domains when its worker stops, so a restart finds the VM's
    domain lost: the old launcher pod must go with it, not leak beside the new instance's."""
    stack.provide_seed_volumes("node-a")
    await kube_node(stack, "node-a", kube.url)
    await send(stack.nc, seed("adopted", runStrategy="Always"))
    await stack.until("adopted", "Running")
    (first,) = await kube.pods()
    await stack.stop_nodes()
    assert [p.metadata.name for p in await kube.pods()] == [first.metadata.name]  # pods outlive it
    await kube_node(stack, "node-a", kube.url)
    for _ in range(400):
        names = [p.metadata.name for p in await kube.pods()]
        s = await stack.state("adopted")
        if s.status == "Running" and names and first.metadata.name not in names:
            break
        await asyncio.sleep(0.05)
    assert s.status == "Running"
    (now,) = await kube.pods()
    assert now.metadata.name == pod_name("adopted", s.vmi_uid) != first.metadata.name
    await send(stack.nc, c.StopVM(name="adopted"))
    await stack.until("adopted", "Stopped")
    assert await kube.pods() == []
