"""What a user of each role may publish and subscribe to: NATS permissions the server enforces.

KubeVirt's `kubevirt.io:view|edit|admin` cut, on subjects. Everyone but an admin reads the log only
as `bus/readscope.py` says (consumers under its own names; a user only its namespaces' trees and its
own record, a node every tree) and asks virtbus-api only under its own name
(`virt.api.<op>.<name>`), with replies to an inbox only it may subscribe to. An `edit` user also
publishes commands, but only to VMs, replica sets and volumes of its namespaces and only with its
own name as the subject's last token: the server refuses a forged actor, a namespace not granted, an
event written straight into the log, and any stream deletion or purge.

A node publishes only its observations (`events.users.NODE_WRITES`, by their subject token; about
itself only on its own node subject), consumes only its own work (the consumer's filter is in the
subject the server checks), writes only its own heartbeat, and speaks on session pipes.

A node's observation about a VM placed elsewhere reaches the log (its subject is the node's to
write) and is skipped by every fold (`events/state.py`), not refused by the server.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

from nats.aio.client import Client

from bus.credentials import Permissions, claims_of, read_creds
from bus.readscope import ReadScope, families, read_permissions, set_scope, slot_names
from bus.store import EventStore
from bus.webhook_secrets import BUCKET as SECRETS_BUCKET
from events import model as m
from events.errors import ConcurrencyConflict
from events.model import TOKEN
from events.names import (
    CLUSTER,
    COMMANDS_STREAM,
    EVENTS_STREAM,
    HEARTBEAT_BUCKET,
    WORK_STREAM,
    Ref,
)
from events.users import ADMIN, DISPATCHER, NODE, NODE_WRITES
from events.webhooks import DELIVERIES_SUBJECT, REDELIVER_SUBJECT

if TYPE_CHECKING:
    from bus.trust import Trust

ROLES: Final = ("admin", "edit", "view")
# nodes, webhooks, the KubeVirt object: admin only
EDITABLE: Final = (
    "vm",
    "rs",
    "vmpool",
    "volume",
    "instancetype",
    "preference",
    "service",
    "datasource",
)


def user_permissions(
    role: str, *, name: str, namespaces: tuple[str, ...] = ()
) -> Permissions | None:
    """The permissions of user `name` in `role` (None: an admin, every subject); `namespaces`
    empty means all of them."""
    if role == "admin":
        return None
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    reads = read_permissions(name, trees=families(name, namespaces), direct=False)
    publish = [f"virt.api.*.{name}", *reads]
    subscribe = [f"_INBOX_{name}.>"]
    if role == "edit":
        publish += [f"virt.cmd.{kind}.{ns}.*.*.{name}"
                    for ns in namespaces or ("*",) for kind in EDITABLE]  # fmt: skip
        # console, VNC and uploads, in its namespaces and under its own name: a session asked of
        # a node, then the pipe both ends speak on
        publish += [f"virt.session.*.*.{ns}.{name}" for ns in namespaces or ("*",)]
        publish += ["virt.pipe.*.n"]
        subscribe += ["virt.pipe.*.c"]
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))


def node_permissions(name: str) -> Permissions:
    """The permissions of node worker `name`."""
    writes = sorted(  # each ends in its own name: the log says which node observed it
        f"virt.node.{CLUSTER}.{name}.{TOKEN[cls]}.{name}" if cls.aggregate == "node"
        else f"virt.{cls.aggregate}.*.*.{TOKEN[cls]}.{name}"
        for cls in NODE_WRITES
    )  # fmt: skip
    work, api = f"worker-{name}", "$JS.API"
    own = [
        f"{api}.CONSUMER.CREATE.{WORK_STREAM}.{work}.virt.work.{name}.>",
        f"{api}.CONSUMER.INFO.{WORK_STREAM}.{work}",
        f"{api}.CONSUMER.MSG.NEXT.{WORK_STREAM}.{work}",
        f"$JS.ACK.{WORK_STREAM}.{work}.>",
        f"$KV.{HEARTBEAT_BUCKET}.{name}",
        f"{api}.STREAM.INFO.KV_{HEARTBEAT_BUCKET}",
        f"virt.session.*.*.*.{name}",  # another node's volume, for a move: under its own name
        "virt.pipe.*.*",
    ]
    return Permissions(
        publish=(*writes, *own, *read_permissions(name, trees=None, direct=True)),
        subscribe=(f"_INBOX_{name}.>", f"virt.session.{name}.*.*.*", "virt.pipe.*.*"),
        allow_responses=True,  # answers to sessions asked of it, on the asker's inbox
    )


# What the orchestrator may not do though it does everything else: lose the log.
ORCHESTRATOR_DENIED: Final = tuple(
    f"$JS.API.STREAM.{op}.>" for op in ("DELETE", "PURGE", "MSG.DELETE")
)


def component_permissions(name: str) -> Permissions | None:
    """The permissions of a part `virtbus up` runs, by its name (None: the admin's, all)."""
    if name.startswith("node-"):
        return node_permissions(name)
    if name == "orchestrator":  # it decides, provisions and signs users: all but destruction
        return Permissions(publish=(">",), subscribe=(">",), deny_publish=ORCHESTRATOR_DENIED)
    if name == "dispatcher":
        return dispatcher_permissions(name)
    return None


def dispatcher_permissions(name: str) -> Permissions:
    """The webhook dispatcher's: follow the log and keep a durable consumer per subscription on
    it, read the signing secrets, record a subscription disabled, answer the CLI's questions
    about deliveries. No command, no other event, nothing of the command stream."""
    api, ev, kv = "$JS.API", EVENTS_STREAM, f"KV_{SECRETS_BUCKET}"
    publish = (
        f"virt.webhook.{CLUSTER}.*.{TOKEN[m.WebhookDisabled]}",
        f"{api}.INFO", f"{api}.STREAM.NAMES", f"{api}.STREAM.INFO.*",
        f"{api}.CONSUMER.CREATE.{ev}", f"{api}.CONSUMER.CREATE.{ev}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{ev}.*", f"{api}.CONSUMER.INFO.{ev}.*",
        f"{api}.CONSUMER.DELETE.{ev}.*", f"{api}.CONSUMER.MSG.NEXT.{ev}.*",
        f"$JS.ACK.{ev}.>", f"$JS.FC.{ev}.>", f"{api}.DIRECT.GET.{ev}", f"{api}.DIRECT.GET.{ev}.>",
        f"{api}.STREAM.MSG.GET.{ev}",  # an append of its own checked after a lost answer
        f"{api}.DIRECT.GET.{kv}", f"{api}.DIRECT.GET.{kv}.>", f"{api}.STREAM.MSG.GET.{kv}",
        f"$KV.{SECRETS_BUCKET}.>",  # a retired subscription's secret is forgotten
    )  # fmt: skip
    return Permissions(
        publish=publish,
        subscribe=(f"_INBOX_{name}.>", DELIVERIES_SUBJECT, REDELIVER_SUBJECT),
        allow_responses=True,  # answers on the asker's inbox
    )


async def certified_scope(nc: Client, name: str) -> None:
    """Teach a connection logged in by certificate as `name` how it reads: its JWT is the
    server's, not the client's, so it reads its own record (which every role reads, under its
    own consumer names) and reads as the JWT recorded there says, as the callout's copy does."""
    own = {EVENTS_STREAM: (f"virt.user.{CLUSTER}.{name}.>",), COMMANDS_STREAM: ()}
    set_scope(nc, ReadScope(slots=slot_names(name), trees=own, direct=False))
    history = await EventStore(nc).read(Ref("user", CLUSTER, name))
    added = [e for r in history if isinstance(e := r.envelope.data, m.UserAdded) and e.jwt]
    if added:
        set_scope(nc, ReadScope.of_claims(claims_of(added[-1].jwt)))


async def record_identities(store: EventStore, trust: Trust, *, roles: dict[str, str]) -> None:
    """The log says who may use the bus: identities a stack made itself (`virtbus up`: the admin,
    the orchestrator, its nodes; name -> role) are recorded once, as `auth add-user` records the
    others; a name already recorded is left as it is."""
    users = {name: (role, read_creds(trust.creds_file(name))[0]) for name, role in roles.items()}
    await record_users(store, users, actor="virtbus/up")


async def record_users(store: EventStore, users: dict[str, tuple[str, str]], *, actor: str) -> None:
    """Record each of `users` (name -> (role, JWT)) once, as `record_identities` does."""
    for name, (role, jwt) in users.items():
        added = m.UserAdded(role=role, public_key=claims_of(jwt)["sub"], jwt=jwt)
        with contextlib.suppress(ConcurrencyConflict):
            await store.append(Ref("user", CLUSTER, name), [added], expected_version=0,
                               actor=actor)  # fmt: skip


def component_role(name: str) -> str:
    """The role a part `virtbus up` runs is recorded with: its nodes are nodes, the dispatcher is
    itself, the admin and the orchestrator are admins."""
    if name.startswith("node-"):
        return NODE
    return DISPATCHER if name == "dispatcher" else ADMIN
