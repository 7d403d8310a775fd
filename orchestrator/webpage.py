"""The HTML of the read-only web view: the VM list, and a VM's life as a timeline.

Rendered on the server, no script: the page is a picture of the log that any browser (or
`chromium --dump-dom`) shows as it is. The timeline has one band per stretch of printable status,
commands and rejections as marks above it, migrations, snapshots and the guest's own doings (a
shutdown, a crash, a reboot) as marks below, and a line where each new life of the name begins;
the full history follows as a table. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Final
from urllib.parse import quote

from bus.history import COMMAND, REJECTION, Entry
from events import render
from events.state import VMState

WIDTH: Final = 1000
BAND_Y, BAND_H = 40, 30
COLORS: Final = {
    "Running": "#2e9d4c", "Paused": "#d9a400", "Starting": "#7fc97f", "Stopping": "#f4a261",
    "Stopped": "#9aa5b1", "Terminating": "#e76f51", "Deleted": "#3d3d3d",
    "Migrating": "#4895ef", "CrashLoopBackOff": "#c1121f", "ErrorUnschedulable": "#9d0208",
}  # fmt: skip
MARK_COLORS: Final = {
    "command": "#1d3557", "rejection": "#d00000", "guest-shutdown": "#6c757d",
    "guest-crash": "#c1121f", "guest-reboot": "#f4a261",
}  # fmt: skip
_STYLE: Final = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 3px 10px; border-bottom: 1px solid #ddd; }
td.time { white-space: nowrap; }
svg text { font-size: 11px; }
.legend span { display: inline-block; padding: 2px 6px; margin-right: 4px; color: #fff; }
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def vm_list(states: Iterable[VMState], *, now: datetime) -> str:
    """Every VM the log knows (deleted ones too: their history outlives them)."""
    rows = []
    for s in sorted(states, key=lambda s: (s.namespace, s.name)):
        link = f"/vm/{quote(s.namespace)}/{quote(s.name)}"
        rows.append(
            f'<tr class="vm" data-name="{escape(s.name)}" data-status="{escape(s.status)}">'
            f"<td>{escape(s.namespace)}</td>"
            f'<td><a href="{link}">{escape(s.name)}</a></td>'
            f"<td>{escape(render.age(s.created, now))}</td><td>{escape(s.status)}</td>"
            f"<td>{escape(s.node or '')}</td><td>{s.version}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>NAMESPACE</th><th>NAME</th><th>AGE</th><th>STATUS</th>"
        "<th>NODE</th><th>EVENTS</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        if rows else '<p class="empty">No virtual machines yet.</p>'
    )  # fmt: skip
    return _page("virtbus: virtual machines", f"<h1>Virtual machines</h1>\n{table}")


def _clock(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _x(t: datetime, start: datetime, span: float) -> float:
    return round((t - start).total_seconds() / span * WIDTH, 1)


def _bands(entries: Sequence[Entry], *, start: datetime, end: datetime, span: float) -> list[str]:
    out: list[str] = []
    events = [e for e in entries if e.category != COMMAND and e.status]
    for i, e in enumerate(events):
        if i + 1 < len(events) and events[i + 1].status == e.status:
            continue  # the band goes on; it is drawn once it ends
        first = i
        while first > 0 and events[first - 1].status == e.status:
            first -= 1
        until = events[i + 1].time if i + 1 < len(events) else end
        x0, x1 = _x(events[first].time, start, span), _x(until, start, span)
        tip = f"{e.status} from {render.timestamp(events[first].time)} to {render.timestamp(until)}"
        out.append(
            f'<rect class="band" data-status="{escape(e.status)}" x="{x0}" y="{BAND_Y}" '
            f'width="{max(x1 - x0, 2)}" height="{BAND_H}" fill="{COLORS.get(e.status, "#777")}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    return out


def _mark(e: Entry, *, kind: str, x: float, above: bool) -> str:
    y0, y1 = (BAND_Y - 14, BAND_Y) if above else (BAND_Y + BAND_H, BAND_Y + BAND_H + 14)
    color = MARK_COLORS.get(kind, "#4895ef")
    who = f" by {e.actor}" if e.actor else ""
    tip = f"{render.timestamp(e.time)} {e.type}{who}: {e.summary}"
    return (
        f'<line class="mark {kind}" data-type="{escape(e.type)}" x1="{x}" x2="{x}" y1="{y0}" '
        f'y2="{y1}" stroke="{color}" stroke-width="2"><title>{escape(tip)}</title></line>'
    )


def _guest(e: Entry) -> str:
    """The guest's own doing an entry records (the node saw it through libvirt), or ""."""
    if e.type.endswith(".domain_rebooted.v1"):
        return "guest-reboot"
    if e.type.endswith(".domain_stopped.v1"):
        reason = dict(p.partition("=")[::2] for p in e.summary.split(", ")).get("reason")
        return {"shutdown": "guest-shutdown", "crashed": "guest-crash"}.get(reason or "", "")
    return ""


