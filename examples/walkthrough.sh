#!/usr/bin/env bash
# The seed article's walkthrough ("a quick look at KubeVirt") on virtbus, as a user types it:
# upload an ISO into the PVC iso-centos7, apply examples/kubevirt-centos7.yaml unchanged, start
# the VM, reach its display through a VNC proxy, stop it, swap the boot order (the disk first, the
# cdrom second), apply that, start it again, show the domain's boot order, then delete the VM.
#
# Run it while the stack runs in another terminal:
#   make run HYPERVISOR=qemu   # nodes on real QEMU/KVM (root and /dev/kvm): every step
#   make run                   # nodes on libvirt's test driver: no display, so the VNC step and
#                              # the look at the libvirt domain are skipped
#
# Uses only the virtbus CLI, xorriso (make setup installs it) and standard tools. Settings:
#   VIRTBUS_NATS_URL  the bus (default nats://127.0.0.1:4222)
#   VIRTBUS_CREDS, VIRTBUS_TLS_CA  who you are on it and its CA (default: the admin's, found in
#                     .virtbus/ where `make run` keeps them)
#   NODES_DIR         the nodes' data dir (default .virtbus/nodes, where `make run` keeps it)
#   ISO               an ISO to upload (default: a small one made here with xorriso, no OS on it)
#   WAIT              seconds to wait for each step (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."
V=${VIRTBUS:-.venv/bin/virtbus}
NODES_DIR=${NODES_DIR:-.virtbus/nodes}
WAIT=${WAIT:-120}
work=$(mktemp -d)
proxy=""
cleanup() {
  if [[ -n $proxy ]]; then kill "$proxy" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n### %s\n' "$*"; }
run() {
  printf '$ virtbus %s\n' "$*"
  "$V" "$@"
}

# The containerDisk kubevirt/virtio-container-disk: nodes pull it from the registries in
# VIRTBUS_REGISTRIES (as set where `make run` started them) when their image cache lacks it. With
# none configured (no registry is reachable from a fresh machine), a small blank raw disk is put
# in each node's cache to stand in for the virtio drivers.
provide_container_disk() {
  local node d
  [[ -n ${VIRTBUS_REGISTRIES:-} ]] && return
  for node in $("$V" get nodes | awk 'NR > 1 {print $1}'); do
    d=$NODES_DIR/$node/images/kubevirt_virtio-container-disk
    mkdir -p "$d"
    [[ -f $d/disk.img ]] || truncate -s 16M "$d/disk.img"
  done
}

step "the nodes, and what a previous run left"
if ! "$V" get nodes >/dev/null; then
  echo "start the stack first, in another terminal: make run HYPERVISOR=qemu (or make run)" >&2
  exit 1
fi
for _ in $(seq "$WAIT"); do # a stack just started: its nodes register within seconds
  # (the output is read whole, then searched: `grep -q` in a pipe quits at its first match, and
  # with pipefail the CLI's broken pipe would fail the check however it matched)
  [[ $("$V" get nodes 2>/dev/null) == *" Ready "* ]] && break
  sleep 1
done
run get nodes
if [[ $("$V" get nodes) != *" Ready "* ]]; then
  echo "no node is Ready: see what the stack's terminal says" >&2
  exit 1
fi
qemu=false
if [[ $("$V" get nodes -o json) == *'"hypervisor": "qemu"'* ]]; then
  qemu=true
else
  echo "note: no QEMU node (plain \`make run\` runs libvirt's test driver): the VNC step and the"
  echo "look at the libvirt domain are skipped; \`make run HYPERVISOR=qemu\` (root, /dev/kvm) runs them"
fi
if "$V" delete centos7 >/dev/null 2>&1; then
  "$V" wait vm centos7 --for delete --timeout "$WAIT" >/dev/null
fi
"$V" volume delete iso-centos7 >/dev/null 2>&1 || true

step "virtctl image-upload: the installation ISO into the PVC iso-centos7"
iso=${ISO:-}
if [[ -z $iso ]]; then
  mkdir "$work/iso"
  echo "virtbus walkthrough" >"$work/iso/README.TXT"
  iso=$work/centos7.iso
  xorriso -as mkisofs -quiet -V CENTOS7 -o "$iso" "$work/iso"
fi
run image-upload --image-path "$iso" --pvc-name iso-centos7 --pvc-size 5G
run get pvc iso-centos7
provide_container_disk

step "kubectl apply -f kubevirt-centos7.yaml (the article's manifest, unchanged)"
run apply -f examples/kubevirt-centos7.yaml
run get vms

step "virtctl start centos7"
run start centos7
run wait vm centos7 --for status=Running --timeout "$WAIT"
run get vmis -o wide

step "virtctl vnc centos7 --proxy-only"
if $qemu; then
  "$V" vnc centos7 --proxy-only >"$work/vnc.json" &
  proxy=$!
  for _ in $(seq 100); do
    [[ -s $work/vnc.json ]] && break
    sleep 0.1
  done
  port=$(sed -n 's/.*"port": *\([0-9]*\).*/\1/p' "$work/vnc.json")
  echo "VNC proxy on 127.0.0.1:$port (a VNC viewer connects there; this script reads the banner)"
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  read -r -t 30 -N 12 banner <&3
  exec 3<&-
  banner=${banner%$'\n'}
  echo "VNC server says: $banner"
  [[ $banner == "RFB 003.00"* ]]
  wait "$proxy" || true
  proxy=""
else
  echo "skipped: the test driver's domains have no display"
fi

step "virtctl stop centos7"
# The ISO made here holds no OS to answer an ACPI shutdown, so do not wait out the 180 s grace
# period; with a real guest, plain `virtbus stop centos7` shuts it down gracefully.
run stop centos7 --grace-period 0 --force
run wait vm centos7 --for status=Stopped --timeout "$WAIT"

step "kubectl edit: the hard disk boots first, the cdrom second"
sed -e 's/^\( *- \)bootOrder: 1$/\1bootOrder: 2/' \
  -e 's/^\( *\)- disk:$/\1- bootOrder: 1\n\1  disk:/' \
  examples/kubevirt-centos7.yaml >"$work/kubevirt-centos7.yaml"
diff -u examples/kubevirt-centos7.yaml "$work/kubevirt-centos7.yaml" || true
run apply -f "$work/kubevirt-centos7.yaml"

step "virtctl start centos7, with the new boot order"
run start centos7
run wait vm centos7 --for status=Running --timeout "$WAIT"
if $qemu; then
  node=$("$V" get vmis centos7 -o json | sed -n 's/.*"nodeName": "\(.*\)".*/\1/p')
  uri=$("$V" get nodes "$node" -o json | sed -n 's/.*"libvirtURI": "\(.*\)".*/\1/p')
  echo "the domain's disks and boot order on $node (virsh -r -c '$uri' dumpxml default_centos7):"
  virsh -r -c "$uri" dumpxml default_centos7 | grep -E "<target dev=|<boot order="
else
  echo "the VMI's disks (get vmi centos7 -o yaml):"
  "$V" get vmis centos7 -o yaml | grep -E "bootOrder|name: (cdromiso|harddrive)$"
fi

step "stop and delete (the VM's disks are kept)"
run stop centos7 --grace-period 0 --force
run wait vm centos7 --for status=Stopped --timeout "$WAIT"
run delete centos7
run wait vm centos7 --for delete --timeout "$WAIT"
echo
echo "walkthrough done"
