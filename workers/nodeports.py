"""kube-proxy's part of a node worker: NodePort Services reached on the node itself.

Each NodePort (or LoadBalancer) Service holds a nodePort per port (events/services.py); every
node worker listens on 127.0.0.1:<nodePort> and forwards what comes there to the Service's running
VMI (its address on the VM network, and the port's targetPort), as kube-proxy does on each
Kubernetes node. Level-triggered: the listeners are derived from the log (the Services' fold and
their VMs' folds), opened, retargeted and closed as they change. Several workers on one machine
each hold their own listener on the same port (SO_REUSEPORT), as each Kubernetes node has its
own; the kernel spreads connections among them.

A node without the VM network (the test driver, a QEMU node without --vm-network) listens all
the same, so the allocation shows and follows, but closes each connection, saying why in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Final, cast

from bus.store import EventStore
from bus.vms import VMRepository
from events.envelope import Recorded
from events.names import Ref, aggregate_key
from events.services import ServiceState, apply_service, holders
from events.state import RUNNING, VMState, apply

log = logging.getLogger("virtbus.nodeports")
HOST: Final = "127.0.0.1"
CONNECT_S: Final = 10.0
CHUNK: Final = 65536
RESTART_S: Final = 1.0  # a follow that failed (the bus away) starts again after this
SERVICES: Final = "virt.service.>"
UDP_IDLE_S: Final = 120.0  # a UDP client's upstream socket is closed after this long unused


@dataclass
class Target:
    """Where a nodePort forwards: the Service (for log lines), its VMI's address ("" while none
    runs) and the target port (a name cannot be resolved: virtbus VMs name no ports)."""

    service: str
    ip: str
    port: int | str


class NodePorts:
    """The node's nodePort listeners, following the log until cancelled."""

    def __init__(self, store: EventStore, *, node: str, vm_network: bool, host: str = HOST) -> None:
        self.store = store
        self.node = node
        self.vm_network = vm_network
        self.host = host
        self.services: dict[str, ServiceState] = {}
        self.vms: dict[str, VMState] = {}  # only the VMs a Service names
        self.listeners: dict[tuple[int, str], Listener] = {}  # (nodePort, TCP|UDP)
        self.position = 0  # the log's sequence the listeners agree with
        self._moved = asyncio.Event()

    async def run(self) -> None:
        """Follow the log until cancelled; a failed follow is started again from a fresh read,
        the listeners kept meanwhile (level-triggered: the next sync corrects them)."""
        try:
            while True:
                try:
                    await self._follow()
                except Exception:
                    log.exception("node %s: following Services failed; again in %ss", self.node,
                                  RESTART_S)  # fmt: skip
                await asyncio.sleep(RESTART_S)
        finally:
            for listener in self.listeners.values():
                await listener.close()
            self.listeners.clear()

    async def _follow(self) -> None:
        self.services.clear()
        self.vms.clear()
        start = await self.store.position()
        await self.store.replay(self._fold, subjects=[SERVICES], verify=False)
        await self.sync()
        self._at(start)
        while True:
            # Only the VMs a NodePort Service names: a node is not handed every VM's events.
            watched = self._watched()
            tail = self.store.follow(from_seq=self.position + 1, subjects=[SERVICES, *watched])
            async with contextlib.aclosing(tail):
                async for rec in tail:
                    if self._fold(rec):
                        await self.sync()
                    self._at(rec.seq)
                    if self._watched() != watched:
                        break  # another VM named (or one no longer): follow those instead

    def _watched(self) -> list[str]:
        return [f"{key}.>" for key in sorted(self.vms)]

    def _at(self, seq: int) -> None:
        self.position = max(self.position, seq)
        self._moved.set()
        self._moved = asyncio.Event()

    async def caught_up(self, seq: int) -> None:
        """Return once the listeners agree with the log up to `seq` (a Service's or VM's event:
        the only ones followed)."""
        while self.position < seq:
            await self._moved.wait()

    def _fold(self, rec: Recorded) -> bool:
        """Fold one event of a Service, or of a VM a Service names; whether anything changed."""
        key, env = aggregate_key(rec.subject), rec.envelope
        if rec.subject.startswith("virt.service."):
            before = self.services.get(key) or ServiceState()
            if env.version <= before.version:  # replayed already
                return False
            self.services[key] = apply_service(before, env)
            return True
        s = self.vms.get(key)
        if s is None or env.version <= s.version:
            return False
        self.vms[key] = apply(s, env)
        return True

    async def sync(self) -> None:
        """Make the listeners what the folds say: one per Service nodePort, aimed at its VMI."""
        wanted: dict[tuple[int, str], Target] = {}
        needed: set[str] = set()
        for node_port, svc in holders(self.services.values()).items():
            vm_key = Ref.vm(svc.vm, svc.namespace).prefix
            needed.add(vm_key)
            if vm_key not in self.vms:
                self.vms[vm_key], _ = await VMRepository(self.store).get(
                    Ref.vm(svc.vm, svc.namespace)
                )
            s = self.vms[vm_key]
            ip = s.ip if s.exists and not s.deleted and s.phase == RUNNING else ""
            for p in svc.spec.get("ports", []):
                if p.get("nodePort") == node_port:
                    target = Target(f"{svc.namespace}/{svc.name}", ip,
                                    p.get("targetPort", p.get("port")))  # fmt: skip
                    wanted[(node_port, p.get("protocol", "TCP"))] = target
        for key in set(self.vms) - needed:
            del self.vms[key]
        for where in set(self.listeners) - set(wanted):
            await self.listeners.pop(where).close()
            log.info("node %s: nodePort %s/%s closed", self.node, *where)
        for where, target in wanted.items():
            if (listener := self.listeners.get(where)) is not None:
                listener.target = target
                continue
            listener = Listener(self, port=where[0], udp=where[1] == "UDP", target=target)
            try:
                await listener.open()
            except OSError as err:  # tried again at the next change
                log.warning("node %s: nodePort %s/%s (service %s) cannot listen: %s", self.node,
                            where[0], where[1], target.service, err)  # fmt: skip
                continue
            self.listeners[where] = listener
            log.info("node %s: nodePort %s/%s open for service %s", self.node, where[0], where[1],
                     target.service)  # fmt: skip

    def refusal(self, target: Target) -> str:
        """Why a connection to `target` cannot be forwarded from here ("" if it can)."""
        if not self.vm_network:
            return (f"node {self.node} has no VM network: the VMI's address cannot be reached "
                    "here (QEMU nodes with --vm-network)")  # fmt: skip
        if not target.ip:
            return "no VMI of it is running"
        if not isinstance(target.port, int):
            return f"targetPort {target.port!r} names a port: virtbus forwards to numbers only"
        return ""


