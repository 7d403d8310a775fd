"""Guest-agent sessions, the node's end: `virtbus guestosinfo`, `userlist` and `fslist`,
answered by the QEMU guest agent of a VM running here, as virtctl's are (`soft-reboot` is a
command, `SoftRebootVM`, recorded in the log with who asked).

The node asks libvirt (virDomainGetGuestInfo, the agent's own `guest-info`) and puts the answer
in the session's reply, shaped as KubeVirt's objects (`VirtualMachineInstanceGuestAgentInfo`,
`...GuestOSUserList`, `...FileSystemList`); the session then ends at once. A VM whose agent is
not connected is refused, as KubeVirt refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bus.store import EventStore
from bus.tunnel import Pipe, SessionOpen
from events.errors import HypervisorError, ValidationError
from workers.hypervisor import Hypervisor
from workers.sessions import Body, running_here

VERBS: Final = ("guestosinfo", "userlist", "fslist")
_OS_KEYS: Final = {"name": "name", "kernelRelease": "kernel-release", "version": "version",
                   "prettyName": "pretty-name", "versionId": "version-id",
                   "kernelVersion": "kernel-version", "machine": "machine", "id": "id"}  # fmt: skip


def _items(info: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """libvirt's flat `prefix.N.key` entries, one dict per N."""
    count = int(info.get(f"{prefix}.count", 0))
    out: list[dict[str, Any]] = []
    for i in range(count):
        head = f"{prefix}.{i}."
        out.append({k[len(head) :]: v for k, v in info.items() if k.startswith(head)})
    return out


def users(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """KubeVirt's VirtualMachineInstanceGuestOSUser entries (login time in seconds)."""
    out = []
    for u in _items(info, "user"):
        user: dict[str, Any] = {"userName": u.get("name", "")}
        if u.get("domain"):
            user["domain"] = u["domain"]
        if "login-time" in u:
            user["loginTime"] = int(u["login-time"]) / 1000
        out.append(user)
    return out


def filesystems(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """KubeVirt's VirtualMachineInstanceFileSystem entries."""
    return [{
        "diskName": fs.get("name", ""), "mountPoint": fs.get("mountpoint", ""),
        "fileSystemType": fs.get("fstype", ""), "usedBytes": int(fs.get("used-bytes", 0)),
        "totalBytes": int(fs.get("total-bytes", 0)),
    } for fs in _items(info, "fs")]  # fmt: skip


def guest_os_info(info: Mapping[str, Any], *, version: str) -> dict[str, Any]:
    """KubeVirt's VirtualMachineInstanceGuestAgentInfo."""
    timezone = info.get("timezone.name", "")
    if "timezone.offset" in info:
        timezone = f"{timezone}, {info['timezone.offset']}"
    return {
        "guestAgentVersion": version,
        "hostname": info.get("hostname", ""),
        "os": {k: info[f"os.{v}"] for k, v in _OS_KEYS.items() if f"os.{v}" in info},
        "timezone": timezone,
        "userList": users(info),
        "fsInfo": {"disks": filesystems(info)},
    }


class GuestAgent:
    def __init__(self, hv: Hypervisor, store: EventStore, *, node: str) -> None:
        self.hv = hv
        self.store = store
        self.node = node

    async def open(self, req: SessionOpen) -> tuple[dict[str, Any], Body]:
        verb = req.params.get("verb")
        if verb not in VERBS:
            raise ValidationError(f"verb: {verb!r} is not one of {', '.join(VERBS)}")
        s = await running_here(self.store, req, node=self.node)
        if not s.agent_connected:
            raise ValidationError(f'VirtualMachineInstance "{req.name}" has no guest agent '
                                  "connected")  # fmt: skip
        dom = f"{req.namespace}_{req.name}"
        try:
            answer = await self._ask(dom, verb)
        except HypervisorError as err:
            raise ValidationError(f"the guest agent of {req.name} did not answer: "
                                  f"{err.message}") from err  # fmt: skip

        async def body(pipe: Pipe) -> None:
            return None  # the answer went with the reply

        return answer, body

    async def _ask(self, dom: str, verb: str) -> dict[str, Any]:
        info = await self.hv.guest_info(dom)
        if verb == "userlist":
            return {"metadata": {}, "items": users(info)}
        if verb == "fslist":
            return {"metadata": {}, "items": filesystems(info)}
        about = await self.hv.agent_command(dom, '{"execute": "guest-info"}')
        version = str(about.get("version", "")) if isinstance(about, dict) else ""
        return guest_os_info(info, version=version)
