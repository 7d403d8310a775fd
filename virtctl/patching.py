"""The two patch formats `kubectl patch --type` offers for custom resources, pure.

KubeVirt's user guide changes a VM in place with them (`--type merge -p
'{"spec":{"runStrategy":"Always"}}'`, `--type json -p '[{"op": "replace", "path":
"/spec/template/spec/domain/memory/guest", "value": "2Gi"}]'`): RFC 7386 JSON merge patch and RFC
6902 JSON patch (add, remove, replace, move, copy, test; paths are RFC 6901 pointers). kubectl's
default, a strategic merge patch, does not exist for custom resources; it is refused as the API
server refuses it. Errors name the operation and the path.
"""

from __future__ import annotations

import copy
from typing import Any

from events.errors import ValidationError

TYPES = ("merge", "json", "strategic")


def _fail(reason: str) -> ValidationError:
    return ValidationError(f"--patch: {reason}", field="patch")


def apply_patch(doc: Any, patch: Any, *, kind_of_patch: str) -> Any:
    if kind_of_patch == "merge":
        return merge(doc, patch)
    if kind_of_patch == "json":
        return json_patch(doc, patch)
    raise ValidationError("--type strategic: the body of the request was in an unknown format - "
                          "accepted media types include: application/json-patch+json, "
                          "application/merge-patch+json (use --type merge or --type json)",
                          field="type")  # fmt: skip


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def _pointer(path: Any, op: int) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _fail(f"[{op}].path: {path!r} is not a JSON pointer (like /spec/runStrategy)")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _parent(doc: Any, parts: list[str], op: int, path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        node = _child(node, part, op, path)
    return node


def _child(node: Any, part: str, op: int, path: str) -> Any:
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    raise _fail(f"[{op}] {path}: {part!r} does not exist")


def _index(node: list[Any], part: str, op: int, path: str, *, adding: bool) -> int:
    if adding and part == "-":
        return len(node)
    limit = len(node) + (1 if adding else 0)
    if not part.isdigit() or int(part) >= limit:
        raise _fail(f"[{op}] {path}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _get(doc: Any, path: Any, op: int) -> Any:
    node = doc
    for part in _pointer(path, op):
        node = _child(node, part, op, path)
    return node


def _remove(doc: Any, path: Any, op: int) -> Any:
    parts = _pointer(path, op)
    if not parts:
        raise _fail(f"[{op}]: cannot remove the whole object")
    parent = _parent(doc, parts, op, path)
    if isinstance(parent, dict):
        if parts[-1] not in parent:
            raise _fail(f"[{op}] {path}: {parts[-1]!r} does not exist")
        return parent.pop(parts[-1])
    if isinstance(parent, list):
        return parent.pop(_index(parent, parts[-1], op, path, adding=False))
    raise _fail(f"[{op}] {path}: not inside an object or a list")


def _add(doc: Any, path: Any, value: Any, op: int, *, replace: bool = False) -> Any:
    parts = _pointer(path, op)
    if not parts:
        return copy.deepcopy(value)
    parent = _parent(doc, parts, op, path)
    if isinstance(parent, dict):
        if replace and parts[-1] not in parent:
            raise _fail(f"[{op}] {path}: {parts[-1]!r} does not exist")
        parent[parts[-1]] = copy.deepcopy(value)
    elif isinstance(parent, list):
        i = _index(parent, parts[-1], op, path, adding=not replace)
        if replace:
            parent[i] = copy.deepcopy(value)
        else:
            parent.insert(i, copy.deepcopy(value))
    else:
        raise _fail(f"[{op}] {path}: not inside an object or a list")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902, every operation in order; any failure leaves nothing applied."""
    if not isinstance(ops, list):
        raise _fail("a JSON patch is a list of operations")
    for i, step in enumerate(ops):
        if not isinstance(step, dict):
            raise _fail(f"[{i}]: an operation is an object with op and path")
        op, path = step.get("op"), step.get("path")
        if op in ("add", "replace", "test") and "value" not in step:
            raise _fail(f"[{i}] {op} {path}: value is missing")
        match op:
            case "add":
                doc = _add(doc, path, step["value"], i)
            case "replace":
                doc = _add(doc, path, step["value"], i, replace=True)
            case "remove":
                _remove(doc, path, i)
            case "move" | "copy":
                value = _get(doc, step.get("from"), i)
                if op == "move":
                    _remove(doc, step.get("from"), i)
                doc = _add(doc, path, value, i)
            case "test":
                if _get(doc, path, i) != step["value"]:
                    raise _fail(f"[{i}] test {path}: the value differs")
            case _:
                raise _fail(f"[{i}].op: {op!r}: use add, remove, replace, move, copy or test")
    return doc
