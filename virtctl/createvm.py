"""`virtbus create vm`: virtctl's VirtualMachine generator; it prints a manifest, creates nothing.

Its flags, defaults (runStrategy Always, 512Mi, a grace period of 180 s, a random `vm-xxxxx` name,
inference from the boot volume when it is a claim),
`key:value,...` parameters, volume naming and messages (`failed to parse "--FLAG" flag: ...`) are
virtctl's, so a line from KubeVirt's user guide piped into `virtbus apply -f -` gives the VM it
gives there. Only the sources virtbus runs are offered: `--volume-datasource` (virtctl's deprecated
spelling of `--volume-import type:ds`), sysprep and access credentials are refused by name rather
than written into a manifest `apply` would then refuse. Pure: no bus.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from events.errors import ValidationError
from events.names import check_name
from events.quantity import parse_quantity

RUN_STRATEGIES = ("Always", "Manual", "Halted", "Once", "RerunOnFailure")
CLOUD_INIT_DISK = "cloudinitdisk"
CLOUD_CONFIG = "#cloud-config"
_IMPORT_TYPES = ("blank", "ds", "http", "pvc", "registry")  # what virtbus's DataVolumes import
_SIZED_BY_SOURCE = ("ds", "pvc")  # a clone: no size given is the source's (CDI's clone sizing)
_NOT_HERE = {
    "volume-datasource": "deprecated in virtctl, not served by virtbus; use --volume-import "
                         "type:ds,src:NAMESPACE/NAME",
    "volume-sysprep": "virtbus runs no Windows sysprep volumes",
    "access-cred": "virtbus injects no credentials from Secrets; use --ssh-key",
}  # fmt: skip


def flag_error(flag: str, why: str) -> ValidationError:
    return ValidationError(f'failed to parse "--{flag}" flag: {why}', field=flag)


def params(flag: str, text: str, *, known: tuple[str, ...]) -> dict[str, str]:
    """virtctl's `key:value,key:value` parameters; unknown keys are refused by name."""
    if not text:
        raise flag_error(flag, "params may not be empty")
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition(":")
        if not sep:
            raise flag_error(flag, f"params need to have at least one colon: {part}")
        out[key] = value
    if unknown := [f"{k}:{v}" for k, v in out.items() if k not in known]:
        raise flag_error(flag, f"unknown param(s): {','.join(unknown)}")
    return out


@dataclass(kw_only=True)
class VMSpecFlags:
    """The flags of `create vm` as typed (repeatable ones as lists)."""

    name: str = ""
    run_strategy: str = "Always"
    termination_grace_period: int = 180
    memory: str = ""
    instancetype: str = ""
    preference: str = ""
    containerdisks: list[str] = field(default_factory=list)
    pvcs: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    user: str = ""
    password_file: str = ""
    ssh_keys: list[str] = field(default_factory=list)
    cloud_init: str = ""  # "" (not given): nocloud, written only when it says something
    cloud_init_user_data: str = ""
    cloud_init_network_data: str = ""
    refused: list[str] = field(default_factory=list)  # flags of `_NOT_HERE` that were given
    # None: not given (virtctl infers anyway, quietly: a failure is left to the server's Ignore)
    infer_instancetype: bool | None = None
    infer_instancetype_from: str = ""
    infer_preference: bool | None = None
    infer_preference_from: str = ""
    ga_manage_ssh: bool = False