def timeline(namespace: str, name: str, entries: Sequence[Entry], *, now: datetime) -> str:
    """One VM's history: status bands, marks, lives, then the table of every entry."""
    title = f"{namespace}/{name}"
    if not entries:
        return _page(f"virtbus: {title}", f"<h1>{escape(title)}</h1><p>No history.</p>")
    start = entries[0].time
    end = max(now, entries[-1].time)
    span = max((end - start).total_seconds(), 1e-3)
    parts = _bands(entries, start=start, end=end, span=span)
    life = 0
    for e in entries:
        x = _x(e.time, start, span)
        if e.life != life and e.life > 0:
            life = e.life
            parts.append(
                f'<line class="life" x1="{x}" x2="{x}" y1="10" y2="{BAND_Y + BAND_H + 20}" '
                f'stroke="#000" stroke-dasharray="3,2"/><text x="{x + 3}" y="18">life {life}'
                "</text>"
            )
        if e.category == COMMAND:
            parts.append(_mark(e, kind="command", x=x, above=True))
        elif e.category == REJECTION:
            parts.append(_mark(e, kind="rejection", x=x, above=True))
        elif ".migration_" in e.type or ".snapshot_" in e.type or ".restore_" in e.type:
            kind = "migration" if ".migration_" in e.type else "snapshot"
            parts.append(_mark(e, kind=kind, x=x, above=False))
        elif kind := _guest(e):
            parts.append(_mark(e, kind=kind, x=x, above=False))
    axis = BAND_Y + BAND_H + 28
    parts.append(f'<text class="axis" x="0" y="{axis}">{_clock(start)}</text>'
                 f'<text class="axis" x="{WIDTH}" y="{axis}" text-anchor="end">{_clock(end)}'
                 "</text>")  # fmt: skip
    height = BAND_Y + BAND_H + 34
    svg = (
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{height}" viewBox="-5 0 {WIDTH + 10} {height}">' + "".join(parts) + "</svg>"
    )
    used = dict.fromkeys(e.status for e in entries if e.status and e.category != COMMAND)
    legend = "".join(
        f'<span style="background:{COLORS.get(s, "#777")}">{escape(s)}</span>' for s in used
    )
    rows = "".join(
        f'<tr class="entry" data-category="{escape(e.category)}"><td>{e.life}</td>'
        f'<td class="time">{_clock(e.time)}</td>'
        f"<td>{escape(e.category)}</td><td>{escape(e.type)}</td><td>{escape(e.actor)}</td>"
        f"<td>{escape(e.status)}</td><td>{escape(e.summary)}</td></tr>"
        for e in entries
    )
    body = (
        f'<p><a href="/">all VMs</a></p><h1>{escape(title)}</h1>\n'
        f'<p class="legend">{legend}</p>\n{svg}\n'
        "<table><thead><tr><th>LIFE</th><th>TIME</th><th>CATEGORY</th><th>TYPE</th>"
        f"<th>ACTOR</th><th>STATUS</th><th>SUMMARY</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return _page(f"virtbus: {title}", body)
