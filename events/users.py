"""Who may use the bus: a user as the fold of its `user` aggregate, and what its role lets it ask.

The server enforces what subjects can express (`bus/roles.py`); this is the rest of the judgement,
made by the intake for every command that arrives under an authenticated name: an `edit` user
commands VMs, replica sets and volumes in its namespaces; `view` and nodes command nothing; only
an admin commands nodes, webhooks and users. Pure, like the rest of `events/`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from events import commands as c
from events import model as m
from events.envelope import Envelope
from events.errors import ValidationError

ADMIN: Final = "admin"
EDIT: Final = "edit"
VIEW: Final = "view"
NODE: Final = "node"
DISPATCHER: Final = "dispatcher"  # the webhook dispatcher's: it commands nothing
ROLES: Final = (ADMIN, EDIT, VIEW, NODE, DISPATCHER)
# what `edit` commands
EDITABLE: Final = frozenset(
    {"vm", "rs", "vmpool", "volume", "instancetype", "preference", "service", "datasource"}
)

# kubectl's resource names, for messages a Kubernetes user reads like its own
_RESOURCE: Final = {"vm": "virtualmachines", "rs": "virtualmachineinstancereplicasets",
                    "volume": "persistentvolumeclaims", "node": "nodes", "webhook": "webhooks",
                    "user": "users", "instancetype": "virtualmachineinstancetypes",
                    "clusterinstancetype": "virtualmachineclusterinstancetypes",
                    "preference": "virtualmachinepreferences",
                    "clusterpreference": "virtualmachineclusterpreferences",
                    "vmpool": "virtualmachinepools", "kubevirt": "kubevirts",
                    "service": "services", "datasource": "datasources"}  # fmt: skip


# What a node writes: its observations, nothing else (no decision, no command, no rejection).
# The server holds a node to these subjects (`bus/roles.py`); tests/structure checks that the
# workers construct no other event.
NODE_WRITES: Final[frozenset[type[m.Event]]] = frozenset({
    m.DomainDefined, m.DomainStarted, m.DomainPaused, m.DomainResumed, m.DomainStopped,
    m.DomainUndefined, m.LauncherCreated, m.LauncherDeleted, m.LauncherFailed, m.VMStartFailed,
    m.VMFailed, m.MigrationTargetPreparing, m.MigrationTargetReady, m.MigrationStarted,
    m.MigrationProgress, m.MigrationSucceeded, m.MigrationFailed, m.SnapshotSucceeded,
    m.SnapshotFailed, m.RestoreSucceeded, m.RestoreFailed, m.VolumeAttached, m.VolumeAttachFailed,
    m.VolumeDetached, m.VolumeReady, m.VolumeFailed, m.VolumeMoved, m.VolumeMoveFailed,
    m.VolumeProgress, m.VolumePopulationFailed, m.HotVCPUChanged, m.HotMemoryChanged,
    m.GuestMemoryPlugged,
    m.HotChangeFailed,
    m.NodeRegistered, m.ImagePulling, m.ImagePulled, m.DomainRebooted, m.GuestAgentChanged,
    m.SoftRebootSent,
    m.MemoryDumpCompleted, m.MemoryDumpFailed,
})  # fmt: skip


class UserState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int = 0
    exists: bool = False  # added and not revoked since
    role: str = ""
    namespaces: list[str] = []
    public_keys: list[str] = []  # every key it was ever given (a revocation names them all)
    revoked: bool = False


def fold_user(name: str, history: Iterable[Envelope]) -> UserState:
    s = UserState(name=name)
    for env in history:
        e = env.data
        if isinstance(e, m.UserAdded):
            s = UserState(name=name, version=env.version, exists=True, role=e.role,
                          namespaces=list(e.namespaces),
                          public_keys=[*s.public_keys, e.public_key])  # fmt: skip
        elif isinstance(e, m.UserRevoked):
            s = msgspec.structs.replace(s, version=env.version, exists=False, revoked=True)
        else:
            s = msgspec.structs.replace(s, version=env.version)
    return s


def may_command(user: UserState, *, kind: str, namespace: str) -> bool:
    """Whether `user` may command an aggregate of `kind` in `namespace`."""
    if user.exists and user.role == ADMIN:
        return True
    granted = not user.namespaces or namespace in user.namespaces
    return user.exists and user.role == EDIT and kind in EDITABLE and granted


def authorize(user: UserState, cmd: c.Command) -> None:
    """Raise a `forbidden` ValidationError unless `user` may ask for `cmd`."""
    target = cmd.target
    if may_command(user, kind=target.kind, namespace=target.namespace):
        return
    if not user.exists:
        why = "was revoked" if user.revoked else "is not a virtbus user"
        raise ValidationError(f'forbidden: user "{user.name}" {why}', field="actor")
    verb = type(cmd).__name__
    resource = _RESOURCE.get(target.kind, target.kind)
    where = "" if target.namespace == "_" else f' in the namespace "{target.namespace}"'
    raise ValidationError(
        f'forbidden: user "{user.name}" ({_role(user)}) cannot {verb} {resource}{where}',
        field="namespace" if user.role == EDIT and target.kind in EDITABLE else "kind",
    )


def read_scope(user: UserState) -> tuple[str, ...] | None:
    """The namespaces `user` may read (None: every one; empty: none, it is no user any more)."""
    if not user.exists:
        return ()
    if user.role in (VIEW, EDIT) and user.namespaces:
        return tuple(user.namespaces)
    return None


def may_read(user: UserState, namespace: str, *, verb: str = "get") -> None:
    """Raise a `forbidden` ValidationError unless `user` may read `namespace`."""
    scope = read_scope(user)
    if scope is not None and namespace not in scope:
        raise ValidationError(
            f'forbidden: user "{user.name}" ({_role(user) if user.exists else "revoked"}) cannot '
            f'{verb} virtualmachines in the namespace "{namespace}"', field="namespace",
        )  # fmt: skip


def _role(user: UserState) -> str:
    if user.role == EDIT and user.namespaces:
        return f"edit in {', '.join(user.namespaces)}"
    return user.role


def decide_user(state: UserState, cmd: c.Command, *, jwt: str, now: int) -> list[m.Event]:
    """AddUser admits a name not in use (again after a revocation, with a new key); RevokeUser
    ends every key of a user from `now` (unix seconds). `jwt` is what the account signed for an
    AddUser (the intake's signer made it)."""
    if isinstance(cmd, c.AddUser):
        if cmd.role not in ROLES:
            raise ValidationError(f"role: {cmd.role!r} is not one of {', '.join(ROLES)}",
                                  field="role")  # fmt: skip
        if cmd.namespaces and cmd.role not in (EDIT, VIEW):
            raise ValidationError(f"namespaces: a {cmd.role} is not limited to namespaces",
                                  field="namespaces")  # fmt: skip
        if state.exists:
            raise ValidationError(f'user "{cmd.name}" already exists', field="name")
        return [m.UserAdded(role=cmd.role, namespaces=list(cmd.namespaces),
                            public_key=cmd.public_key, jwt=jwt)]  # fmt: skip
    if isinstance(cmd, c.RevokeUser):
        if not state.exists:
            raise ValidationError(f'user "{cmd.name}" not found', field="name")
        return [m.UserRevoked(public_keys=list(state.public_keys), revoked_at=now)]
    raise ValidationError(f"kind: {type(cmd).__name__} is not a user command", field="kind")