class _Builder:
    def __init__(self, flags: VMSpecFlags, name: str) -> None:
        self.flags = flags
        self.name = name
        self.volumes: list[dict[str, Any]] = []
        self.disks: list[dict[str, Any]] = []
        self.templates: list[dict[str, Any]] = []
        self.boot_orders: set[int] = set()

    def add(self, flag: str, volume: dict[str, Any], boot: str | None) -> None:
        label = volume["name"]
        try:
            check_name(label, field="name")
        except ValidationError as err:
            raise flag_error(flag, f'invalid name "{label}": {err.message}') from None
        if any(v["name"] == label for v in self.volumes):
            raise flag_error(flag, f'there is already a volume with name "{label}"')
        self.volumes.append(volume)
        if boot is None:
            return
        if not boot.isdigit() or int(boot) == 0:
            raise flag_error(flag, "bootorder must be greater than 0")
        if int(boot) in self.boot_orders:
            raise flag_error(flag, f"bootorder {boot} was specified multiple times")
        self.boot_orders.add(int(boot))
        self.disks.append({"bootOrder": int(boot), "name": label})

    def containerdisks(self) -> None:
        flag = "volume-containerdisk"
        for i, text in enumerate(self.flags.containerdisks):
            p = params(flag, text, known=("name", "src", "bootorder"))
            if not p.get("src"):
                raise flag_error(flag, "src must be specified")
            label = p.get("name") or f"{self.name}-containerdisk-{i}"
            self.add(flag, {"containerDisk": {"image": p["src"]}, "name": label},
                     p.get("bootorder"))  # fmt: skip

    def pvcs(self) -> None:
        flag = "volume-pvc"
        for text in self.flags.pvcs:
            p = params(flag, text, known=("name", "src", "bootorder"))
            if not p.get("src"):
                raise flag_error(flag, "src must be specified")
            namespace, claim = _prefixed(flag, p["src"])
            if namespace:
                raise flag_error(flag, f'not allowed to specify namespace of pvc "{claim}"')
            volume = {"name": p.get("name") or claim, "persistentVolumeClaim": {"claimName": claim}}
            self.add(flag, volume, p.get("bootorder"))

    def imports(self) -> None:
        flag = "volume-import"
        for text in self.flags.imports:
            p = params(flag, text, known=("type", "name", "size", "src", "url", "bootorder"))
            kind = p.get("type", "")
            if kind not in _IMPORT_TYPES:
                raise flag_error(flag, f'invalid volume import type "{kind}", virtbus imports '
                                       f"{', '.join(_IMPORT_TYPES)}")  # fmt: skip
            source = _import_source(flag, kind, p)
            label = p.get("name") or "imported-volume-" + suffix()
            size = p.get("size", "")
            if not size and kind not in _SIZED_BY_SOURCE:
                raise flag_error(flag, "size must be specified")
            if size:
                try:
                    parse_quantity(size)
                except ValidationError as err:
                    raise flag_error(flag, f'failed to parse param "size": {err.message}') from None
            storage = {"resources": {"requests": {"storage": size}}} if size else {}
            dv = {"sourceRef": source} if kind == "ds" else {"source": source}
            self.templates.append({"metadata": {"creationTimestamp": None, "name": label},
                                   "spec": {**dv, "storage": storage}})  # fmt: skip
            self.add(flag, {"dataVolume": {"name": label}, "name": label}, p.get("bootorder"))


def _prefixed(flag: str, text: str) -> tuple[str, str]:
    parts = text.split("/")
    if len(parts) > 2:
        raise flag_error(flag, f"src invalid: invalid count {len(parts) - 1} of slashes in "
                               "prefix/name")  # fmt: skip
    if not parts[-1]:
        raise flag_error(flag, "src invalid: name cannot be empty")
    return (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])


def _import_source(flag: str, kind: str, p: dict[str, str]) -> dict[str, Any]:
    """The DataVolume's `source` (its `sourceRef` for type:ds, as virtctl writes it)."""
    if kind == "blank":
        return {"blank": {}}
    if kind == "ds":
        if not p.get("src"):
            raise flag_error(flag, "src must be specified")
        namespace, name = _prefixed(flag, p["src"])
        return {"kind": "DataSource", "name": name, **({"namespace": namespace} if namespace
                                                        else {})}  # fmt: skip
    if kind == "pvc":
        if not p.get("src"):
            raise flag_error(flag, "src must be specified")
        namespace, claim = _prefixed(flag, p["src"])
        if not namespace:
            raise flag_error(flag, f'namespace of pvc "{claim}" must be specified')
        return {"pvc": {"name": claim, "namespace": namespace}}
    if not p.get("url"):
        raise flag_error(flag, "url must be specified" if kind == "http" else
                         "exactly one of url or imagestream must be defined")  # fmt: skip
    return {kind: {"url": p["url"]}}


def suffix() -> str:
    """Five random letters and digits, as Kubernetes' rand.String(5) makes virtctl's names."""
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=5))


def _matcher(flag: str, text: str, kinds: tuple[str, str]) -> dict[str, str]:
    kind, name = _prefixed(flag, text)
    kind = kind.lower()
    if kind and kind not in kinds:
        noun = flag.removeprefix("--")
        raise flag_error(flag, f'invalid {noun} kind "{kind}", supported values are: '
                               f"{', '.join(kinds)}")  # fmt: skip
    return {"kind": kind, "name": name} if kind else {"name": name}


