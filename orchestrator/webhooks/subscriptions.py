"""The judgement of a webhook subscription's commands, and which events a subscription receives.

`prepare` does the part of the judgement that needs I/O (resolving the URL's host, moving an
inline secret into the secret bucket); `decide_webhook` is pure like `orchestrator.decide`.
The subscription itself (the fold of its `webhook` aggregate) is in `events/webhooks.py`, since
the CLI reads it too.
"""

from __future__ import annotations

import hashlib
import re
from fnmatch import fnmatchcase
from typing import Final

import msgspec
from nats.aio.client import Client

from bus import webhook_secrets as secrets
from events import commands as c
from events import model as m
from events.errors import ValidationError
from events.names import AGGREGATES
from events.webhooks import WebhookState
from orchestrator.webhooks.settings import WebhookSettings, check_endpoint

_TYPE_GLOB: Final = re.compile(r"^[a-z0-9._*?-]{1,200}$")
_VM_GLOB: Final = re.compile(r"^[a-z0-9*?/\[\]-]{1,200}$")


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
