"""The CLI verbs end to end, as a user runs them: `virtbus` as a subprocess against a real bus.

Each test gets a fresh nats-server, an in-process orchestrator and two simulated nodes, then
drives them only through the command line (`apply`, `start`..., `get`, `describe`, `wait`,
`admin`), checking what it prints, on which stream, and its exit code. The URL reaches the CLI
through `--server` on some calls and `VIRTBUS_NATS_URL` on others: both are promised.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from clirun import CLI, WAIT_S, Result, cli_env, virtbus
from nats.aio.client import Client
from paths import ROOT, SEED
from waits import api_ready

from bench.simnode import SimNode
from bus.provision import provision
from bus.server import NatsServer
from bus.store import EventStore
from bus.vms import VMRepository
from events.names import EVENTS_STREAM, Ref
from orchestrator.app import run_orchestrator

DOMAIN_STARTED = "io.virtbus.vm.domain_started.v1"
TIMEOUT_MESSAGE = "error: timed out waiting for the condition on virtualmachines/centos7"


class Cluster:
    def __init__(self, nc: Client, url: str, data_dir: Path) -> None:
        self.nc = nc
        self.url = url
        self.data_dir = data_dir  # the orchestrator's: where its read model lives
        self.store = EventStore(nc, source="/tests")
        self.nodes: list[SimNode] = []

    async def node(self, name: str) -> SimNode:
        node = await SimNode(self.nc, name).start()
        self.nodes.append(node)
        return node

    async def run(self, *args: str, stdin: str | None = None) -> Result:
        """The CLI with `--server URL` (and no VIRTBUS_NATS_URL in its environment)."""
        return await virtbus(*args, "--server", self.url, stdin=stdin)

    async def env(self, *args: str, stdin: str | None = None) -> Result:
        """The CLI with VIRTBUS_NATS_URL in its environment (and no `--server`)."""
        return await virtbus(*args, env_url=self.url, stdin=stdin)

    async def vm_json(self, name: str, *, status: str, tries: int = 40) -> dict[str, Any]:
        """`get vm NAME -o json` once the read model shows `status` (it trails the log)."""
        obj: dict[str, Any] = {}
        for _ in range(tries):
            obj = (await self.run("get", "vm", name, "-o", "json")).json()
            if obj["status"]["printableStatus"] == status:
                return obj
            await asyncio.sleep(0.1)
        pytest.fail(f"get vm {name}: never {status}; last {obj['status']['printableStatus']}")

    async def settle(self, name: str, status: str, *, within: float = 20) -> None:
        """Until the VM's fold in the log reads `status` (cheaper than polling the CLI)."""
        for _ in range(int(within / 0.05)):
            if (await VMRepository(self.store).get(Ref.vm(name)))[0].status == status:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"{name} never reached {status}")

    async def event_types(self, name: str) -> list[str]:
        return [r.envelope.type for r in await self.store.read(Ref.vm(name))]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A fresh bus, orchestrator and two simulated nodes per test."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream())
        stop = asyncio.Event()
        data_dir = tmp_path / "orchestrator"
        task = asyncio.create_task(
            run_orchestrator(nc, data_dir=data_dir, stop=stop, node_grace_s=5.0),
            name="orchestrator-cli-verbs",
        )
        cl = Cluster(nc, server.url, data_dir)
        try:
            await cl.node("node-a")
            await cl.node("node-b")
            await api_ready(nc)
            yield cl
        finally:
            for node in cl.nodes:
                await node.close()
            stop.set()
            await task
            await nc.close()


def seed(name: str = "centos7") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SEED.read_text())
    doc["metadata"]["name"] = name
    return doc


def table(text: str) -> list[list[str]]:
    """A kubectl table as rows of cells, cut where the header's columns start (a cell may be
    blank, like a VMI's IP)."""
    header, *lines = text.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return [[line[a:b].strip() for a, b in zip(starts, ends, strict=True)]
            for line in (header, *lines)]  # fmt: skip


def rows_by_name(text: str) -> dict[str, dict[str, str]]:
    header, *rows = table(text)
    return {row[header.index("NAME")]: dict(zip(header, row, strict=True)) for row in rows}


# --- apply ---------------------------------------------------------------------------------------


