"""`virtbus bench control -o json`: the control-plane benchmark's promised output, no timings."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

CLI = [sys.executable, "-m", "virtbus"]

KEYS = (
    "vms", "nodes", "accepted", "rejected", "running", "commands_per_s", "starts_per_s",
    "create_to_running_p50_ms", "create_to_running_p95_ms", "create_to_running_p99_ms",
    "events_per_vm", "baseline_starts_per_s", "ratio",
)  # fmt: skip


async def run(*args: str, wait_s: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), wait_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("secure", [False, True], ids=["open", "secure"])
async def test_bench_control_starts_every_vm_and_prints_one_json_object(secure: bool) -> None:
    """Open, and `--secure`: every part of the stack logged in over TLS, each command judged as
    the admin's (its role recorded, as `virtbus up` records it)."""
    flag = ["--secure"] if secure else []
    code, out, err = await run("bench", "control", "--vms", "30", "--nodes", "3", "-o", "json",
                               *flag)  # fmt: skip
    assert code == 0, err
    result = json.loads(out)  # stdout holds the JSON and nothing else
    for key in KEYS:
        assert key in result, key
    assert (result["vms"], result["nodes"]) == (30, 3)
    assert result["accepted"] == result["running"] == 30
    assert (result["rejected"], result["secure"]) == (0, secure)
    # created (starting), scheduled, its address allocated, launcher created, domain defined,
    # domain started
    assert result["events_per_vm"] == 6
    assert result["baseline_publishes_per_vm"] == 7  # the ApplyVM, then one per event
    for key in ("commands_per_s", "starts_per_s", "baseline_starts_per_s", "ratio"):
        assert result[key] > 0, key
    assert result["ratio"] == result["starts_per_s"] / result["baseline_starts_per_s"]
    p50, p95, p99 = (result[f"create_to_running_{p}_ms"] for p in ("p50", "p95", "p99"))
    assert 0 < p50 <= p95 <= p99 <= result["create_to_running_max_ms"]


async def test_bench_log_secure_measures_both_sides_logged_in_over_tls_on_a_cluster() -> None:
    """Issue 15's production configuration: three servers, the log and the raw baseline's
    stream in three copies each, every part logged in over TLS."""
    code, out, err = await run("bench", "log", "--secure", "--cluster", "3", "--events", "400",
                               "-o", "json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert (result["events"], result["secure"], result["replicas"]) == (400, True, 3)
    for key in ("append_eps", "append_baseline_eps", "replay_eps", "replay_baseline_eps"):
        assert result[key] > 0, key


async def test_bench_control_in_the_production_configuration() -> None:
    """Issue 15's production configuration: three servers, three copies of every stream (the
    raw baseline's too), every write on disk before its ack, every part logged in over TLS; at
    an offered rate, so the raw run is made again at that rate. What each start cost is said:
    the writes each stream took, and the CPU of each part, the raw runs' too."""
    code, out, err = await run("bench", "control", "--vms", "20", "--nodes", "2", "--secure",
                               "--cluster", "3", "--fsync-always", "--rate", "100",
                               "-o", "json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert (result["secure"], result["replicas"], result["fsync_always"]) == (True, 3, True)
    assert result["accepted"] == result["running"] == 20
    assert result["events_per_vm"] == 6
    writes = {k: v for k, v in result["bus_per_start"].items() if not k.startswith("KV_")}
    # the command and its intake's ack; six events; the work item and the node's ack
    assert writes == {"VIRT_COMMANDS": 1, "VIRT_COMMANDS acks": 1, "VIRT_EVENTS": 6,
                      "VIRT_WORK": 1, "VIRT_WORK acks": 1}  # fmt: skip
    parts = {"client", "nats-server", "orchestrator", "bench.simnode"}
    assert set(result["cpu_ms_per_start"]) == parts
    assert all(v > 0 for v in result["cpu_ms_per_start"].values()), result["cpu_ms_per_start"]
    for raw in ("baseline", "paced_baseline"):
        assert set(result[f"{raw}_cpu_ms_per_start"]) == {"client", "nats-server"}
        assert result[f"{raw}_cpu_ms_per_start"]["nats-server"] > 0
    assert result["paced_baseline_p99_ms"] > 0


async def test_bench_scale_measures_a_stack_with_every_vm_running() -> None:
    """Issue 15's scale test, small: every VM Running, each read answered in full, the history
    of one VM whole (its start's six events), the orchestrator restarted and acting again."""
    code, out, err = await run("bench", "scale", "--vms", "40", "--nodes", "4", "--steady", "1",
                               "-o", "json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert (result["vms"], result["nodes"], result["running"]) == (40, 4, 40)
    assert (result["events"], result["listed"], result["history_events"]) == (240, 40, 6)
    assert 0 < result["orchestrator_rss_bytes"] < 1 << 40
    assert result["steady_cpu_fraction"] >= 0
    assert 0 < result["get_p50_ms"] <= result["get_p99_ms"]
    assert 0 < result["restart_to_api_s"] <= result["restart_to_acting_s"]