class Listener:
    """One nodePort's socket on the node, and the connections (or UDP clients) it forwards."""

    def __init__(self, proxy: NodePorts, *, port: int, udp: bool, target: Target) -> None:
        self.proxy = proxy
        self.port = port
        self.udp = udp
        self.target = target
        self._server: asyncio.Server | None = None
        self._datagrams: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: dict[tuple[str, int], _Upstream] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.udp:
            self._datagrams, _ = await loop.create_datagram_endpoint(
                lambda: _Downstream(self), local_addr=(self.proxy.host, self.port),
                reuse_port=True,
            )  # fmt: skip
            return
        self._server = await asyncio.start_server(self._accepted, self.proxy.host, self.port,
                                                  reuse_port=True)  # fmt: skip

    async def close(self) -> None:
        """Stop listening, and end what is being forwarded: the Service no longer says so."""
        if self._server is not None:
            self._server.close()
        if self._datagrams is not None:
            self._datagrams.close()
        for client in list(self._clients.values()):
            client.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _refused(self, target: Target) -> bool:
        if why := self.proxy.refusal(target):
            log.warning("node %s: nodePort %s (service %s) refused a connection: %s",
                        self.proxy.node, self.port, target.service, why)  # fmt: skip
        return bool(why)

    # --- TCP ---------------------------------------------------------------------------------

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.target
        if self._refused(target):
            return
        assert isinstance(target.port, int)
        try:
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection(target.ip, target.port), CONNECT_S
            )
        except (OSError, TimeoutError) as err:
            log.warning("node %s: nodePort %s (service %s): cannot connect to %s:%s: %s",
                        self.proxy.node, self.port, target.service, target.ip, target.port,
                        err or "timed out")  # fmt: skip
            return
        try:
            await asyncio.gather(_pump(reader, up_w), _pump(up_r, writer))
        finally:
            up_w.close()

    # --- UDP ---------------------------------------------------------------------------------

    def datagram(self, data: bytes, client: tuple[str, int]) -> None:
        if (up := self._clients.get(client)) is not None and up.target == self.target:
            up.send(data)
            return
        if up is not None:  # the Service's VMI moved: a new upstream
            up.close()
        target = self.target
        if self._refused(target):
            return
        assert isinstance(target.port, int)
        task = asyncio.create_task(self._connect_udp(client, target, data),
                                   name=f"nodeport-{self.port}-udp")  # fmt: skip
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_udp(self, client: tuple[str, int], target: Target, first: bytes) -> None:
        assert isinstance(target.port, int)
        up = _Upstream(self, client, target)
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: up, remote_addr=(target.ip, target.port)
            )
        except OSError as err:
            log.warning("node %s: nodePort %s/UDP (service %s): %s", self.proxy.node, self.port,
                        target.service, err)  # fmt: skip
            return
        self._clients[client] = up
        up.send(first)

    def answer(self, data: bytes, client: tuple[str, int]) -> None:
        if self._datagrams is not None and not self._datagrams.is_closing():
            self._datagrams.sendto(data, client)


class _Downstream(asyncio.DatagramProtocol):
    """The nodePort's UDP socket: each client's datagrams go to its own upstream socket."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.listener.datagram(data, addr)


class _Upstream(asyncio.DatagramProtocol):
    """One UDP client's socket connected to the VMI: its answers go back to that client."""

    def __init__(self, listener: Listener, client: tuple[str, int], target: Target) -> None:
        self.listener, self.client, self.target = listener, client, target
        self.transport: asyncio.DatagramTransport | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (3.11's selector datagram transport is no DatagramTransport subclass, though one)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(data)
            self._touch()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.listener.answer(data, self.client)
        self._touch()

    def error_received(self, exc: Exception) -> None:  # the guest's "port unreachable"
        log.debug("nodePort %s/UDP upstream: %s", self.listener.port, exc)

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(UDP_IDLE_S, self.close)

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.listener._clients.get(self.client) is self:
            del self.listener._clients[self.client]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until its end, then half-close the other side (ssh and the like end a
    session by closing one direction first)."""
    with contextlib.suppress(OSError):  # reset, or the other side gone: this direction ends
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
