"""A subscription as the fold of its `webhook` aggregate, and the judgement of its commands.

`prepare` does the part of the judgement that needs I/O (resolving the URL's host, moving an
inline secret into the secret bucket); `decide_webhook` is pure like `orchestrator.decide`.
Which events a subscription receives (`matches`, `subject_filters`) lives here too, so the
intake, the dispatcher and the CLI read one definition.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Final

import msgspec
from nats.aio.client import Client

from bus import webhook_secrets as secrets
from events import commands as c
from events import model as m
from events.envelope import Recorded
from events.errors import ValidationError
from events.names import AGGREGATES
from orchestrator.webhooks.settings import WebhookSettings, check_endpoint

_TYPE_GLOB: Final = re.compile(r"^[a-z0-9._*?-]{1,200}$")
_VM_GLOB: Final = re.compile(r"^[a-z0-9*?/\[\]-]{1,200}$")


class WebhookState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int = 0
    exists: bool = False
    url: str = ""
    types: list[str] = []
    vm_pattern: str = "*"
    from_seq: int = 0
    since: datetime | None = None
    secret_ref: str = ""
    disabled_reason: str = ""
    life_seq: int = 0  # stream sequence of this life's WebhookSubscribed
    created: datetime | None = None

    @property
    def active(self) -> bool:
        return self.exists and not self.disabled_reason

    @property
    def consumer(self) -> str:
        """The durable consumer of this life: a name re-created later gets a fresh one."""
        return f"webhook-{self.name}-{self.life_seq}"


def apply_webhook(s: WebhookState, rec: Recorded) -> WebhookState:
    e, env = rec.envelope.data, rec.envelope
    s = msgspec.structs.replace(s, version=env.version)
    if isinstance(e, m.WebhookSubscribed):
        return WebhookState(
            name=s.name, version=env.version, exists=True, url=e.url, types=list(e.types),
            vm_pattern=e.vm_pattern, from_seq=e.from_seq, since=e.since, secret_ref=e.secret_ref,
            life_seq=rec.seq, created=env.time,
        )  # fmt: skip
    if isinstance(e, m.WebhookUnsubscribed):
        return msgspec.structs.replace(s, exists=False, disabled_reason="")
    if isinstance(e, m.WebhookDisabled) and s.exists:
        return msgspec.structs.replace(s, disabled_reason=e.reason or "disabled")
    return s


def fold_webhook(name: str, history: Iterable[Recorded]) -> WebhookState:
    s = WebhookState(name=name)
    for rec in history:
        s = apply_webhook(s, rec)
    return s


# --- judgement -----------------------------------------------------------------------------------


def check_patterns(types: list[str], vm_pattern: str) -> None:
    if not types:
        raise ValidationError("types: at least one event type pattern is required", field="types")
    for t in types:
        if not _TYPE_GLOB.match(t):
            raise ValidationError(
                f"types: {t!r} is not an event type pattern (like 'io.virtbus.vm.*')",
                field="types",
            )
    if not _VM_GLOB.match(vm_pattern):
        raise ValidationError(
            f"vm_pattern: {vm_pattern!r} is not a VM name pattern (like 'web-*' or 'prod/*')",
            field="vm_pattern",
        )


async def prepare(nc: Client, cmd: c.Command) -> c.Command:
    """The I/O half of judging a webhook command; any other command passes unchanged."""
    if not isinstance(cmd, c.AddWebhook):
        return cmd
    check_patterns(cmd.types, cmd.vm_pattern)
    if cmd.from_start and cmd.since is not None:
        raise ValidationError("since: give either since or from_start, not both", field="since")
    await check_endpoint(cmd.url, WebhookSettings.from_env())
    js = nc.jetstream()
    if cmd.secret:
        secrets.check_secret(cmd.secret)
        # Derived from the command id, so a redelivered command lands on the same key.
        ref = f"{cmd.name}.{hashlib.sha256(cmd.id.encode()).hexdigest()[:12]}"
        await secrets.store(js, ref, cmd.secret)
        return msgspec.structs.replace(cmd, secret="", secret_ref=ref)
    if not cmd.secret_ref:
        raise ValidationError("secret: a signing secret is required (secret_ref, the key of one "
                              f"in the {secrets.BUCKET} bucket)", field="secret")  # fmt: skip
    if await secrets.load(await secrets.bucket(js), cmd.secret_ref) is None:
        raise ValidationError(f"secret_ref: no secret is stored under {cmd.secret_ref!r}",
                              field="secret_ref")  # fmt: skip
    return cmd


def decide_webhook(s: WebhookState, cmd: c.Command) -> list[m.Event]:
    """The events a webhook command stands for, given the subscription as the log knows it."""
    match cmd:
        case c.AddWebhook():
            if s.exists:
                raise ValidationError(f'webhook "{cmd.name}" already exists', field="name")
            if cmd.secret or not cmd.secret_ref:
                raise ValidationError("secret: not stored in the secret bucket", field="secret")
            return [
                m.WebhookSubscribed(
                    url=cmd.url, types=cmd.types, vm_pattern=cmd.vm_pattern,
                    from_seq=1 if cmd.from_start else 0, secret_ref=cmd.secret_ref,
                    since=cmd.since,
                )
            ]  # fmt: skip
        case c.RemoveWebhook():
            if not s.exists:
                raise ValidationError(f'webhook "{cmd.name}" not found', field="name")
            return [m.WebhookUnsubscribed()]
    raise ValidationError(f"{type(cmd).__name__} does not apply to a webhook", field="kind")


# --- what a subscription receives ----------------------------------------------------------------


def matches(s: WebhookState, *, ce_type: str, subject: str) -> bool:
    """Does the event of CloudEvents type `ce_type` about `subject` (vm/ns/name) go to `s`?"""
    if not any(fnmatchcase(ce_type, t) for t in s.types):
        return False
    if s.vm_pattern == "*":
        return True
    kind, _, rest = subject.partition("/")
    if kind != "vm":
        return False
    target = rest if "/" in s.vm_pattern else rest.rpartition("/")[2]
    return fnmatchcase(target, s.vm_pattern)


def subject_filters(s: WebhookState) -> list[str]:
    """Coarse JetStream filters (never overlapping) so the server skips what cannot match;
    the exact match is `matches`. An empty list means the whole stream."""
    kinds = set()
    for t in s.types:
        parts = t.split(".")
        if len(parts) < 3 or parts[:2] != ["io", "virtbus"] or parts[2] not in AGGREGATES:
            return []  # a pattern over several aggregates (or command.rejected on any)
        kinds.add(parts[2])
    if kinds == {"vm"} and not any(ch in s.vm_pattern for ch in "*?["):
        ns, _, name = s.vm_pattern.rpartition("/")
        return [f"virt.vm.{ns or '*'}.{name}.>"]
    return [f"virt.{k}.>" for k in sorted(kinds)]
