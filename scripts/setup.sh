#!/usr/bin/env bash
# Idempotent setup for virtbus: system packages (as root), the libvirt-qemu account, a venv in .venv/.
# A second run only checks and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.virtbus-installed

# Build deps of libvirt-python (gcc also builds the QEMU tests' UDP echo for the guest), then the
# real-hypervisor stack (QEMU/KVM nodes, dnsmasq-base for the DHCP of their VM network, iptables
# and iproute2 for its NAT and namespaces), then image tools,
# then the headless browser the web view's test loads its pages in, then the OCI registry the
# container disk tests pull from (and skopeo, which fills their mirror).
APT_PACKAGES=(
  gcc libc6-dev libvirt-dev pkg-config
  qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  dnsmasq-base iptables iproute2
  libxml2-utils xorriso
  chromium
  docker-registry skopeo
)

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: virtbus needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing system packages; as root run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd refuses to start without these accounts (libvirt-daemon-system would add them, and systemd).
if [[ $(id -u) -eq 0 ]]; then
  getent group kvm >/dev/null || addgroup --system kvm >/dev/null
  getent group libvirt-qemu >/dev/null || addgroup --system libvirt-qemu >/dev/null
  getent passwd libvirt-qemu >/dev/null ||
    adduser --system --ingroup kvm --no-create-home --home /var/lib/libvirt --disabled-login libvirt-qemu >/dev/null
fi

if [[ ! -x $VENV/bin/python ]]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [[ ! -f $STAMP || pyproject.toml -nt $STAMP ]]; then
  echo "setup: installing virtbus and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  touch "$STAMP"
fi
# The stack and the suite start many Python processes (the CLI, orchestrators, workers). Where
# PYTHONDONTWRITEBYTECODE is set (this CI's machine), none keeps its bytecode and each compiles
# virtbus from source again, 0.3 s of CPU a process; compiled here (only what changed), each reads
# it: the variable stops writing bytecode, not reading it.
"$VENV/bin/python" -m compileall -q -j 0 events bus orchestrator workers virtctl virtbus bench tests >/dev/null
echo "setup: ok ($("$VENV/bin/python" --version), nats-server $("$VENV/bin/nats-server" --version 2>/dev/null | awk '{print $NF}'))"
