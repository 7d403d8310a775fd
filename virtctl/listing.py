"""One shape for what `get` finds, whatever the kind, and kubectl's ways of printing it.

Each kind is read its own way (VMs from the read model, replica sets, volumes and migrations from
their subjects on the log...), but once read, every kind is a `Listing`: its objects in KubeVirt's
shape, each with its labels and its table row. That is what lets `-l`, `-o name`, `-o jsonpath=`,
`-o json|yaml`, `-A` and `describe` work the same for every kind instead of once per kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from events import render
from events.errors import VirtbusError
from virtctl import jsonpath
from virtctl.kinds import Kind
from virtctl.selector import Selector


@dataclass(frozen=True)
class Item:
    namespace: str
    name: str
    labels: Mapping[str, str]
    obj: dict[str, Any]
    cells: list[str]


@dataclass(frozen=True)
class Listing:
    kind: Kind
    header: list[str]
    items: list[Item] = field(default_factory=list)

    def select(self, selector: Selector) -> Listing:
        kept = [i for i in self.items if selector.matches(i.labels)]
        return Listing(self.kind, self.header, kept)


@dataclass(frozen=True)
class Output:
    """`-o`: "" (a table), wide, json, yaml, name, or jsonpath with its parsed template."""

    form: str = ""
    template: tuple[jsonpath.Node, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Output:
        """`-o`'s text, or a ValidationError naming what is wrong (checked before any request)."""
        if text in ("", "wide", "json", "yaml", "name"):
            return cls(text)
        for prefix in ("jsonpath=", "jsonpath-as-json="):
            if text.startswith(prefix):
                return cls(prefix[:-1], jsonpath.parse(text.removeprefix(prefix)))
        if text in ("jsonpath", "jsonpath-as-json"):
            raise VirtbusError(f"-o {text}: give the template, as {text}='{{.metadata.name}}'")
        raise VirtbusError(f"-o {text!r}: use wide, json, yaml, name or jsonpath=TEMPLATE")


def show(listing: Listing, out: Output, *, name: str | None, namespace: str | None) -> str:
    """What `get` prints (no trailing newline); a NAME that is not there is kubectl's not found."""
    items = listing.items
    if name is not None and not items:
        raise VirtbusError(listing.kind.not_found(name))
    doc = items[0].obj if name is not None and len(items) == 1 else None
    if doc is None and out.form in ("json", "yaml", "jsonpath", "jsonpath-as-json"):
        doc = render.as_list(i.obj for i in items)
    match out.form:
        case "json":
            return render.to_json(doc).rstrip("\n")
        case "yaml":
            return render.to_yaml(doc).rstrip("\n")
        case "name":
            return "\n".join(listing.kind.object_name(i.name) for i in items)
        case "jsonpath":
            return jsonpath.execute(out.template, doc)
        case "jsonpath-as-json":
            found = [v for n in out.template if n.kind == "path"
                     for v in jsonpath.evaluate(n.steps, doc)]  # fmt: skip
            return json.dumps(found, indent=4)
    if not items:
        return render.no_resources(namespace if listing.kind.namespaced else None).rstrip("\n")
    if namespace is None and listing.kind.namespaced:
        rows = ([i.namespace, *i.cells] for i in items)
        return render.table(["NAMESPACE", *listing.header], rows).rstrip("\n")
    return render.table(listing.header, (i.cells for i in items)).rstrip("\n")


# --- describe: kubectl's generic describer, for the kinds without a describer of their own -------


def describe(item: Item) -> str:
    """`kubectl describe` of a custom resource: the identity, then every field, nested, with
    names in words (`creationTimestamp` as `Creation Timestamp`)."""
    obj, meta = item.obj, item.obj.get("metadata", {})
    lines = [f"Name:         {item.name}"]
    if item.namespace:
        lines.append(f"Namespace:    {item.namespace}")
    lines.append(f"Labels:       {_pairs(meta.get('labels'))}")
    lines.append(f"Annotations:  {_pairs(meta.get('annotations'))}")
    lines.append(f"API Version:  {obj.get('apiVersion', '')}")
    lines.append(f"Kind:         {obj.get('kind', '')}")
    rest = {k: v for k, v in meta.items() if k not in ("name", "namespace", "labels",
                                                        "annotations")}  # fmt: skip
    for key, value in (("metadata", rest), ("spec", obj.get("spec")),
                       ("status", obj.get("status"))):  # fmt: skip
        if value:
            lines.append(f"{_words(key)}:")
            lines.extend(_nested(value, 1))
    lines.append("Events:       <none>")
    return "\n".join(lines)


def _pairs(values: Any) -> str:
    if not values:
        return "<none>"
    return "\n              ".join(f"{k}={v}" for k, v in sorted(values.items()))


def _words(key: str) -> str:
    out = ""
    for i, ch in enumerate(key):
        if ch.isupper() and i and not key[i - 1].isupper():
            out += " "
        out += ch
    return out[:1].upper() + out[1:]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "<nil>" if value is None else str(value)


def _nested(value: Any, depth: int) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{_words(k)}:")
                lines.extend(_nested(v, depth + 1))
            else:
                shown = "" if v in ({}, []) else _scalar(v)
                lines.append(f"{pad}{_words(k)}:  {shown}".rstrip())
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict | list):
                inner = _nested(v, depth + 1)
                lines.extend(inner)
            else:
                lines.append(f"{pad}{_scalar(v)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines
