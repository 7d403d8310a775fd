"""Total folds: an event a fold cannot take is skipped and noted in the state, never raised.

Until the bus is locked down a foreign writer can put an event on the log that decodes but that a
fold step cannot take (a spec of the wrong shape, a subject that names no aggregate). Were the
step to raise, the first reader to meet it (the controller, the read model, the CLI's history)
would stop on it for good. Every fold step goes through `total` instead: the event moves the
version on (so appends still meet the right expected version) and is otherwise skipped, the same
way for every reader; the state remembers the last few skips so a reader can log them with their
stream sequence and `audit verify` can name them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

import msgspec
from msgspec.structs import replace

KEEP: Final = 8  # skips a state remembers: enough to see them, bounded against a flood


class Skipped(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One event the fold could not take: its version, type and why."""

    version: int
    type: str
    reason: str


class _Folded(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def skipped(self) -> tuple[Skipped, ...]: ...


class _Stamped(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def data(self) -> Any: ...


S = TypeVar("S", bound=_Folded)
E = TypeVar("E", bound=_Stamped)


def total(step: Callable[[S, E], S]) -> Callable[[S, E], S]:
    """`step`, made total: a failure skips the event rather than stopping whoever folds."""

    @functools.wraps(step)
    def guarded(s: S, env: E) -> S:
        try:
            return step(s, env)
        except Exception as err:  # any failure at all: the log's content is not ours to trust
            note = Skipped(version=env.version, type=type(env.data).__name__,
                           reason=f"{type(err).__name__}: {err}")  # fmt: skip
            return replace(s, version=env.version, skipped=(*s.skipped, note)[-KEEP:])  # type: ignore[type-var]

    return guarded


def skipped_now(before: _Folded | None, after: _Folded) -> Skipped | None:
    """The skip the last step added, if it added one (how readers notice and log it)."""
    last = after.skipped[-1] if after.skipped else None
    if last is None or last.version != after.version:
        return None
    if before is not None and before.skipped and before.skipped[-1] == last:
        return None
    return last
