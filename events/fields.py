"""Typed reads of a JSON-shaped document (a KubeVirt spec) that name the path of what is wrong.

Specs reach virtbus from YAML files and from any NATS client, so any value may have any type. The
manifest checks (orchestrator) and the domain renderer (workers) both read them through these
accessors: a list where a string belongs is a `ValidationError` naming the field, never a
`TypeError` from deep inside a comparison (issue 12).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any, Final

from events.errors import ValidationError

# KubeVirt specs nest about a dozen levels; far deeper ones would exhaust Python's recursion in
# copy.deepcopy and in msgspec's encoder, so they are refused before either sees them.
MAX_DEPTH: Final = 64
# Kubernetes (Go) reads integers as int64; msgspec encodes larger ones but cannot decode them,
# so one that slipped onto the log would make the event unreadable.
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1


# A name that goes into domain XML as-is (CPU model, machine type, NIC model, disk serial):
# no spaces, quotes or control characters, which libvirt refuses (a NUL even crashes its binding).
_WORD_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def fail(field: str, reason: str) -> ValidationError:
    return ValidationError(f"{field}: {reason}", field=field)


def join(path: str, key: str | int) -> str:
    """`spec` + `domain` is `spec.domain`; `disks` + 0 is `disks[0]`; an empty key is `[""]`;
    the root has no prefix."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key:  # an empty key still names a place: `spec[""]`, never the bare parent (or "")
        return f'{path}[""]'
    return f"{path}.{key}" if path else key


def check_json(value: Any, path: str) -> None:
    """Raise unless `value` is plain JSON that crosses the wire unchanged: string keys, 64-bit
    integers, finite floats, UTF-8 encodable strings, at most MAX_DEPTH levels of nesting."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]  # a loop, so depth cannot recurse
    while stack:
        item, at, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise fail(at or "document", f"is nested more than {MAX_DEPTH} levels deep")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(item, dict) and not isinstance(key, str):
                    raise fail(join(at, str(key)), f"the key {key!r} must be a string (quote it)")
                stack.append((child, join(at, key), depth + 1))
        elif isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError as exc:  # a lone surrogate: JSON cannot carry it
                    raise fail(at, "is not valid Unicode text") from exc
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise fail(at, f"{item} is out of range (integers are 64-bit)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise fail(at, f"{item!r} is not a number JSON can carry")
        else:  # YAML dates, !!binary, !!set: the wire would turn them into something else
            raise fail(at, f"a {type(item).__name__} is not a JSON value (quote it in YAML)")


def mapping(value: Any, path: str) -> dict[str, Any]:
    """A mapping; null is an empty one (`masquerade:` with nothing after it means `{}`)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(path, f"expected a mapping, got {type(value).__name__}")
    return value


def entries(value: Any, path: str) -> list[Any]:
    """A list; null is an empty one."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(path, f"expected a list, got {type(value).__name__}")
    return value


def text(value: Any, path: str, *, choices: Collection[str] = ()) -> str | None:
    """A string (one of `choices` when given), or None when unset."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise fail(path, f"{short(value)} must be a string")
    if choices and value not in choices:
        raise fail(path, f"{short(value)} is not one of {', '.join(choices)}")
    return value


def word(value: Any, path: str) -> str | None:
    """A string that may go into domain XML as a name (letters, digits, `_.+-`), or None."""
    found = text(value, path)
    if found is not None and not _WORD_RE.fullmatch(found):
        raise fail(path, f"{short(found)} must be letters, digits and _.+- (at most 100)")
    return found


def integer(value: Any, path: str, *, low: int, high: int) -> int | None:
    """An integer from `low` to `high` (not a bool, which YAML also reads from `yes`), or None."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        bound = (
            f"a positive integer (at most {high})" if low == 1 else f"an integer, {low} to {high}"
        )
        raise fail(path, f"{short(value)} must be {bound}")
    return value


def boolean(value: Any, path: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise fail(path, f"{short(value)} must be true or false")


def short(value: Any) -> str:
    """`repr` cut to a readable length: a 10k-character value must not flood the error line."""
    try:
        shown = repr(value)
    except RecursionError:  # found by the fuzzer: `apiVersion` 2000 levels deep
        return f"a {type(value).__name__} nested too deeply to show"
    return shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
