"""What a user of each role may publish and subscribe to: NATS permissions the server enforces.

KubeVirt's `kubevirt.io:view|edit|admin` cut, on subjects. Everyone but an admin reads through the
JetStream API's read subjects only (direct gets, consumers, their acks) and asks virtbus-api only
under its own name (`virt.api.<op>.<name>`), with replies to an inbox only it may subscribe to. An
`edit` user also publishes commands, but only to VMs, replica sets and volumes of its namespaces
and only with its own name as the subject's last token: the server refuses a forged actor, a
namespace not granted, an event written straight into the log, and any stream deletion or purge.

Not confined yet (said in the README): reads are not limited to a role's namespaces.
"""

from __future__ import annotations

from typing import Final

from bus.credentials import Permissions
from events.names import COMMANDS_STREAM, EVENTS_STREAM, HEARTBEAT_BUCKET

ROLES: Final = ("admin", "edit", "view")
EDITABLE: Final = ("vm", "rs", "volume")  # what `edit` commands; nodes and webhooks are admin's

_READ_STREAMS: Final = (EVENTS_STREAM, COMMANDS_STREAM)


def _reads() -> tuple[str, ...]:
    api = "$JS.API"
    per_stream = [
        subject
        for s in _READ_STREAMS
        for subject in (
            f"{api}.DIRECT.GET.{s}", f"{api}.DIRECT.GET.{s}.>", f"{api}.STREAM.INFO.{s}",
            f"{api}.CONSUMER.CREATE.{s}", f"{api}.CONSUMER.CREATE.{s}.>",
            f"{api}.CONSUMER.INFO.{s}.*", f"{api}.CONSUMER.DELETE.{s}.*",
            f"{api}.CONSUMER.MSG.NEXT.{s}.*", f"$JS.ACK.{s}.>",
        )
    ]  # fmt: skip
    heartbeats = f"{api}.DIRECT.GET.KV_{HEARTBEAT_BUCKET}.>"
    return (f"{api}.INFO", f"{api}.STREAM.NAMES", heartbeats, "$JS.FC.>", *per_stream)


def user_permissions(
    role: str, *, name: str, namespaces: tuple[str, ...] = ()
) -> Permissions | None:
    """The permissions of user `name` in `role` (None: an admin, every subject); `namespaces`
    empty means all of them."""
    if role == "admin":
        return None
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    publish = [f"virt.api.*.{name}", *_reads()]
    subscribe = [f"_INBOX_{name}.>"]
    if role == "edit":
        publish += [f"virt.cmd.{kind}.{ns}.*.*.{name}"
                    for ns in namespaces or ("*",) for kind in EDITABLE]  # fmt: skip
        # console, VNC and uploads: a session asked of a node, then the pipe both ends speak on
        publish += ["virt.session.*.*", "virt.pipe.*.n"]
        subscribe += ["virt.pipe.*.c"]
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))