async def test_apply_creates_leaves_unchanged_and_configures(
    cluster: Cluster, tmp_path: Path
) -> None:
    created = await cluster.run("apply", "-f", str(SEED))
    assert created.ok().out == "virtualmachine.kubevirt.io/centos7 created\n"
    again = await cluster.env("apply", "-f", str(SEED))
    assert again.ok().out == "virtualmachine.kubevirt.io/centos7 unchanged\n"
    changed = seed()
    changed["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 2
    (path := tmp_path / "centos7-2cpu.yaml").write_text(yaml.safe_dump(changed))
    configured = await cluster.run("apply", "-f", str(path))
    assert configured.ok().out == "virtualmachine.kubevirt.io/centos7 configured\n"
    got, no_vmi = await asyncio.gather(
        cluster.env("get", "vm", "centos7", "-o", "json"), cluster.run("get", "vmi", "centos7")
    )
    obj = got.json()
    assert (no_vmi.code, no_vmi.out) == (1, "")  # stopped: the VM has no instance
    assert 'virtualmachineinstances.kubevirt.io "centos7" not found' in no_vmi.err
    assert obj["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] == 2
    assert obj["status"]["printableStatus"] == "Stopped"  # running: false
    assert await cluster.event_types("centos7") == [
        "io.virtbus.vm.created.v1", "io.virtbus.vm.spec_changed.v1",
    ]  # fmt: skip

    # Several documents on stdin, each applied.
    stream = yaml.safe_dump_all([seed("alpha"), seed("beta")])
    both = await cluster.env("apply", "-f", "-", stdin=stream)
    assert both.ok().out.splitlines() == [
        "virtualmachine.kubevirt.io/alpha created", "virtualmachine.kubevirt.io/beta created",
    ]  # fmt: skip
    names = rows_by_name((await cluster.run("get", "vms")).ok().out)
    assert set(names) == {"centos7", "alpha", "beta"}


async def test_apply_warns_on_unknown_fields_and_refuses_bad_manifests(
    cluster: Cluster, tmp_path: Path
) -> None:
    odd = seed("odd")
    odd["spec"]["template"]["spec"]["domain"]["frobnicate"] = True
    (odd_path := tmp_path / "odd.yaml").write_text(yaml.safe_dump(odd))
    warned = await cluster.run("apply", "-f", str(odd_path))
    assert warned.ok().out == "virtualmachine.kubevirt.io/odd created\n"
    assert re.search(r"^Warning: spec\.template\.spec\.domain\.frobnicate: ", warned.err, re.M)
    assert (await cluster.env("get", "vm", "odd", "-o", "json")).json()["metadata"]["name"] == "odd"

    broken = seed("broken")
    broken["spec"]["template"]["spec"]["domain"]["devices"]["disks"][1]["name"] = "missing"
    (broken_path := tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    refused = await cluster.env("apply", "-f", str(broken_path))
    assert refused.code == 1
    assert refused.out == ""
    assert "spec.template.spec.domain.devices.disks[1].name" in refused.err
    assert "'missing'" in refused.err
    missing = await cluster.run("get", "vm", "broken")
    assert (missing.code, missing.out) == (1, "")
    assert 'virtualmachines.kubevirt.io "broken" not found' in missing.err
    assert await cluster.event_types("broken") == []  # nothing reached the log either


# --- start, wait, get, describe, watch -----------------------------------------------------------


async def test_start_wait_get_describe_watch(cluster: Cluster) -> None:
    (await cluster.run("apply", "-f", str(SEED))).ok()
    (await cluster.run("apply", "-f", str(SEED), "-n", "dev")).ok()
    started = await cluster.env("start", "centos7")
    assert started.ok().out == "VM centos7 was scheduled to start\n"
    running = await cluster.run("wait", "vm", "centos7", "--for", "status=Running",
                                "--timeout", "20")  # fmt: skip
    assert running.ok().out == "virtualmachine.kubevirt.io/centos7 condition met\n"

    again, paused, bogus = await asyncio.gather(
        cluster.run("start", "centos7"),
        cluster.env("wait", "vm", "centos7", "--for", "status=Paused", "--timeout", "1"),
        cluster.run("wait", "vm", "x", "--for", "bogus"),
    )
    assert (again.code, again.out) == (1, "")
    assert "VM is already running" in again.err
    assert (paused.code, paused.out) == (1, "")
    assert TIMEOUT_MESSAGE in paused.err
    assert bogus.code == 2
    assert "--for" in bogus.err

    obj = await cluster.vm_json("centos7", status="Running")
    assert (obj["kind"], obj["metadata"]["name"]) == ("VirtualMachine", "centos7")
    assert obj["status"]["ready"] is True
    vms, vmis, vmi_json, listing, as_yaml, nodes, no_node, every = await asyncio.gather(
        cluster.run("get", "vms"), cluster.env("get", "vmis"),
        cluster.run("get", "vmi", "centos7", "-o", "json"),
        cluster.run("get", "vms", "-o", "json"), cluster.env("get", "vm", "centos7", "-o", "yaml"),
        cluster.run("get", "nodes"), cluster.env("get", "node", "node-z"),
        cluster.env("get", "vms", "-A"),
    )  # fmt: skip

    header, *rows = table(vms.ok().out)
    assert header == ["NAME", "AGE", "STATUS", "READY"]
    assert [(r[0], r[2], r[3]) for r in rows] == [("centos7", "Running", "True")]

    vmi = rows_by_name(vmis.ok().out)["centos7"]
    assert vmi["PHASE"] == "Running"
    assert vmi["NODENAME"] in ("node-a", "node-b")
    instance = vmi_json.json()
    assert (instance["kind"], instance["status"]["phase"]) == ("VirtualMachineInstance", "Running")
    assert instance["status"]["nodeName"] == vmi["NODENAME"]

    doc = listing.json()
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "List")
    assert [i["metadata"]["name"] for i in doc["items"]] == ["centos7"]
    assert doc["items"][0]["status"]["printableStatus"] == "Running"

    parsed = yaml.safe_load(as_yaml.ok().out)
    assert (parsed["kind"], parsed["metadata"]["name"]) == ("VirtualMachine", "centos7")
    assert parsed["status"]["printableStatus"] == "Running"

    by_node = rows_by_name(nodes.ok().out)
    assert set(by_node) == {"node-a", "node-b"}
    assert {n["STATUS"] for n in by_node.values()} == {"Ready"}
    assert by_node[vmi["NODENAME"]]["VMS"] == "1"
    assert (no_node.code, no_node.out) == (1, "")
    assert 'nodes "node-z" not found' in no_node.err

    header, *rows = table(every.ok().out)
    assert header == ["NAMESPACE", "NAME", "AGE", "STATUS", "READY"]
    assert sorted((r[0], r[1], r[3]) for r in rows) == [
        ("default", "centos7", "Running"), ("dev", "centos7", "Stopped"),
    ]  # fmt: skip

    widgets, bad_output = await asyncio.gather(
        cluster.run("get", "widgets"), cluster.env("get", "vms", "-o", "bogus")
    )
    assert widgets.code != 0
    assert 'doesn\'t have a resource type "widgets"' in widgets.err
    assert bad_output.code == 2
    assert "-o 'bogus'" in bad_output.err

    described = (await cluster.env("describe", "vm", "centos7")).ok().out
    fields = dict(line.split(":", 1) for line in described.split("Conditions:")[0].splitlines())
    assert fields["Status"].strip() == "Running"
    assert fields["Node"].strip() == vmi["NODENAME"]
    conditions, events = described.split("Conditions:")[1].split("Events:")
    assert re.search(r"^\s+Ready\s+True\b", conditions, re.M)
    listed = [line.split()[1] for line in events.strip().splitlines()[1:]]
    assert listed[:3] == ["vm.created.v1", "vm.start_requested.v1", "vm.scheduled.v1"]
    assert "vm.domain_started.v1" in listed

    # `get vms -w` prints the table, then a row per change: here, a stop from another process.
    watcher = await asyncio.create_subprocess_exec(
        *CLI, "get", "vms", "-w", cwd=ROOT, env=cli_env(cluster.url),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert watcher.stdout is not None
    seen: list[list[str]] = []
    try:
        first = await asyncio.wait_for(watcher.stdout.readline(), WAIT_S)
        assert first.decode().split() == ["NAME", "AGE", "STATUS", "READY"]
        initial = (await asyncio.wait_for(watcher.stdout.readline(), WAIT_S)).decode().split()
        assert (initial[0], initial[2]) == ("centos7", "Running")

        stopped = await cluster.run("stop", "centos7")
        assert stopped.ok().out == "VM centos7 was scheduled to stop\n"
        while not seen or seen[-1][2] != "Stopped":
            line = await asyncio.wait_for(watcher.stdout.readline(), WAIT_S)
            assert line, "the watcher ended early"
            seen.append(line.decode().split())
    finally:
        if watcher.returncode is None:
            watcher.kill()
        await watcher.communicate()
    assert {row[0] for row in seen} == {"centos7"}
    assert "Stopping" in [row[2] for row in seen]  # the watch shows the way, not only the end
    assert seen[-1][2:] == ["Stopped", "False"]


# --- lifecycle verbs -----------------------------------------------------------------------------


async def test_lifecycle_verbs_messages_exit_codes_and_status(cluster: Cluster) -> None:
    def rejected(result: Result, reason: str) -> None:
        assert (result.code, result.out) == (1, ""), result
        assert reason in result.err

    (await cluster.env("apply", "-f", str(SEED))).ok()
    rejected(await cluster.run("pause", "centos7"), "VMI is not running")
    (await cluster.env("start", "centos7")).ok()
    await cluster.settle("centos7", "Running")

    paused = await cluster.run("pause", "centos7")
    assert paused.ok().out == "VMI centos7 was scheduled to pause\n"
    await cluster.settle("centos7", "Paused")
    obj, twice = await asyncio.gather(
        cluster.vm_json("centos7", status="Paused"), cluster.env("pause", "centos7")
    )
    assert obj["status"]["ready"] is False
    rejected(twice, "VMI is already paused")

    unpaused = await cluster.env("unpause", "centos7")
    assert unpaused.ok().out == "VMI centos7 was scheduled to unpause\n"
    await cluster.settle("centos7", "Running")

    starts = (await cluster.event_types("centos7")).count(DOMAIN_STARTED)
    restarted = await cluster.run("restart", "centos7")
    assert restarted.ok().out == "VM centos7 was scheduled to restart\n"
    for _ in range(200):  # the restart shows in the log as one more domain start
        types = await cluster.event_types("centos7")
        if types.count(DOMAIN_STARTED) > starts:
            break
        await asyncio.sleep(0.05)
    assert types.count(DOMAIN_STARTED) == starts + 1
    assert "io.virtbus.vm.restart_requested.v1" in types
    await cluster.settle("centos7", "Running")
    assert (await cluster.vm_json("centos7", status="Running"))["status"]["ready"] is True

    stopped = await cluster.env("stop", "centos7")
    assert stopped.ok().out == "VM centos7 was scheduled to stop\n"
    await cluster.settle("centos7", "Stopped")
    obj, again = await asyncio.gather(
        cluster.vm_json("centos7", status="Stopped"), cluster.run("stop", "centos7")
    )
    assert obj["status"]["ready"] is False
    rejected(again, "VM is not running")

    deleted = await cluster.run("delete", "centos7")
    assert deleted.ok().out == 'virtualmachine.kubevirt.io "centos7" deleted\n'
    await cluster.settle("centos7", "Deleted")
    lookup, listing = await asyncio.gather(
        cluster.run("get", "vm", "centos7", "-o", "json"), cluster.env("get", "vms")
    )
    rejected(lookup, 'virtualmachines.kubevirt.io "centos7" not found')
    assert listing.ok().out == "No resources found in default namespace.\n"

    restored = await cluster.env("undelete", "centos7")
    assert restored.ok().out == (
        "VM centos7 was restored; it is stopped, start it with `virtbus start centos7`\n"
    )
    obj, not_deleted = await asyncio.gather(
        cluster.vm_json("centos7", status="Stopped"), cluster.run("undelete", "centos7")
    )
    assert obj["metadata"]["name"] == "centos7"
    rejected(not_deleted, 'VM "centos7" is not deleted')

    # The read model, rebuilt from the whole log, still holds the restored VM.
    info = await cluster.nc.jetstream().stream_info(EVENTS_STREAM)
    rebuilt = await cluster.run("admin", "rebuild-projections", "--data-dir", str(cluster.data_dir))
    match = re.fullmatch(r"read model rebuilt from (\d+) events\n", rebuilt.ok().out)
    assert match is not None, rebuilt.out
    assert int(match[1]) >= info.state.messages > 0
    assert (await cluster.vm_json("centos7", status="Stopped"))["status"]["ready"] is False


# --- no bus, no orchestrator ---------------------------------------------------------------------


async def test_get_explains_a_missing_orchestrator_or_server(tmp_path: Path) -> None:
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        no_orchestrator, no_server = await asyncio.gather(
            virtbus("get", "vms", env_url=server.url),
            virtbus("get", "vms", "--server", "nats://127.0.0.1:1"),
        )
    assert (no_orchestrator.code, no_orchestrator.out) == (1, "")
    assert "no virtbus orchestrator is answering" in no_orchestrator.err
    assert (no_server.code, no_server.out) == (1, "")
    assert "cannot reach NATS at nats://127.0.0.1:1" in no_server.err