def _cloud_init(flags: VMSpecFlags) -> dict[str, Any] | None:
    mode = (flags.cloud_init or "nocloud").lower()
    if mode == "none":
        return None
    if mode != "nocloud":
        raise flag_error("cloud-init", f'invalid cloud-init data source type "{flags.cloud_init}", '
                         "virtbus supports nocloud, none")  # fmt: skip
    source: dict[str, str] = {}
    if flags.cloud_init_network_data:
        source["networkDataBase64"] = flags.cloud_init_network_data
    if flags.cloud_init_user_data:
        source["userDataBase64"] = flags.cloud_init_user_data
    else:
        source["userData"] = _cloud_config(flags)
    if not flags.cloud_init and source == {"userData": CLOUD_CONFIG}:
        return None  # nothing to say: no volume, as virtctl
    return {"cloudInitNoCloud": source, "name": CLOUD_INIT_DISK}


def _cloud_config(flags: VMSpecFlags) -> str:
    config = CLOUD_CONFIG
    if flags.user:
        config += f"\nuser: {flags.user}"
    if flags.password_file:
        try:
            with open(flags.password_file, encoding="utf-8") as f:
                password = f.read().strip()
        except OSError as err:
            raise flag_error("password-file", str(err.strerror or err)) from None
        if password:
            config += f"\npassword: {password}\nchpasswd: {{ expire: False }}"
    keys = [k.strip() for text in flags.ssh_keys for k in text.split(",") if k.strip()]
    if keys:
        config += "\nssh_authorized_keys:" + "".join(f"\n  - {k}" for k in keys)
    if flags.ga_manage_ssh:  # SELinux lets the guest agent manage keys (virtctl's runcmd)
        config += "\nruncmd:\n  - [ setsebool, -P, 'virt_qemu_ga_manage_ssh', 'on' ]"
    return config


def generate(flags: VMSpecFlags) -> dict[str, Any]:
    """The VirtualMachine virtctl's `create vm` prints for `flags` (ValidationError when one is
    wrong, naming the flag)."""
    for flag in flags.refused:
        raise ValidationError(f"--{flag}: {_NOT_HERE[flag]}", field=flag)
    _exclusive({"memory": bool(flags.memory), "instancetype": bool(flags.instancetype),
                "infer-instancetype": flags.infer_instancetype is not None,
                "infer-instancetype-from": bool(flags.infer_instancetype_from)})  # fmt: skip
    _exclusive({"preference": bool(flags.preference),
                "infer-preference": flags.infer_preference is not None,
                "infer-preference-from": bool(flags.infer_preference_from)})  # fmt: skip
    if flags.cloud_init_user_data and (flags.user or flags.password_file or flags.ssh_keys
                                       or flags.ga_manage_ssh):  # fmt: skip
        raise ValidationError("if any flags in the group [cloud-init-user-data user ssh-key "
                              "password-file ga-manage-ssh] are set none of the others can be",
                              field="cloud-init-user-data")  # fmt: skip
    name = flags.name or "vm-" + suffix()
    check_name(name, field="name")
    strategy = next((s for s in RUN_STRATEGIES if s.lower() == flags.run_strategy.lower()), "")
    if not strategy:
        raise flag_error("run-strategy", f'invalid run strategy "{flags.run_strategy}", '
                         f"supported values are: {', '.join(RUN_STRATEGIES)}")  # fmt: skip
    memory = flags.memory or "512Mi"
    try:
        parse_quantity(memory)
    except ValidationError as err:
        raise flag_error("memory", err.message) from None
    b = _Builder(flags, name)
    b.containerdisks()
    b.pvcs()
    b.imports()
    if (cloud := _cloud_init(flags)) is not None:
        b.add("cloud-init", cloud, None)
    domain: dict[str, Any] = {"devices": {"disks": b.disks} if b.disks else {}, "resources": {}}
    spec: dict[str, Any] = {"runStrategy": strategy}
    if flags.instancetype:
        spec["instancetype"] = _matcher("instancetype", flags.instancetype,
                                        ("virtualmachineinstancetype",
                                         "virtualmachineclusterinstancetype"))  # fmt: skip
    else:
        domain["memory"] = {"guest": memory}
    if flags.preference:
        spec["preference"] = _matcher("preference", flags.preference,
                                      ("virtualmachinepreference",
                                       "virtualmachineclusterpreference"))  # fmt: skip
    if b.templates:
        spec["dataVolumeTemplates"] = b.templates
    if flags.infer_instancetype is not False and not (flags.instancetype or flags.memory):
        explicit = flags.infer_instancetype is not None or bool(flags.infer_instancetype_from)
        if (matcher := _inferred(b, flags.infer_instancetype_from, explicit=explicit)) is not None:
            spec["instancetype"] = matcher
            if explicit:  # the instance type's memory, not create vm's default
                domain.pop("memory", None)
    if flags.infer_preference is not False and not flags.preference:
        explicit = flags.infer_preference is not None or bool(flags.infer_preference_from)
        if (matcher := _inferred(b, flags.infer_preference_from, explicit=explicit)) is not None:
            spec["preference"] = matcher
    template: dict[str, Any] = {
        "domain": domain,
        "terminationGracePeriodSeconds": flags.termination_grace_period,
    }
    if b.volumes:
        template["volumes"] = b.volumes
    spec["template"] = {"metadata": {"creationTimestamp": None}, "spec": template}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"creationTimestamp": None, "name": name}, "spec": spec,
            "status": {}}  # fmt: skip


