"""Fuzzing the manifest door (issue 12): mutated KubeVirt manifests in, commands or a path out.

How each bad input is handled: a wrong type, null, empty, out-of-range number, negative or huge
quantity, NaN, a value JSON cannot carry, nesting past 64 levels or a duplicated name is a
`ValidationError` whose `field` is the path of the value; unknown fields and odd strings that
KubeVirt tolerates only warn. Nothing else may escape `to_commands`, and what it accepts must
cross the wire unchanged and pass the intake's own re-check (`validate_apply`).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from fuzzing import examples, manifests, realize
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.server import NatsServer
from events.commands import ApplyReplicaSet, ApplyVM
from events.errors import ValidationError
from events.manifest import (
    RUN_STRATEGIES,
    parse_documents,
    run_strategy_of,
    summarize,
    to_commands,
)
from orchestrator.decide import validate_apply

CLI = [sys.executable, "-m", "virtbus"]


def judged(doc: Any) -> ValidationError | None:
    """None when `doc` is accepted (and its command checked), else the rejection, checked."""
    try:
        commands, warnings = to_commands(doc)
    except ValidationError as err:
        assert err.field, err.message  # a path, never an anonymous rejection
        assert err.message.startswith(f"{err.field}: "), err.message
        return err
    [cmd] = commands
    assert all(w.startswith("warning: ") for w in warnings)
    # What the CLI publishes is what the orchestrator decodes: same command, nothing lost.
    assert msgspec.json.decode(msgspec.json.encode(cmd), type=type(cmd)) == cmd
    if isinstance(cmd, ApplyVM):
        validate_apply(cmd)  # the intake judges the spec again; it must agree
        assert run_strategy_of(cmd.spec) in RUN_STRATEGIES
        need = summarize(cmd.spec)  # the controller reads these when it schedules
        assert need["memory_bytes"] >= 0
        assert 1 <= need["cpus"] <= 4096
    if isinstance(cmd, ApplyReplicaSet):
        assert 0 <= cmd.spec["replicas"] <= 10_000
    return None


@settings(max_examples=examples(2_000, 25_000))
@given(doc=manifests)
def test_mutated_manifests_are_accepted_or_name_the_path(doc: Any) -> None:
    judged(realize(doc))


@pytest.mark.parametrize("bad", [float("inf"), 2**63], ids=["inf", "int65"])
def test_a_bad_value_under_an_empty_key_is_named_too(bad: object) -> None:
    """Found by the campaign in CI: a top-level key "" made a rejection with no path at all."""
    doc = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "a"},
           "spec": {}, "": bad}  # fmt: skip
    err = judged(doc)
    assert err is not None and err.field == '[""]'


@settings(max_examples=examples(300, 5_000))
@given(doc=manifests)
def test_mutated_manifests_read_from_yaml_are_judged_the_same(doc: Any) -> None:
    """Through the YAML parser too, as `virtbus apply -f` reads them."""
    try:
        text = yaml.safe_dump_all([realize(doc)], allow_unicode=True)
    except (yaml.YAMLError, RecursionError):  # not every value has a YAML spelling
        return
    try:
        docs = parse_documents(text)
    except ValidationError as err:
        # nested past what the parser composes, or a root that is not a mapping
        assert err.field == "yaml" or err.field.startswith("documents["), err.field
        return
    for parsed in docs:
        judged(parsed)


@settings(max_examples=examples(300, 5_000))
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_text_is_documents_or_a_yaml_error(text: str) -> None:
    try:
        docs = parse_documents(text)
    except ValidationError as err:
        assert err.field == "yaml" or err.field.startswith("documents["), err.field
        return
    for doc in docs:
        judged(doc)


# --- the findings of the campaign, each pinned (docs/fuzzing.md) --------------------------------

TSPEC = "spec.template.spec"
NIC = f"{TSPEC}.domain.devices.interfaces[0]"


def _seed() -> dict[str, Any]:
    [doc] = parse_documents(Path("examples/kubevirt-centos7.yaml").read_text())
    return doc


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda d: d.update(apiVersion={}), "apiVersion", "{} is not supported"),
        (lambda d: d.update(kind=["VirtualMachine"]), "kind", "is not supported"),
        (lambda d: _nic(d).update(model=["x"]), f"{NIC}.model", "['x'] must be a string"),
        (lambda d: _nic(d).update(model={"a": 1}), f"{NIC}.model", "must be a string"),
        (lambda d: _nic(d).update(macAddress=7), f"{NIC}.macAddress", "7 must be a string"),
        (lambda d: _vmi(d).update(nodeSelector=["a"]), f"{TSPEC}.nodeSelector", "a mapping"),
        (lambda d: _vmi(d).update(nodeSelector={"a": 1}), f"{TSPEC}.nodeSelector.a", "string"),
        (
            lambda d: _vmi(d).update(terminationGracePeriodSeconds="30"),
            f"{TSPEC}.terminationGracePeriodSeconds",
            "an integer, 0 to 86400",
        ),
        (
            lambda d: _vmi(d)["domain"]["cpu"].update(cores=5000),
            f"{TSPEC}.domain.cpu.cores",
            "at most 4096",
        ),
        (
            lambda d: _vmi(d)["domain"]["cpu"].update(cores=2**70),
            f"{TSPEC}.domain.cpu.cores",
            "out of range (integers are 64-bit)",
        ),
        (
            lambda d: _vmi(d)["domain"]["cpu"].update(cores=64, sockets=128),
            f"{TSPEC}.domain.cpu",
            "8192 vCPUs",
        ),
        (
            lambda d: _vmi(d)["domain"]["resources"]["requests"].update(memory="-1Gi"),
            f"{TSPEC}.domain.resources.requests.memory",
            "must not be negative",
        ),
        (
            lambda d: _vmi(d)["domain"]["resources"]["requests"].update(memory="9Ei"),
            f"{TSPEC}.domain.resources.requests.memory",
            "out of range",
        ),
        (
            lambda d: _vmi(d)["domain"]["resources"]["requests"].update(memory="1e999999"),
            f"{TSPEC}.domain.resources.requests.memory",
            "out of range",
        ),
        (
            lambda d: _vmi(d)["domain"]["resources"]["requests"].update(memory=0),
            f"{TSPEC}.domain.resources.requests.memory",
            "more than zero",
        ),
        (
            lambda d: _vmi(d)["domain"]["devices"]["disks"][1].update(bootOrder=1),
            f"{TSPEC}.domain.devices.disks[1].bootOrder",
            "already the boot order of",
        ),
        (
            lambda d: _vmi(d)["domain"]["devices"]["disks"][1].update(cache="fast"),
            f"{TSPEC}.domain.devices.disks[1].cache",
            "not one of none, writethrough",
        ),
        (
            lambda d: _vmi(d)["domain"].update(machine={"type": 35}),
            f"{TSPEC}.domain.machine.type",
            "must be a string",
        ),
        (
            lambda d: _vmi(d)["volumes"][2].update(containerDisk={"image": ["a"]}),
            f"{TSPEC}.volumes[2].containerDisk.image",
            "must be a string",
        ),
        (
            lambda d: _vmi(d)["volumes"][0].update(persistentVolumeClaim="iso"),
            f"{TSPEC}.volumes[0].persistentVolumeClaim",
            "expected a mapping",
        ),
        (lambda d: d["spec"].update(extra=float("nan")), "spec.extra", "not a number JSON"),
        (lambda d: d["spec"].update(extra=2**70), "spec.extra", "out of range"),
        (lambda d: d["spec"].update(extra={1: "a"}), "spec.extra.1", "must be a string"),
        (lambda d: d["spec"].update(extra=_deep(500)), "spec.extra" + ".x" * 62, "64 levels"),
        (lambda d: d["metadata"].update(labels={"a": ["b"]}), "metadata.labels.a", "string"),
        (lambda d: d.update(apiVersion=_deep(2_000)), "apiVersion", "nested too deeply to show"),
        (
            lambda d: _vmi(d)["domain"]["cpu"].update(model="virtio\x00"),
            f"{TSPEC}.domain.cpu.model",
            "must be letters, digits and _.+-",
        ),
        (
            lambda d: _vmi(d)["domain"]["resources"]["requests"].update(
                memory="9223372036854775807"
            ),
            f"{TSPEC}.domain.resources.requests.memory",
            "more than zero and at most 8Ei",
        ),
    ],
)
def test_each_finding_is_a_rejection_naming_the_path(change: Any, field: str, reason: str) -> None:
    doc = _seed()
    change(doc)
    err = judged(doc)
    assert err is not None
    assert err.field == field
    assert reason in err.message, err.message


def _vmi(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _nic(doc: dict[str, Any]) -> dict[str, Any]:
    nic: dict[str, Any] = _vmi(doc)["domain"]["devices"]["interfaces"][0]
    return nic


def test_null_replicas_and_null_cpu_counts_mean_unset() -> None:
    """Findings 17 and 18: both were accepted and then crashed `int(None)` in the orchestrator."""
    doc = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
        "metadata": {"name": "pool"},
        "spec": {"replicas": None, "template": _seed()["spec"]["template"]},
    }  # fmt: skip
    _vmi(doc)["domain"]["cpu"] = {"cores": None, "sockets": 2}
    assert judged(doc) is None
    [cmd], _ = to_commands(doc)
    assert isinstance(cmd, ApplyReplicaSet)
    assert cmd.spec["replicas"] == 1
    assert summarize(cmd.spec["template"]["spec"])["cpus"] == 2


def test_yaml_nested_past_the_parser_is_a_yaml_error() -> None:
    with pytest.raises(ValidationError) as info:
        parse_documents("a: " + "[" * 5_000 + "]" * 5_000)
    assert info.value.field == "yaml"
    assert "nested too deeply" in info.value.message


def test_yaml_dates_and_binary_are_not_json() -> None:
    doc = _seed()
    doc["metadata"]["annotations"] = {"when": "2024-01-01"}
    [parsed] = parse_documents(yaml.safe_dump(doc).replace("'2024-01-01'", "2024-01-01"))
    err = judged(parsed)
    assert err is not None
    assert err.field == "metadata.annotations.when"
    assert "a date is not a JSON value" in err.message


# --- the CLI, on a handful of mutated files ------------------------------------------------------

CLI_CASES = [
    (lambda d: _nic(d).update(model=["x"]), f"{NIC}.model"),
    (lambda d: d.update(apiVersion={}), "apiVersion"),
    (lambda d: _vmi(d)["domain"]["cpu"].update(cores="2"), f"{TSPEC}.domain.cpu.cores"),
    (lambda d: _vmi(d)["volumes"][1]["hostDisk"].update(capacity="-1Gi"),
     f"{TSPEC}.volumes[1].hostDisk.capacity"),
    (lambda d: d["spec"].update(extra=_deep(100)), "spec.extra" + ".x" * 62),
]  # fmt: skip


@pytest.mark.parametrize(("change", "field"), CLI_CASES)
async def test_cli_apply_names_the_path_without_a_traceback(
    nats_server: NatsServer, tmp_path: Path, change: Any, field: str
) -> None:
    """`virtbus apply -f` on a broken manifest: exit 1, one `error: <path>: ...` line."""
    doc = _seed()
    change(doc)
    path = tmp_path / "vm.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = await asyncio.create_subprocess_exec(
        *CLI, "apply", "-f", str(path), "--server", nats_server.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode in (1, 2), (proc.returncode, out, err)
    assert b"Traceback" not in err + out
    assert f"error: {field}: ".encode() in err, err
