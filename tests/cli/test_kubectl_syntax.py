"""kubectl's small languages as virtbus reads them, pure: JSONPath templates (`-o jsonpath=`),
label selectors (`-l`), patches (`patch --type merge|json`) and `TYPE/NAME` arguments."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from events.errors import ValidationError
from virtbus.cli import app
from virtctl import jsonpath, kinds, patching
from virtctl.cli_common import WEEK_S, seconds
from virtctl.cli_errors import flag_names, pflag_bools, pflag_shorts
from virtctl.kubectlflags import globals_first
from virtctl.selector import parse as selector

LIST: dict[str, Any] = {
    "kind": "List",
    "items": [
        {"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "web"}},
         "status": {"printableStatus": "Running", "ready": True, "cpus": 2,
                    "conditions": [{"type": "Ready", "status": "True"},
                                   {"type": "Paused", "status": "False"}]}},
        {"metadata": {"name": "b", "labels": {}},
         "status": {"printableStatus": "Stopped", "ready": False, "cpus": 4}},
    ],
}  # fmt: skip


def run(template: str, doc: Any = LIST) -> str:
    return jsonpath.execute(jsonpath.parse(template), doc)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{.items[*].metadata.name}", "a b"),
        ("{.items[0].status.printableStatus}", "Running"),
        ("{.items[-1].metadata.name}", "b"),
        ("{.items[0:1].metadata.name}", "a"),
        ("{range .items[*]}{.metadata.name}{\"\\t\"}{.status.ready}{\"\\n\"}{end}",
         "a\ttrue\nb\tfalse\n"),
        ("{.items[?(@.status.cpus>2)].metadata.name}", "b"),
        ('{.items[?(@.status.printableStatus=="Running")].metadata.name}', "a"),
        ("{.items[?(@.status.conditions)].metadata.name}", "a"),
        ("{..printableStatus}", "Running Stopped"),
        ("{.items[0].metadata.labels.app\\.kubernetes\\.io/name}", "web"),
        ("{.items[0].metadata.labels['app.kubernetes.io/name']}", "web"),
        ("{.items[1].metadata.labels}", "{}"),
        ("{.items[0].status.conditions[?(@.type==\"Ready\")].status}", "True"),
        ("name={.items[0].metadata.name}!", "name=a!"),
        ("{.items[5].metadata.name}{.nothing.here}", ""),  # missing keys print nothing
        ("{.kind}", "List"),
    ],
)  # fmt: skip
def test_jsonpath_reads_what_kubectl_scripts_read(template: str, expected: str) -> None:
    assert run(template) == expected


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{.items[0}", "unclosed array expect ]"),
        ("{.items[*].metadata.name", "unclosed action"),
        ("{range .items[*]}{.metadata.name}", "{range} without {end}"),
        ("{.a}{end}", "{end} without {range}"),
        ("{.items[0,1]}", "unions like [0,1] are not supported by virtbus"),
    ],
)
def test_jsonpath_refuses_what_it_cannot_read(template: str, reason: str) -> None:
    with pytest.raises(ValidationError) as err:
        jsonpath.parse(template)
    assert err.value.message == f"error parsing jsonpath {template}, {reason}"


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),  # absent is "not web"
        ("app!=web", {"app": "web"}, False),
        ("tier in (web, db)", {"tier": "db"}, True),
        ("tier in (web,db)", {"tier": "cache"}, False),
        ("tier notin (web,db)", {}, True),
        ("canary", {"canary": ""}, True),
        ("!canary", {"canary": "yes"}, False),
        ("!canary", {}, True),
        ("app=web,tier in (a,b),!canary", {"app": "web", "tier": "b"}, True),
        ("app=web,tier in (a,b),!canary", {"app": "web", "tier": "c"}, False),
        ("kubevirt.io/vm=x", {"kubevirt.io/vm": "x"}, True),
        ("", {"any": "thing"}, True),
    ],
)
def test_selectors_match_as_kubernetes_does(text: str, labels: dict[str, str],
                                            expected: bool) -> None:  # fmt: skip
    assert selector(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["app=", "=web", "app in web", "a b", "app=we b", "a in (x y)"])
def test_bad_selectors_name_the_selector(text: str) -> None:
    if text == "app=":  # an empty value is a value: it matches the label set to ""
        assert selector(text).matches({"app": ""})
        return
    with pytest.raises(ValidationError) as err:
        selector(text)
    assert err.value.message.startswith(f"-l {text!r}: "), err.value.message


DOMAIN: dict[str, Any] = {"memory": {"guest": "1Gi"}, "devices": {"disks": [{"name": "a"}]}}
VM: dict[str, Any] = {
    "metadata": {"name": "x"},
    "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": DOMAIN}}},
}


def test_merge_patch_merges_objects_and_null_removes() -> None:
    out = patching.merge(VM, {"spec": {"runStrategy": "Always", "running": None},
                              "metadata": {"labels": {"a": "b"}}})  # fmt: skip
    assert out == {"metadata": {"name": "x", "labels": {"a": "b"}},
                   "spec": {**VM["spec"], "runStrategy": "Always"}}  # fmt: skip
    assert VM["spec"]["runStrategy"] == "Halted"  # the input is left alone


def test_json_patch_operations() -> None:
    ops = [
        {"op": "replace", "path": "/spec/template/spec/domain/memory/guest", "value": "2Gi"},
        {"op": "add", "path": "/spec/template/spec/domain/devices/disks/-", "value": {"name": "b"}},
        {"op": "test", "path": "/spec/runStrategy", "value": "Halted"},
        {"op": "copy", "from": "/spec/runStrategy", "path": "/metadata/was"},
        {"op": "remove", "path": "/spec/template/spec/domain/devices/disks/0"},
    ]
    import copy

    out = patching.json_patch(copy.deepcopy(VM), ops)
    domain = out["spec"]["template"]["spec"]["domain"]
    assert domain == {"memory": {"guest": "2Gi"}, "devices": {"disks": [{"name": "b"}]}}
    assert out["metadata"] == {"name": "x", "was": "Halted"}


@pytest.mark.parametrize(
    ("ops", "reason"),
    [
        ([{"op": "replace", "path": "/spec/nope", "value": 1}],
         "--patch: [0] /spec/nope: 'nope' does not exist"),
        ([{"op": "remove", "path": "/spec/template/spec/domain/devices/disks/3"}],
         "--patch: [0] /spec/template/spec/domain/devices/disks/3: '3' is not an index of a list "
         "of 1"),
        ([{"op": "test", "path": "/spec/runStrategy", "value": "Always"}],
         "--patch: [0] test /spec/runStrategy: the value differs"),
        ([{"op": "frobnicate", "path": "/spec"}],
         "--patch: [0].op: 'frobnicate': use add, remove, replace, move, copy or test"),
        ([{"op": "add", "path": "spec"}], "--patch: [0] add spec: value is missing"),
        ({"op": "add"}, "--patch: a JSON patch is a list of operations"),
    ],
)  # fmt: skip
def test_json_patch_failures_name_the_operation(ops: Any, reason: str) -> None:
    import copy

    with pytest.raises(ValidationError) as err:
        patching.json_patch(copy.deepcopy(VM), ops)
    assert err.value.message == reason


def test_strategic_merge_is_refused_as_for_custom_resources() -> None:
    with pytest.raises(ValidationError) as err:
        patching.apply_patch({}, {}, kind_of_patch="strategic")
    assert "application/merge-patch+json" in err.value.message


@pytest.mark.parametrize(
    ("what", "name", "key", "named"),
    [
        ("vm/x", None, "vms", "x"), ("vmis/x", None, "vmis", "x"), ("vm", "x", "vms", "x"),
        ("VirtualMachineInstanceReplicaSet", None, "vmirs", None),
        ("virtualmachines.kubevirt.io/x", None, "vms", "x"), ("vmsnapshot/s", None,
                                                              "vmsnapshots", "s"),
        ("pvc", None, "pvc", None), ("no/node-a", None, "nodes", "node-a"),
        ("migrations", "m", "vmims", "m"),
    ],
)  # fmt: skip
def test_kinds_by_every_name_and_in_type_name_form(what: str, name: str | None, key: str,
                                                   named: str | None) -> None:  # fmt: skip
    kind, found = kinds.split(what, name)
    assert (kind.key, found) == (key, named)


def test_kind_names_as_kubectl_prints_them() -> None:
    assert kinds.VM.object_name("x") == "virtualmachine.kubevirt.io/x"
    assert kinds.PVC.object_name("x") == "persistentvolumeclaim/x"
    assert kinds.SNAPSHOT.not_found("s") == (
        'virtualmachinesnapshots.snapshot.kubevirt.io "s" not found'
    )
    assert kinds.VMIRS.not_found("r") == (
        'virtualmachineinstancereplicasets.kubevirt.io "r" not found'
    )
    for bad in (("vm/x", "y"), ("vm", "vm/x"), ("vm/", None)):
        with pytest.raises(ValidationError):
            kinds.split(*bad)
    with pytest.raises(ValidationError) as err:
        kinds.split("widgets/x", None)
    assert err.value.message == 'the server doesn\'t have a resource type "widgets"'


@pytest.mark.parametrize(("text", "secs"), [
    ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5s", 1.5),
    ("2m0.5s", 120.5), ("45", 45.0), ("0", 0.0), ("0s", 0.0), ("-1s", WEEK_S), ("-1", WEEK_S),
    (60, 60.0), (30.0, 30.0),  # an option's default, which click hands over as it is
])  # fmt: skip
def test_timeouts_read_kubectls_durations_and_plain_seconds(text: str | float, secs: float) -> None:
    assert seconds(text) == secs


@pytest.mark.parametrize("text", ["", "s", "5 m", "1d", "1m30", "abc", "--5s"])
def test_a_duration_that_is_none_is_refused_saying_what_one_looks_like(text: str) -> None:
    with pytest.raises(typer.BadParameter) as bad:
        seconds(text)
    assert str(bad.value) == (f"time: invalid duration {text!r} (like 30s, 5m, 1h30m, or seconds)")


def test_pflags_short_option_with_an_equals_sign_is_split_for_click() -> None:
    argv = ["patch", "vm", "x", "-p=[1]", "-n=ns", "--type=json", "-p", "=x", "--", "-o=y"]
    split = ["-p", "[1]", "-n", "ns", "--type=json", "-p", "=x", "--", "-o=y"]
    assert pflag_shorts(argv) == ["patch", "vm", "x", *split]


@pytest.mark.parametrize(("argv", "read"), [
    (["-n", "kubevirt", "get", "kv"], ["get", "kv", "--namespace", "kubevirt"]),
    (["--namespace=a", "patch", "vm", "x", "-p", "{}"],
     ["patch", "vm", "x", "-p", "{}", "--namespace", "a"]),
    (["-n", "a", "ssh", "vm/x", "--", "-n", "b"],
     ["ssh", "vm/x", "--namespace", "a", "--", "-n", "b"]),
    (["get", "vms", "-n", "a"], ["get", "vms", "-n", "a"]),  # after the verb: as it is
    (["-n", "a"], ["--namespace", "a"]),  # no verb: click says what is missing
    (["-A", "--creds", "a.creds", "--tls-ca=ca.pem", "-s", "nats://h:4222", "get", "vms"],
     ["get", "vms", "--all-namespaces", "--creds", "a.creds", "--tls-ca", "ca.pem", "--server",
      "nats://h:4222"]),
    (["--all-namespaces", "-n", "a", "get", "vms"],  # both: `get` says what it does with them
     ["get", "vms", "--all-namespaces", "--namespace", "a"]),
    (["-A", "start", "x"], ["start", "x", "--all-namespaces"]),  # click refuses it for `start`
    # kubectl's log level, in all its forms and anywhere before `--`: dropped
    (["-v", "6", "get", "vms", "-v6", "--v=9", "--v", "2", "--", "-v", "1"],
     ["get", "vms", "--", "-v", "1"]),
    (["get", "vms", "-v", "x"], ["get", "vms", "-v", "x"]),  # not a level: click refuses it
])  # fmt: skip
def test_global_flags_before_the_verb_go_after_it(argv: list[str], read: list[str]) -> None:
    assert globals_first(argv) == read


@pytest.mark.parametrize(("argv", "reason"), [
    (["--kubeconfig", "k", "get", "vms"],
     "--kubeconfig: virtbus does not read kubeconfigs: it reaches its bus, given by --server (or "
     "$VIRTBUS_NATS_URL) and --creds"),
    (["get", "vms", "--context=prod"],
     "--context: virtbus does not read kubeconfigs: it reaches its bus, given by --server (or "
     "$VIRTBUS_NATS_URL) and --creds"),
    (["get", "vms", "--v=loud"], "--v: kubectl's log level is a number (--v=6), not 'loud'"),
])  # fmt: skip
def test_kubeconfig_context_and_a_wordy_level_are_refused(argv: list[str], reason: str) -> None:
    with pytest.raises(ValidationError) as err:
        globals_first(argv)
    assert err.value.message == reason


def test_pflags_boolean_with_a_value_is_the_flag_its_off_form_or_nothing() -> None:
    flags = flag_names(typer.main.get_command(app))
    assert (flags["--watch"], flags["-w"], flags["--no-infer-instancetype"]) == (
        ("--watch", ""),
        ("--watch", ""),
        ("--no-infer-instancetype", "--infer-instancetype"),
    )
    argv = ["get", "vms", "--watch=true", "-w=false", "--infer-instancetype=False", "--x=true",
            "--", "--watch=true"]  # fmt: skip
    assert pflag_bools(argv, flags) == [
        "get",
        "vms",
        "--watch",
        "--no-infer-instancetype",
        "--x=true",
        "--",
        "--watch=true",
    ]