def _exclusive(given: dict[str, bool]) -> None:
    """Cobra's mutually exclusive flag group, in its words."""
    if sum(given.values()) > 1:
        group, both = " ".join(given), " ".join(sorted(f for f, g in given.items() if g))
        raise ValidationError(f"if any flags in the group [{group}] are set none of the others "
                              f"can be; [{both}] were all set",
                              field=next(f for f, g in given.items() if g))  # fmt: skip


_INFERABLE_SOURCES: Final = ("pvc", "registry", "snapshot")


def _inferred(b: _Builder, named: str, *, explicit: bool) -> dict[str, str] | None:
    """virtctl's `inferFromVolume` matcher: the volume named, else the disk first in boot order,
    else the first volume. What cannot be inferred from is an error when asked for explicitly;
    by default the matcher is left out (and written with the Ignore policy when it is put)."""
    try:
        name = named or _boot_volume(b)
        volume = next((v for v in b.volumes if v["name"] == name), None)
        if volume is None:
            raise ValidationError(f"there is no volume with name '{name}'", field="volume")
        if "dataVolume" in volume:
            template = next((t for t in b.templates if t["metadata"]["name"] ==
                             volume["dataVolume"]["name"]), None)  # fmt: skip
            spec = template["spec"] if template is not None else {}
            source = spec.get("source") or {}
            by_ref = (spec.get("sourceRef") or {}).get("kind") == "DataSource"
            if (
                template is not None
                and not by_ref
                and not any(k in source for k in _INFERABLE_SOURCES)
            ):
                raise ValidationError(
                    "this DataVolume is not valid to infer an instancetype or preference from "
                    "(source needs to be PVC, Registry or Snapshot, sourceRef needs to be "
                    "DataSource)", field="volume")  # fmt: skip
        elif "persistentVolumeClaim" not in volume:
            raise ValidationError("inference of instancetype or preference works only with "
                                  "DataSources, DataVolumes or PersistentVolumeClaims",
                                  field="volume")  # fmt: skip
    except ValidationError:
        if explicit:
            raise
        return None
    if explicit:
        return {"inferFromVolume": name}
    return {"inferFromVolume": name, "inferFromVolumeFailurePolicy": "Ignore"}


def _boot_volume(b: _Builder) -> str:
    if not b.volumes:
        raise ValidationError("at least one volume is needed to infer an instance type or "
                              "preference", field="volume")  # fmt: skip
    if b.disks:  # a disk is listed only for a boot order
        return str(min(b.disks, key=lambda d: int(d["bootOrder"]))["name"])
    return str(b.volumes[0]["name"])


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (cloud-init user data) as literal blocks, as virtctl prints them."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def manifest(flags: VMSpecFlags) -> str:
    """The YAML virtctl prints: keys in order, as Go's marshalling writes them."""
    return yaml.dump(generate(flags), Dumper=_Dumper, sort_keys=True, default_flow_style=False)
