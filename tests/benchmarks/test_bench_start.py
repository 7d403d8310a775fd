"""`virtbus bench start -o json`: the density benchmark's promised output, no timings.

Run as a user runs it, a subprocess of the CLI (which runs `python -m bench.start`), on the
libvirt test driver everywhere and on a real QEMU/KVM node where the machine can run one. Nothing
it started may outlive it: no nats-server, orchestrator, launcher, libvirtd or QEMU process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from workers.accel import accelerator
from workers.qemunodes import kvm_usable, qemu_available

CLI = [sys.executable, "-m", "virtbus"]

KEYS = (
    "vms", "hypervisor", "kvm", "running", "create_to_running_p50_ms", "create_to_running_p95_ms",
    "create_to_running_max_ms", "raw_running", "raw_p50_ms", "raw_p95_ms", "raw_max_ms",
    "ratio_p50", "ratio_p95", "stages_ms",
)  # fmt: skip


def ours() -> set[int]:
    """Live processes a benchmark started, found by its temp dir (`/tmp/vbs-*`) or its VM names.

    nats-server, the orchestrator and QEMU name the dir on their command line, the launchers the
    VM; libvirtd runs on the dir's bind mounts. Zombies have an empty cmdline and never match.
    """
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"libvirtd" in argv:
                    argv = Path(f"/proc/{entry}/mountinfo").read_bytes()
            except OSError:
                continue
            if b"/vbs-" in argv or b"virt-launcher-bench-" in argv:
                found.add(int(entry))
    return found


async def bench(*args: str, wait_s: float = 240) -> dict[str, object]:
    before = ours()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "bench", "start", *args, "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), wait_s)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)  # stdout holds the JSON and nothing else
    assert isinstance(result, dict)
    for _ in range(50):  # a killed process lingers until it is reaped
        if not (left := ours() - before):
            break
        await asyncio.sleep(0.1)
    assert not left, f"left running: {left}"
    return result


def check(result: dict[str, object], *, vms: int, hypervisor: str) -> None:
    for key in KEYS:
        assert key in result, key
    assert (result["vms"], result["hypervisor"]) == (vms, hypervisor)
    assert result["running"] == result["raw_running"] == vms  # every VM reached Running
    assert result["failed"] == {}


async def test_bench_start_on_the_test_driver() -> None:
    result = await bench("--vms", "5", "--hypervisor", "test")
    check(result, vms=5, hypervisor="test")
    assert result["kvm"] is False
    assert "boots" not in result  # no guest boots on the test driver


@pytest.mark.kvm
async def test_bench_start_on_real_qemu() -> None:
    for ok, why in (qemu_available(), kvm_usable()):
        if not ok:
            pytest.skip(why)
    result = await bench("--vms", "3", "--hypervisor", "qemu", "--boots", "1")
    check(result, vms=3, hypervisor="qemu")
    assert result["kvm"] is (accelerator()[0] == "kvm")  # TCG where KVM is PVM
    # The boot phase: one tiny guest booted each way, timed to its agent connecting.
    assert (result["boots"], len(result["boot_ms"]), len(result["raw_boot_ms"])) == (1, 1, 1)
    assert result["boot_ratio_p50"] == result["boot_p50_ms"] / result["raw_boot_p50_ms"]
