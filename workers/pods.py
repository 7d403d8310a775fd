"""Pod drivers: how a node runs the launcher of each VM (KubeVirt's virt-launcher pod).

`PodDriver` is what the node asks of a driver; `ProcessPods` runs a local child process per VM
(`KubernetesPods`, in `k8spods`, a pod). A launcher that exits without being asked is reported
through `on_exit`, which the node's `Launchers` turns into a `LauncherFailed` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

ExitHandler = Callable[[str, int], Awaitable[None]]


class PodDriver(Protocol):
    """How a node runs launchers: every operation idempotent, a pod known by its name."""

    on_exit: ExitHandler

    def running(self) -> set[str]: ...

    async def create(self, pod: str, *, namespace: str = "default") -> str: ...

    async def delete(self, pod: str) -> None: ...

    async def adopt(self, wanted: Mapping[str, str]) -> set[str]: ...

    async def close(self) -> None: ...


def pod_name(name: str, vmi_uid: str) -> str:
    return f"virt-launcher-{name}-{vmi_uid[:5]}"


class ProcessPods:
    def __init__(self, on_exit: ExitHandler) -> None:
        self.on_exit = on_exit
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._leaving: set[str] = set()

    def running(self) -> set[str]:
        return {p for p, proc in self._procs.items() if proc.returncode is None}

    def pid(self, pod: str) -> int | None:
        proc = self._procs.get(pod)
        return proc.pid if proc and proc.returncode is None else None

    async def create(self, pod: str, *, namespace: str = "default") -> str:
        del namespace  # a local process has no namespace; accepted for the kubernetes driver
        if pod in self.running():
            return pod  # idempotent: a redelivered start finds its launcher
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.launcher", "--pod", pod,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        await proc.stdout.readline()  # "ready": the pod is up
        self._procs[pod] = proc
        self._watchers[pod] = asyncio.create_task(self._watch(pod, proc), name=f"pod-{pod}")
        return pod

    async def _watch(self, pod: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._procs.pop(pod, None)
        self._watchers.pop(pod, None)
        if pod in self._leaving:
            self._leaving.discard(pod)
            return
        await self.on_exit(pod, code)

    async def delete(self, pod: str) -> None:
        proc = self._procs.get(pod)
        if proc is None or proc.returncode is not None:
            return
        self._leaving.add(pod)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        watcher = self._watchers.get(pod)
        if watcher is not None:
            await asyncio.shield(watcher)

    async def adopt(self, wanted: Mapping[str, str]) -> set[str]:
        """After a restart of the worker: launchers died with the old one (PR_SET_PDEATHSIG), so
        each VM it keeps gets a new one. None is ever missing."""
        for pod, namespace in wanted.items():
            await self.create(pod, namespace=namespace)
        return set()

    async def close(self) -> None:
        for pod in list(self._procs):
            await self.delete(pod)
