#!/bin/bash
# Apply every manifest of kubevirt examples/ unchanged, instance types/preferences first,
# migration-job.yaml after vmi-migratable.yaml. Output: results/manifests/<file>.{out,rc}
cd "$WORK"; . "$(dirname "$0")/env.sh"
mkdir -p results/manifests
first="clarge.yaml cluster-csmall.yaml csmall.yaml virtio.yaml windows.yaml"
last="migration-job.yaml"
order="$first $(ls kv-examples | grep -v -x -F -e clarge.yaml -e cluster-csmall.yaml -e csmall.yaml -e virtio.yaml -e windows.yaml -e migration-job.yaml) $last"
for f in $order; do
  timeout 60 virtbus apply -f kv-examples/$f > results/manifests/$f.out 2>&1
  echo $? > results/manifests/$f.rc
  printf '%-45s rc=%s %s\n' $f $(cat results/manifests/$f.rc) "$(grep -v '^Warning' results/manifests/$f.out | head -1 | cut -c1-150)"
done
