"""Structured logs and Prometheus metrics, as an operator sees them: a scraped /metrics endpoint
of a real orchestrator process, and JSON log lines carrying the VM and command they are about."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest
from driverstack import Stack, seed
from nats.aio.client import Client
from waits import api_ready, settle

from bus.client import Rejected, send
from bus.server import NatsServer
from bus.telemetry import bound, configure_logging, trace_id
from events import commands as c
from events.names import EVENTS_STREAM, Ref


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Client]:
    """A bus of this test's own: the orchestrator under test provisions it from scratch."""
    async with NatsServer(data_dir=tmp_path / "nats", port=-1) as server:
        nc = await nats.connect(server.url)
        try:
            yield nc
        finally:
            await nc.close()


@pytest.fixture
async def orchestrator_process(
    bus: Client, tmp_path: Path
) -> AsyncIterator[tuple[int, list[dict[str, object]]]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "--server", bus.connected_url.geturl(),
        "--data-dir", str(tmp_path / "orch"), "--metrics-port", "0",
        stderr=asyncio.subprocess.PIPE, env={"VIRTBUS_LOG_FORMAT": "json", "PATH": "/usr/bin"},
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[dict[str, object]] = []
    try:
        port = 0
        while not port:
            raw = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert raw, "the orchestrator exited before serving metrics"
            line = json.loads(raw)
            lines.append(line)
            if m := re.fullmatch(r"metrics on 127\.0\.0\.1:(\d+)", str(line["event"])):
                port = int(m.group(1))
        await api_ready(bus)
        yield port, lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        await settle("the orchestrator process", proc.wait())


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.startswith(f"{name}{{") or metric == name:
            got = ",".join(sorted(metric[len(name) + 1 : -1].split(","))) if "{" in metric else ""
            if got == want:
                return float(value)
    return None


async def test_the_orchestrator_serves_its_metrics(
    bus: Client, orchestrator_process: tuple[int, list[dict[str, object]]]
) -> None:
    nc = bus
    port, lines = orchestrator_process
    assert lines[-1]["component"] == "orchestrator" and lines[-1]["level"] == "info"
    await send(nc, seed("metered"))
    with pytest.raises(Rejected):
        await send(nc, c.PauseVM(name="metered"))  # stopped: "VMI is not running"
    text = await scrape(port)
    assert sample(text, "virtbus_commands_total", command="ApplyVM", outcome="accepted") == 1
    assert sample(text, "virtbus_commands_total", command="PauseVM", outcome="rejected") == 1
    for _ in range(100):  # the controller folds the new VM a moment after the intake records it
        if sample(text, "virtbus_vm_status_count", status="Stopped"):
            break
        await asyncio.sleep(0.05)
        text = await scrape(port)
    assert sample(text, "virtbus_vm_status_count", status="Stopped") == 1


def test_log_lines_are_json_and_carry_what_was_bound(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRTBUS_LOG_FORMAT", "json")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("worker")
        with bound(vm="default/web", node="node-a", command_id="c-1"):
            logging.getLogger("virtbus.worker").warning("start failed: %s", "no disk")
        logging.getLogger("virtbus.worker").info("outside")
    finally:
        root.handlers[:], root.level = saved
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert inside["event"] == "start failed: no disk"
    assert (inside["vm"], inside["node"], inside["command_id"]) == ("default/web", "node-a", "c-1")
    assert (inside["component"], inside["level"], inside["logger"]) == (
        "worker", "warning", "virtbus.worker",
    )  # fmt: skip
    assert "vm" not in outside  # the binding ended with its block


async def test_a_commands_trace_reaches_every_event_it_causes(stack: Stack) -> None:
    """`virtbus start` -> the intake's decision -> the controller's placement and work item ->
    the node's observations: one W3C trace, a new span at each hop, in envelope and header."""
    stack.provide_seed_volumes("node-a")
    await stack.node("node-a")
    await send(stack.nc, seed("traced"))
    await send(stack.nc, c.StartVM(name="traced"))
    await stack.until("traced", "Running")
    history = await stack.store.read(Ref.vm("traced"))
    kinds = [type(r.envelope.data).__name__ for r in history]
    start = kinds.index("VMStartRequested")
    chain = history[start : kinds.index("DomainStarted") + 1]
    assert [type(r.envelope.data).__name__ for r in chain] == [
        "VMStartRequested", "VMScheduled", "IPAllocated", "LauncherCreated", "DomainDefined",
        "DomainStarted",
    ]  # fmt: skip
    traces = {trace_id(r.envelope.traceparent) for r in chain}
    assert len(traces) == 1 and "" not in traces  # one trace from the command to the guest
    created = trace_id(history[0].envelope.traceparent)
    assert created and created not in traces  # the apply was a trace of its own
    spans = {r.envelope.traceparent.split("-")[2] for r in chain}
    assert len(spans) >= 3  # intake, controller and node each opened a span
    stored = await stack.nc.jetstream().get_msg(EVENTS_STREAM, chain[-1].seq, direct=True)
    assert (stored.headers or {})["traceparent"] == chain[-1].envelope.traceparent
