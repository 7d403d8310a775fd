"""`-o jsonpath=TEMPLATE`: the part of kubectl's JSONPath that scripts written for KubeVirt use.

kubectl users pull one field out of an object (`{.status.printableStatus}`), every name out of a
list (`{.items[*].metadata.name}`) or one line per item (`{range .items[*]}{.metadata.name}{"\\n"}
{end}`); those scripts should run unchanged. Supported, with kubectl's output rules (several
results joined by a space, strings bare, maps and lists as compact JSON, a missing key prints
nothing as with kubectl's default `--allow-missing-template-keys`): text outside braces, `.field`
and `['field']` (with `\\.` for a dot inside a key), `[N]` (negative from the end), `[N:M]`, `[*]`
and `.*`, `..field` (recursive descent), filters `[?(@.path)]` and `[?(@.path OP literal)]` with
OP one of `== != < <= > >=`, `{range EXPR}...{end}` (nested too) and string literals `{"\\n"}`.
Not supported: unions (`[a,b]`) and functions; they are refused naming the template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from events.errors import ValidationError

_IDENT: Final = re.compile(r"(?:\\.|[^.\[\]{}\\ ])+")
_FILTER: Final = re.compile(
    r"\?\(\s*@((?:\.[^\s=!<>)]+|\[[^\]]*\])*)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*\)$"
)
_SLICE: Final = re.compile(r"(-?\d*):(-?\d*)$")


def _fail(template: str, reason: str) -> ValidationError:
    return ValidationError(f"error parsing jsonpath {template}, {reason}", field="output")


# --- a path: the steps of one expression ---------------------------------------------------------


@dataclass(frozen=True)
class Step:
    op: str  # field | index | slice | all | descend | filter
    key: Any = None
    path: tuple[Step, ...] = ()  # a filter's path below `@`
    cmp: str = ""
    value: Any = None


def parse_path(expr: str, template: str) -> tuple[Step, ...]:
    """`.a.b[0]['c'][*]..d[?(@.e=="x")]` as steps; a leading `$` or `@` is the current object."""
    text = expr.strip()
    text = text[1:] if text[:1] in ("$", "@") else text
    steps: list[Step] = []
    i = 0
    while i < len(text):
        if text.startswith("..", i):
            found = _IDENT.match(text, i + 2)
            if not found:
                raise _fail(template, f"a name must follow '..' in {expr!r}")
            steps.append(Step("descend", key=_unescape(found.group())))
            i = found.end()
        elif text[i] == ".":
            found = _IDENT.match(text, i + 1)
            if not found:
                i += 1  # `{.}`: the object itself
                continue
            key = _unescape(found.group())
            steps.append(Step("all") if key == "*" else Step("field", key=key))
            i = found.end()
        elif text[i] == "[":
            end = _closing(text, i, template)
            steps.append(_bracket(text[i + 1 : end].strip(), template))
            i = end + 1
        else:
            found = _IDENT.match(text, i)  # `{metadata.name}`: kubectl reads a bare first name
            if not found or steps:
                raise _fail(template, f"unexpected {text[i]!r} in {expr!r}")
            steps.append(Step("field", key=_unescape(found.group())))
            i = found.end()
    return tuple(steps)


def _unescape(key: str) -> str:
    return re.sub(r"\\(.)", r"\1", key)


def _closing(text: str, start: int, template: str) -> int:
    depth, quote = 0, ""
    for j in range(start, len(text)):
        ch = text[j]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return j
    raise _fail(template, "unclosed array expect ]")


def _bracket(inner: str, template: str) -> Step:
    if inner == "*":
        return Step("all")
    if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
        return Step("field", key=inner[1:-1])
    if re.fullmatch(r"-?\d+", inner):
        return Step("index", key=int(inner))
    if sliced := _SLICE.match(inner):
        lo, hi = (int(g) if g else None for g in sliced.groups())
        return Step("slice", key=(lo, hi))
    if filt := _FILTER.match(inner):
        path = parse_path(filt.group(1), template)
        value = _literal(filt.group(3), template) if filt.group(2) else None
        return Step("filter", path=path, cmp=filt.group(2) or "", value=value)
    if "," in inner:
        raise _fail(template, f"unions like [{inner}] are not supported by virtbus")
    raise _fail(template, f"cannot read [{inner}]")


def _literal(text: str, template: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return json.loads(text)  # numbers, true, false, null
    except ValueError:
        raise _fail(template, f"{text!r} is not a string, number or boolean") from None


def evaluate(steps: tuple[Step, ...], root: Any) -> list[Any]:
    """Every value the steps reach from `root`; a missing key reaches nothing."""
    current = [root]
    for step in steps:
        current = [found for value in current for found in _step(step, value)]
    return current


def _step(step: Step, value: Any) -> Iterator[Any]:
    match step.op:
        case "field":
            if isinstance(value, dict) and step.key in value:
                yield value[step.key]
        case "index":
            if isinstance(value, list) and -len(value) <= step.key < len(value):
                yield value[step.key]
        case "slice":
            if isinstance(value, list):
                yield from value[step.key[0] : step.key[1]]
        case "all":
            if isinstance(value, dict):
                yield from value.values()
            elif isinstance(value, list):
                yield from value
        case "descend":
            yield from _descend(step.key, value)
        case "filter":
            items = value if isinstance(value, list) else []
            yield from (item for item in items if _keeps(step, item))


def _descend(key: str, value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        if key in value:
            yield value[key]
        for v in value.values():
            yield from _descend(key, v)
    elif isinstance(value, list):
        for v in value:
            yield from _descend(key, v)


def _keeps(step: Step, item: Any) -> bool:
    found = evaluate(step.path, item)
    if not step.cmp:
        return bool(found)
    if not found:
        return False
    left, right = found[0], step.value
    if step.cmp in ("==", "!="):
        return bool(left == right) == (step.cmp == "==")
    try:
        return bool({"<": left < right, "<=": left <= right, ">": left > right,
                     ">=": left >= right}[step.cmp])  # fmt: skip
    except TypeError:  # a string against a number: kubectl skips the item
        return False


# --- a template: text, actions and ranges ---------------------------------------------------------


@dataclass(frozen=True)
class Node:
    kind: str  # text | path | range
    text: str = ""
    steps: tuple[Step, ...] = ()
    body: tuple[Node, ...] = ()


def parse(template: str) -> tuple[Node, ...]:
    """The template as nodes, or a ValidationError naming what is wrong (checked before any
    request, so a typo costs no bus round trip)."""
    nodes, rest = _parse(template, _actions(template), template, inside=False)
    if rest:
        raise _fail(template, "{end} without {range}")
    return nodes


def _actions(template: str) -> Iterator[tuple[str, str]]:
    i = 0
    while i < len(template):
        start = template.find("{", i)
        if start < 0:
            yield "text", template[i:]
            return
        if start > i:
            yield "text", template[i:start]
        end, quote = start + 1, ""
        while end < len(template) and (quote or template[end] != "}"):
            if template[end] in "'\"" and not quote:
                quote = template[end]
            elif template[end] == quote:
                quote = ""
            end += 1
        if end >= len(template):
            raise _fail(template, "unclosed action")
        yield "action", template[start + 1 : end].strip()
        i = end + 1


def _parse(
    template: str, tokens: Iterator[tuple[str, str]], whole: str, *, inside: bool
) -> tuple[tuple[Node, ...], bool]:
    """Nodes up to the matching `{end}` (when `inside`); the flag says an `{end}` closed them."""
    nodes: list[Node] = []
    for kind, text in tokens:
        if kind == "text":
            nodes.append(Node("text", text=text))
        elif text == "end":
            if not inside:
                raise _fail(whole, "{end} without {range}")
            return tuple(nodes), True
        elif text.startswith("range "):
            body, closed = _parse(template, tokens, whole, inside=True)
            if not closed:
                raise _fail(whole, "{range} without {end}")
            nodes.append(Node("range", steps=parse_path(text[6:], whole), body=body))
        elif len(text) >= 2 and text[0] == text[-1] == '"':
            nodes.append(Node("text", text=_string(text[1:-1], whole)))
        else:
            nodes.append(Node("path", steps=parse_path(text, whole)))
    if inside:
        raise _fail(whole, "{range} without {end}")
    return tuple(nodes), False


def _string(body: str, template: str) -> str:
    try:
        return str(json.loads(f'"{body}"'))  # `\n`, `\t`, `\"` as Go reads them
    except ValueError:
        raise _fail(template, f'bad string literal "{body}"') from None


def execute(nodes: tuple[Node, ...], root: Any) -> str:
    """The text the template makes of `root` (kubectl adds no newline at the end)."""
    out: list[str] = []
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "path":
            out.append(" ".join(_text(v) for v in evaluate(node.steps, root)))
        else:
            for item in evaluate(node.steps, root):
                out.append(execute(node.body, item))
    return "".join(out)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "<nil>"  # what Go's fmt prints for a JSON null
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value)
