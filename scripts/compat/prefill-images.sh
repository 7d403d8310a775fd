#!/bin/bash
# No registry is reachable from this host: give every node a pre-filled (blank, sparse) disk for each
# container disk the examples and the guide name (virtbus's hand-filled cache layout: images/<name>/disk.img),
# so their VMIs run on the test driver instead of ending in ErrImagePull.
cd "$WORK"
imgs=$(grep -rhoE "image: *[a-z0-9][^ ]*" kv-examples ug | sed 's/image: *//' | grep -E '/|:' | sort -u)
imgs="$imgs my.registry/my-image:my-tag quay.io/containerdisks/fedora"
for n in data/nodes/*/; do
  for i in $imgs; do
    for v in "$i" "$i:latest"; do
      case "$v" in *:*:latest|*@*:latest) [[ "$v" == registry:5000/*:*:latest || "$v" == *@*:latest ]] && continue;; esac
      d="$n/images/$(echo "$v" | sed 's/[^A-Za-z0-9._-]\+/_/g')"; mkdir -p "$d"; [ -f "$d/disk.img" ] || truncate -s 64M "$d/disk.img"
    done
  done
done
ls data/nodes/node-a/images | wc -l
