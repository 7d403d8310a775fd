"""`-l SELECTOR`: Kubernetes label selectors, as `kubectl get -l` reads them.

KubeVirt users select VMs by label (`-l kubevirt.io/vm=x`, `-l 'tier in (web,db)'`, `-l '!canary'`);
this is apimachinery's syntax: comma-separated requirements, each `key=value` (or `==`),
`key!=value` (true when the key is absent too), `key in (a,b)`, `key notin (a,b)` (true when
absent), `key` (exists) and `!key` (absent); every requirement must hold. Malformed input is a
ValidationError naming the selector and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from events.errors import ValidationError

_KEY: Final = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE: Final = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EQUALITY: Final = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_SET: Final = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EXISTS: Final = re.compile(rf"\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # = != in notin exists !exists
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return value in self.values
            case "!=" | "notin":
                return value not in self.values
            case "exists":
                return value is not None
        return value is None  # !exists


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _split(text: str) -> list[str]:
    """Requirements split at commas outside parentheses (`a in (x,y),b` is two)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def parse(text: str) -> Selector:
    """A selector from `-l`'s text; empty text selects everything."""
    if not text.strip():
        return Selector()
    found: list[Requirement] = []
    for part in _split(text):
        if eq := _EQUALITY.match(part):
            key, op, value = eq.groups()
            found.append(Requirement(key, "!=" if op == "!=" else "=", frozenset({value})))
        elif in_ := _SET.match(part):
            key, op, values = in_.groups()
            items = [v.strip() for v in values.split(",")]
            bad = [v for v in items if not re.fullmatch(_VALUE, v)]
            if bad:
                raise _fail(text, f"{bad[0]!r} is not a valid label value")
            found.append(Requirement(key, op, frozenset(items)))
        elif ex := _EXISTS.match(part):
            found.append(Requirement(ex.group(2), "!exists" if ex.group(1) else "exists"))
        else:
            raise _fail(text, f"cannot read {part.strip()!r}: use key=value, key!=value, "
                              "key in (a,b), key notin (a,b), key or !key")  # fmt: skip
    return Selector(tuple(found))


def _fail(text: str, reason: str) -> ValidationError:
    return ValidationError(f"-l {text!r}: {reason}", field="selector")
