"""The VM network on a node: per VM, a network namespace holding the instance's address (the pod's
part in KubeVirt), with the guest behind it by KubeVirt's `masquerade` rules.

Per domain D (names from a hash of D, short enough for interface names):
- netns `vb-X`, its `eth0` (one end of a veth pair) holding the VMI address as a /32, default
  route through the host end `vbh-X` (link-local next hop, answered by proxy ARP: a routed
  design, so nothing is shared between VMs but the host's routing table);
- the host routes the VMI address to `vbh-X`, so the host, and the VMs of every node on it,
  reach each VMI address;
- the tap `vbt-X` is made on the host (libvirt hands it to QEMU there, `managed='no'`), then
  moved into the netns once QEMU holds it: there it is the guest's gateway, 10.0.2.1/24, and a
  dnsmasq there gives the guest 10.0.2.2/24 by DHCP, as KubeVirt's masquerade binding does;
- in the netns, NAT: the guest's traffic leaves behind the VMI address, and every port of the
  VMI address is forwarded inward to 10.0.2.2 (KubeVirt forwards all when no `ports` are listed);
- or, for the `bridge` binding, no NAT: the guest itself holds the VMI address, given by DHCP
  with the pool's prefix and gateway (KubeVirt gives the pod's); the netns routes it to the tap,
  holds the gateway address there and answers ARP for the rest of the pool (proxy ARP), so the
  guest's traffic to other VMIs and beyond goes through the netns and the host's routes.
Everything is removed with the domain (`remove`), also what a crashed worker left (`prepare`
removes first). Root and `ip`, `iptables` and `dnsmasq` are needed; a node without them runs
its VMs on QEMU's user networking, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Final

from events.errors import VirtbusError

GUEST: Final = "10.0.2.2"  # KubeVirt's masquerade addresses, as the guest sees them
GATEWAY: Final = "10.0.2.1"
GATEWAY_MAC: Final = "02:00:0a:00:02:01"  # locally administered, alone on each VM's own link
NEXT_HOP: Final = "169.254.1.1"  # the netns's default route: the host end answers by proxy ARP
TOOLS: Final = ("ip", "iptables", "dnsmasq")
DHCP_READY_S: Final = 5.0
log = logging.getLogger("virtbus.vmnet")


class NetworkError(VirtbusError):
    """The VM network could not be made for a domain (a command failed, a tool is missing)."""


def names(dom: str, *, node: str) -> tuple[str, str, str]:
    """(netns, host veth end, tap) of domain `dom` on `node`: nodes on one machine share its
    network namespace, so a migration's target never names (nor removes) the source's."""
    x = hashlib.sha1(f"{node}/{dom}".encode()).hexdigest()[:8]
    return f"vb-{x}", f"vbh-{x}", f"vbt-{x}"


def bridged(spec: dict[str, Any]) -> bool:
    """Whether the VM's first NIC has the `bridge` binding (written, or KubeVirt's default)."""
    devices = ((spec.get("template") or {}).get("spec") or {}).get("domain", {}).get("devices", {})
    nics = devices.get("interfaces") or []
    first = nics[0] if isinstance(nics, list) and nics and isinstance(nics[0], dict) else None
    return first is not None and not any(k in first for k in ("masquerade", "slirp", "sriov",
                                                                "passt", "binding"))  # fmt: skip


def vm_network_of(data_dir: Path, *, node: str) -> VMNetwork | None:
    """The node's VM network, or None (said in the log) where it cannot be made."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        why = f"{', '.join(missing)} missing" if missing else "not root"
        log.warning("no VM network on this node (%s): its VMs use QEMU user networking", why)
        return None
    return VMNetwork(data_dir / "net", node=node)


