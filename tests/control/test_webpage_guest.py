"""The web timeline marks the guest's own doings: a shutdown, a crash, a reboot (issue 16).

Pure: a VM's history folded line by line (`bus.history.Timeline`, as `virtbus history` and the
web view read it) and drawn by `orchestrator.webpage`; the marks are read back from the SVG.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from bus.history import Timeline
from events import model as m
from events.envelope import Envelope, Recorded
from orchestrator.webpage import timeline

T0 = datetime(2026, 12, 7, tzinfo=UTC)
SPEC = {"runStrategy": "Always", "template": {"spec": {"domain": {}}}}


def test_guest_shutdown_crash_and_reboot_are_marks_below_the_band() -> None:
    life = [
        m.VMCreated(spec=SPEC), m.VMStartRequested(), m.VMScheduled(node="n1", vmi_uid="u1"),
        m.DomainStarted(node="n1"), m.DomainRebooted(node="n1"),
        m.DomainStopped(node="n1", reason="crashed", detail="panicked"),
        m.VMScheduled(node="n1", vmi_uid="u2"), m.DomainStarted(node="n1"),
        m.DomainStopped(node="n1", reason="shutdown"),
        m.VMScheduled(node="n1", vmi_uid="u3"), m.DomainStarted(node="n1"),
        m.DomainStopped(node="n1", reason="destroyed"),  # the node's doing, not the guest's
    ]  # fmt: skip
    t = Timeline()
    entries = [
        t.event(Recorded(Envelope(
            id=str(i), source="/n1", type=m.CE_TYPE[type(e)], subject="vm/default/g",
            time=T0 + timedelta(seconds=i), version=i + 1, data=e,
        ), i + 1, f"virt.vm.default.g.{m.TOKEN[type(e)]}", ""))
        for i, e in enumerate(life)
    ]  # fmt: skip
    page = timeline("default", "g", entries, now=T0 + timedelta(seconds=len(life)))
    marks = re.findall(r'<line class="mark (guest-[a-z]+)" data-type="[^"]+" x1="([0-9.]+)"', page)
    # at the events' times: 4, 5 and 8 s of the 12 s the page spans, 1000 wide
    want = [("guest-reboot", "333.3"), ("guest-crash", "416.7"), ("guest-shutdown", "666.7")]
    assert marks == want
