"""The read-only web view, loaded in real headless Chromium (Debian `chromium`): the VM list and
a VM's timeline after a real run on the test-driver stack (two lives, a rejected command).

Chromium runs the page and prints the DOM it built (`--dump-dom`); the test reads what it shows.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import msgspec
import pytest
from driverstack import Stack, seed
from nats.aio.msg import Msg
from waits import settle

from bus.client import Rejected, send
from bus.history import entries, read_history
from bus.store import EventStore
from events import commands as c
from events.errors import ValidationError
from events.names import Ref
from orchestrator.readmodel import ReadModel
from orchestrator.web import Web, configured_port

CHROMIUM = shutil.which("chromium")


class Dom(HTMLParser):
    """Every element's tag and attributes, and the text inside `<title>`/links/cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, cls: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if cls in a.get("class", "").split()]


async def chromium(url: str, profile: Path, *, screenshot: str = "") -> str:
    """The DOM headless Chromium builds for `url` (or a PNG of it, with `screenshot`)."""
    assert CHROMIUM is not None
    what = (
        [f"--screenshot={screenshot}", "--window-size=1100,900"] if screenshot else ["--dump-dom"]
    )
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={profile}", *what, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await settle("chromium", proc.wait())
    assert proc.returncode == 0
    return out.decode()


async def until_status(st: Stack, name: str, status: str) -> None:
    for _ in range(400):
        if (await st.state(name)).status == status:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{name} never {status}")


@pytest.fixture
async def web(stack: Stack, tmp_path: Path) -> AsyncIterator[Web]:
    async with ReadModel(tmp_path / "web.sqlite", EventStore(stack.nc), verify=False) as rm:
        stop = asyncio.Event()
        live = asyncio.create_task(rm.run(stop), name="web-readmodel")
        w = Web(stack.nc, rm)
        await w.start()
        try:
            yield w
        finally:
            await w.stop()
            stop.set()
            await settle("the web read model", live)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make setup)")
async def test_chromium_shows_the_vm_list_and_a_timeline(
    stack: Stack, web: Web, tmp_path: Path,
) -> None:  # fmt: skip
    st = stack
    st.provide_seed_volumes("node-a")
    await st.node("node-a")
    await send(st.nc, msgspec.structs.replace(seed("pictured"), actor="alice"))
    await send(st.nc, seed("bystander"))
    await send(st.nc, c.StartVM(name="pictured", actor="alice"))
    await until_status(st, "pictured", "Running")
    await send(st.nc, c.PauseVM(name="pictured", actor="bob"))
    await until_status(st, "pictured", "Paused")
    with pytest.raises(Rejected):
        await send(st.nc, c.PauseVM(name="pictured", actor="mallory"))
    await send(st.nc, c.StopVM(name="pictured", actor="bob"))
    await until_status(st, "pictured", "Stopped")
    await send(st.nc, c.DeleteVM(name="pictured", actor="carol"))
    await until_status(st, "pictured", "Deleted")
    await send(st.nc, msgspec.structs.replace(seed("pictured"), actor="dave"))
    for _ in range(100):  # the page's read model trails the log a little
        if (vm := await web.readmodel.vm("default", "pictured")) and vm.exists:
            break
        await asyncio.sleep(0.05)

    listing = Dom(await chromium(web.url + "/", tmp_path / "profile"))
    rows = {a["data-name"]: a["data-status"] for a in listing.having("vm")}
    assert rows == {"bystander": "Stopped", "pictured": "Stopped"}
    links = [a["href"] for tag, a in listing.elements if tag == "a"]
    assert "/vm/default/pictured" in links

    page = Dom(await chromium(web.url + "/vm/default/pictured", tmp_path / "profile"))
    bands = [a["data-status"] for a in page.having("band")]
    # Each status stretch is one band, in the order the VM lived them.
    for wanted in (["Stopped", "Starting", "Running", "Paused"], ["Stopping", "Stopped",
                   "Terminating", "Deleted", "Stopped"]):  # fmt: skip
        assert any(bands[i : i + len(wanted)] == wanted for i in range(len(bands))), bands
    assert all(float(a["width"]) >= 2 for a in page.having("band"))
    assert len(page.having("life")) == 2 and "life 2" in page.text
    commands = page.having("command")
    assert [a["data-type"] for a in commands] == [
        "ApplyVM", "StartVM", "PauseVM", "PauseVM", "StopVM", "DeleteVM", "ApplyVM",
    ]  # fmt: skip
    assert [a["data-type"] for a in page.having("rejection")] == ["io.virtbus.command.rejected.v1"]
    tips = " ".join(page.text)
    assert "PauseVM by mallory: PauseVM: rejected: VMI is already paused" in tips
    history = entries(await read_history(st.nc, Ref.vm("pictured")))
    assert [a["data-category"] for a in page.having("entry")] == [e.category for e in history]
    assert re.search(r"Running from \S+ to \S+", tips)
    if shot := os.environ.get("VIRTBUS_WEB_SCREENSHOT"):  # a picture for a human, on request
        await chromium(web.url + "/vm/default/pictured", tmp_path / "profile", screenshot=shot)


async def test_the_web_view_is_read_only_and_says_what_it_cannot_show(web: Web) -> None:
    async def http(method: str, path: str) -> tuple[str, str]:
        reader, writer = await asyncio.open_connection(web.host, web.port)
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, body = data.decode().partition("\r\n\r\n")
        return head.splitlines()[0], body

    assert (await http("POST", "/"))[0] == "HTTP/1.1 405 Method Not Allowed"
    assert (await http("GET", "/nowhere"))[0] == "HTTP/1.1 404 Not Found"
    missing = await http("GET", "/vm/default/never-made")
    assert missing[0] == "HTTP/1.1 404 Not Found" and "vm/default/never-made" in missing[1]
    bad = await http("GET", "/vm/default/Not_A_Name")
    assert bad[0] == "HTTP/1.1 400 Bad Request" and "DNS-1123" in bad[1]
    head = await http("HEAD", "/")
    assert head == ("HTTP/1.1 200 OK", "")
    empty = await http("GET", "/")
    assert "No virtual machines yet." in empty[1]


async def test_a_timeline_reads_the_history_index_in_process(stack: Stack, web: Web) -> None:
    """The web view holds the read model: a VM's page reads its history index there, asking
    nothing of virtbus-api over the bus."""
    await send(stack.nc, seed("indexed"))
    await send(stack.nc, c.StartVM(name="indexed"))
    for _ in range(100):  # the page's read model trails the log a little
        if [v for v, _ in (await web.readmodel.history_index(Ref.vm("indexed")))[0]] == [1, 2]:
            break
        await asyncio.sleep(0.05)
    asked: list[str] = []

    async def spy(msg: Msg) -> None:
        asked.append(msg.subject)

    sub = await stack.nc.subscribe("virt.api.>", cb=spy)
    try:
        status, html = await web.page("/vm/default/indexed")
        await stack.nc.flush()
    finally:
        await sub.unsubscribe()
    assert (status, asked) == (200, [])
    assert "StartVM" in html


def test_the_web_port_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIRTBUS_WEB_PORT", raising=False)
    assert configured_port() is None
    monkeypatch.setenv("VIRTBUS_WEB_PORT", "8080")
    assert configured_port() == 8080
    for bad in ("http", "-1", "70000"):
        monkeypatch.setenv("VIRTBUS_WEB_PORT", bad)
        with pytest.raises(ValidationError, match=f"VIRTBUS_WEB_PORT: '{bad}' is not a port"):
            configured_port()