async def _run(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


class VMNetwork:
    def __init__(self, run_dir: Path, *, node: str) -> None:
        # dnsmasq's lease and log files, one dir per domain; absolute, as dnsmasq works
        # from / (a node started with a relative --data-dir, as `make run`'s is)
        self.run_dir = run_dir.absolute()
        self.node = node
        self._dnsmasq: dict[str, asyncio.subprocess.Process] = {}  # netns -> its DHCP server

    def names(self, dom: str) -> tuple[str, str, str]:
        return names(dom, node=self.node)

    def _dir(self, dom: str) -> Path:
        return self.run_dir / self.names(dom)[0]

    async def prepare(self, dom: str, *, ip: str, route: bool = True, bridge: str = "") -> str:
        """Make the netns with `ip` and the tap for `dom`; returns the tap's name. A migration's
        target leaves the host's route to `ip` with the source (`route=False`) until the guest
        runs here (`attach`). `bridge`: the pool's CIDR, for a guest that holds `ip` itself."""
        ns, host, tap = self.names(dom)
        await self.remove(dom)  # a crashed worker's leftovers
        await asyncio.to_thread(self._dir(dom).mkdir, parents=True, exist_ok=True)
        inside = ("ip", "-n", ns)
        try:
            await _run("ip", "netns", "add", ns)
            await _run("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0",
                       "netns", ns)  # fmt: skip
            await _run("ip", "link", "set", host, "up")
            await asyncio.to_thread(_sysctl, f"net/ipv4/conf/{host}/proxy_arp", "1")
            await asyncio.to_thread(_sysctl, "net/ipv4/ip_forward", "1")  # VM to VM
            if route:
                await _run("ip", "route", "replace", f"{ip}/32", "dev", host)
            await _run(*inside, "link", "set", "lo", "up")
            if not bridge:  # the netns holds the address; with bridge, the guest does
                await _run(*inside, "addr", "add", f"{ip}/32", "dev", "eth0")
            await _run(*inside, "link", "set", "eth0", "up")
            await _run(*inside, "route", "add", NEXT_HOP, "dev", "eth0", "scope", "link")
            await _run(*inside, "route", "add", "default", "via", NEXT_HOP, "dev", "eth0")
            sysctl = ("ip", "netns", "exec", ns, "sysctl", "-qw")
            await _run(*sysctl, "net.ipv4.ip_forward=1")
            if bridge:  # the host asks who has `ip`: the netns answers for the guest
                await _run(*sysctl, "net.ipv4.conf.eth0.proxy_arp=1")
            else:
                nat = ("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A")
                await _run(*nat, "POSTROUTING", "-s", GUEST, "-o", "eth0", "-j", "SNAT",
                           "--to-source", ip)  # fmt: skip
                await _run(*nat, "PREROUTING", "-i", "eth0", "-d", ip, "-j", "DNAT",
                           "--to-destination", GUEST)  # fmt: skip
            await _run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
            # What `attach` needs to know, whoever calls it (a start, a migration's arrival).
            await asyncio.to_thread((self._dir(dom) / "bridge").write_text,
                                    f"{ip} {bridge}" if bridge else "")  # fmt: skip
        except NetworkError:
            await self.remove(dom)
            raise
        return tap

    async def attach(self, dom: str, *, ip: str = "") -> None:
        """QEMU holds the tap: it moves into the netns as the guest's gateway, with DHCP; with
        `ip` (a migration's target, now running the guest) the host's route to it comes here."""
        ns, host, tap = self.names(dom)
        if ip:
            await _run("ip", "route", "replace", f"{ip}/32", "dev", host)
        d = self._dir(dom)
        inside = ("ip", "-n", ns)
        await _run("ip", "link", "set", tap, "netns", ns)
        # One gateway MAC on every node: a migrated guest's ARP entry for it stays right.
        await _run(*inside, "link", "set", tap, "address", GATEWAY_MAC)
        bridged = (await asyncio.to_thread((d / "bridge").read_text)).split()
        if bridged:  # the guest holds the VMI address, in the pool's network
            guest, net = bridged[0], ipaddress.IPv4Network(bridged[1])
            gateway, mask = str(net.network_address + 1), str(net.netmask)
            # No route to the whole pool here: the other VMIs are reached through the host.
            await _run(*inside, "addr", "add", f"{gateway}/{net.prefixlen}", "dev", tap,
                       "noprefixroute")  # fmt: skip
            await _run(*inside, "link", "set", tap, "up")
            await _run(*inside, "route", "add", f"{guest}/32", "dev", tap)
            await _run(
                "ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{tap}.proxy_arp=1"
            )
        else:
            guest, gateway, mask = GUEST, GATEWAY, "255.255.255.0"
            await _run(*inside, "addr", "add", f"{GATEWAY}/24", "dev", tap)
            await _run(*inside, "link", "set", tap, "up")
        await self._dhcp(ns, d, args=(
            f"--interface={tap}", f"--dhcp-range={guest},{guest},{mask},12h",
            f"--dhcp-option=3,{gateway}",
        ))  # fmt: skip

    async def _dhcp(self, ns: str, d: Path, *, args: tuple[str, ...]) -> None:
        """dnsmasq in the netns, in the foreground as this process's child (asyncio reaps it
        when it ends): daemonized, it would be PID 1's to reap, and a container's PID 1 often
        reaps nothing. Ready once it logs that it started (its sockets bound), or failed,
        saying why."""
        log_file = d / "dnsmasq.log"
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
            "--port=0", "--bind-interfaces", "--except-interface=lo", *args,
            f"--dhcp-leasefile={d / 'leases'}", f"--log-facility={log_file}", "--user=root",
            "--group=root",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._dnsmasq[ns] = proc
        exited = asyncio.create_task(proc.wait(), name=f"vmnet-dnsmasq-{ns}")
        try:
            async with asyncio.timeout(DHCP_READY_S):
                while not exited.done() and not await asyncio.to_thread(_started, log_file):
                    await asyncio.wait({exited}, timeout=0.02)
        except TimeoutError:
            pass  # slow, not failed: the guest's DHCP client asks again
        finally:
            exited.cancel()
        if proc.returncode is not None:
            self._dnsmasq.pop(ns, None)
            assert proc.stderr is not None
            why = (await proc.stderr.read()).decode(errors="replace").strip()
            raise NetworkError(f"dnsmasq in {ns} exited with {proc.returncode}: {why}")

    async def remove(self, dom: str) -> None:
        """Everything `prepare` and `attach` made for `dom`, gone; idempotent."""
        await self._remove(self.names(dom)[0])

    async def sweep(self) -> None:
        """Every namespace this node made, gone (its domains were destroyed with the node)."""
        found = await asyncio.to_thread(lambda: [p.name for p in self.run_dir.glob("vb-*")])
        for ns in found:
            await self._remove(ns)

    async def _remove(self, ns: str) -> None:
        suffix = ns.removeprefix("vb-")
        if (proc := self._dnsmasq.pop(ns, None)) is not None:
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), DHCP_READY_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        # Whatever runs in it (its dnsmasq) would keep the namespace alive once unnamed.
        for pid in (await _run("ip", "netns", "pids", ns, check=False)).split():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid), signal.SIGTERM)
        await _run("ip", "netns", "del", ns, check=False)  # its veth end and the tap go with it
        await _run("ip", "link", "del", f"vbh-{suffix}", check=False)
        await _run("ip", "link", "del", f"vbt-{suffix}", check=False)
        await asyncio.to_thread(shutil.rmtree, self.run_dir / ns, True)


def _started(log_file: Path) -> bool:
    try:
        return b"]: started," in log_file.read_bytes()
    except FileNotFoundError:
        return False


def _sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key).write_text(value)
