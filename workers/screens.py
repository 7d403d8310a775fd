"""`virtbus vnc screenshot`, the node's end: a running domain's screen as a PNG, as virtctl's.

libvirt's virDomainScreenshot streams the display's current frame in the hypervisor's format:
QEMU's is PPM (P6), the test driver's PNG. virtctl promises PNG, so a PPM is encoded here (zlib,
no imaging library) and the image goes to the client over the session's pipe, then the pipe closes.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from bus.store import EventStore
from bus.tunnel import Pipe, SessionOpen
from events.errors import HypervisorError, ValidationError
from workers.hypervisor import Hypervisor
from workers.sessions import Body, running_here

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CHUNK = 1 << 16


def _grab(dom: Any) -> tuple[str, bytes]:
    """The screen of head 0 and its MIME type (runs in libvirt's thread pool)."""
    stream = dom.connect().newStream(0)
    try:
        mime = str(dom.screenshot(stream, 0))
        data = bytearray()
        while chunk := stream.recv(_CHUNK):
            if isinstance(chunk, int):  # -2: would block (not for a blocking stream)
                break
            data += chunk
        stream.finish()
    except BaseException:
        stream.abort()
        raise
    return mime, bytes(data)


def _ppm_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, maxval, offset of the pixels) of a binary PPM (P6), comments allowed."""
    fields: list[int] = []
    at = 2
    while len(fields) < 3:
        while data[at : at + 1].isspace():
            at += 1
        if data[at : at + 1] == b"#":
            at = data.index(b"\n", at) + 1
            continue
        end = at
        while data[end : end + 1].isdigit():
            end += 1
        fields.append(int(data[at:end]))
        at = end
    return fields[0], fields[1], fields[2], at + 1  # one whitespace byte ends the header


def ppm_to_png(data: bytes) -> bytes:
    """A binary PPM (8 bits a sample) as a PNG (RGB, no filter)."""
    if not data.startswith(b"P6"):
        raise ValueError("not a binary PPM (P6)")
    width, height, maxval, at = _ppm_header(data)
    if maxval != 255:
        raise ValueError(f"a PPM of {maxval} levels; only 8 bits a sample are read")
    stride = width * 3
    pixels = data[at : at + stride * height]
    rows = b"".join(b"\0" + pixels[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6))
            + chunk(b"IEND", b""))  # fmt: skip


class Screens:
    def __init__(self, hv: Hypervisor, store: EventStore, *, node: str) -> None:
        self.hv = hv
        self.store = store
        self.node = node

    async def screenshot(self, req: SessionOpen) -> tuple[dict[str, Any], Body]:
        await running_here(self.store, req, node=self.node)
        try:
            mime, data = await self.hv.on_domain(f"{req.namespace}_{req.name}", _grab)
        except HypervisorError as err:
            raise ValidationError(f"Can't access VMI {req.name}: {err.message}") from err
        if mime != "image/png":
            try:
                data = ppm_to_png(data)
            except (ValueError, IndexError) as err:
                raise ValidationError(f"the screen of {req.name} came as {mime}, which virtbus "
                                      f"cannot make a PNG of: {err}") from err  # fmt: skip

        async def body(pipe: Pipe) -> None:
            await pipe.send(data)
            await pipe.close("done")

        return {"mime": "image/png", "size": len(data)}, body
