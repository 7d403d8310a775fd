"""kubectl's global flags, read where a kubectl user puts them: before the verb as after it.

kubectl takes `-n NS`, `-A`, `-s URL`, `-v N`... anywhere on its line; click takes a verb's options
only after the verb. `globals_first` moves the ones virtbus's verbs take (namespace, all
namespaces, the bus's address and files) after the verb, drops kubectl's log level (`-v N`:
virtbus has no log levels; accepted so a copied kubectl line runs, and it changes nothing) and
refuses `--kubeconfig` and `--context` (virtbus reaches its bus, not an API server: a kubeconfig
would be read and then not used). After a `--` nothing is touched: it is the guest's command.
"""

from __future__ import annotations

import re
from typing import Final

from events.errors import ValidationError

# flag -> how the verbs spell it (click takes `--namespace NS`, not `--namespace=NS`)
_VALUED: Final = {"-n": "--namespace", "--namespace": "--namespace", "-s": "--server",
                  "--server": "--server", "--creds": "--creds", "--tls-ca": "--tls-ca",
                  "--tls-cert": "--tls-cert", "--tls-key": "--tls-key"}  # fmt: skip
_SWITCHES: Final = {"-A": "--all-namespaces", "--all-namespaces": "--all-namespaces"}
_REFUSED: Final = ("--kubeconfig", "--context")
_LEVEL: Final = re.compile(r"-?\d+")
HELP: Final = (
    "kubectl's global flags may come before the verb as after it: -n/--namespace, "
    "-A/--all-namespaces (where the verb lists), -s/--server, --creds, --tls-ca, --tls-cert, "
    "--tls-key. -v N (kubectl's log level) is accepted for kubectl's habits and changes nothing. "
    "--kubeconfig and --context are refused: virtbus reaches its bus (--server, --creds), not "
    "an API server."
)


def globals_first(args: list[str]) -> list[str]:
    """`args` as the verbs read them: the global flags before the verb moved after it (before a
    `--`), `-v N` dropped wherever it is; a ValidationError for `--kubeconfig`, `--context` or a
    log level that is not a number."""
    end = args.index("--") if "--" in args else len(args)
    head, tail = _unlevelled(args[:end]), args[end:]
    moved: list[str] = []
    while head:
        name, eq, value = head[0].partition("=")
        if name in _VALUED and (eq or len(head) > 1):
            moved += [_VALUED[name], value if eq else head[1]]
            head = head[1:] if eq else head[2:]
        elif head[0] in _SWITCHES:
            moved, head = [*moved, _SWITCHES[head[0]]], head[1:]
        else:
            break
    return [*head, *moved, *tail]


def _unlevelled(args: list[str]) -> list[str]:
    """`args` without kubectl's `-v N`, `-vN`, `--v N`, `--v=N` (`-v=N` is `-v N` by now:
    `pflag_shorts`); `--kubeconfig` and `--context` refused. A `-v` without a number is left for
    click to refuse: it may be some verb's value."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in _REFUSED:
            raise ValidationError(f"{name}: virtbus does not read kubeconfigs: it reaches its "
                                  "bus, given by --server (or $VIRTBUS_NATS_URL) and --creds",
                                  field=name.lstrip("-"))  # fmt: skip
        if name == "--v" and eq:
            if not _LEVEL.fullmatch(value):
                raise ValidationError(f"--v: kubectl's log level is a number (--v=6), not "
                                      f"{value!r}", field="v")  # fmt: skip
            i += 1
        elif arg in ("-v", "--v") and i + 1 < len(args) and _LEVEL.fullmatch(args[i + 1]):
            i += 2
        elif arg.startswith("-v") and _LEVEL.fullmatch(arg[2:]):
            i += 1
        else:
            out.append(arg)
            i += 1
    return out
