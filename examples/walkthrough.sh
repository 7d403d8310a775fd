#!/usr/bin/env bash
# The seed walkthrough on the embedded stack: run `make run` in another terminal first.
# Provides what the seed VM's volumes name on both nodes (image upload and registry pulls are not
# built yet), applies the manifest unchanged, starts, pauses, stops it, and shows its history.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/virtbus
for node in node-a node-b; do
  d=.virtbus/nodes/$node
  mkdir -p "$d/volumes/default/iso-centos7" "$d/images/kubevirt_virtio-container-disk"
  [[ -f $d/volumes/default/iso-centos7/disk.img ]] || truncate -s 16M "$d/volumes/default/iso-centos7/disk.img"
  img=$d/images/kubevirt_virtio-container-disk/disk.qcow2
  [[ -f $img ]] || qemu-img create -q -f qcow2 "$img" 64M
done
$V apply -f examples/kubevirt-centos7.yaml
$V start centos7
$V wait vm centos7 --for status=Running --timeout 30
$V get vms
$V get vmis -o wide
$V pause centos7 && $V wait vm centos7 --for status=Paused --timeout 10
$V unpause centos7 && $V wait vm centos7 --for status=Running --timeout 10
$V stop centos7 && $V wait vm centos7 --for status=Stopped --timeout 30
$V describe vm centos7
