#!/bin/bash
# KubeVirt's own material against a fresh `virtbus up` (docs/compatibility.md): kubevirt's
# examples/ applied unchanged, then the user guide's command lines (commands.tsv: names
# substituted, setup lines first). Needs clones (or mirrors) of kubevirt/kubevirt and
# kubevirt/user-guide: KUBEVIRT_GIT=DIR USER_GUIDE_GIT=DIR scripts/compat/run.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export WORK=${WORK:-$HERE/../../compat-run}
KUBEVIRT_AT=${KUBEVIRT_AT:-d923fdb815cd2016ddaebdaaa51db04133576d72}
USER_GUIDE_AT=${USER_GUIDE_AT:-bf1f3564e2a41eb059df5ab126724bb78cf15200}
rm -rf "$WORK"; mkdir -p "$WORK/results/manifests" "$WORK/kv-examples" "$WORK/ug"
git --git-dir="${KUBEVIRT_GIT:?a clone of kubevirt/kubevirt}" archive "$KUBEVIRT_AT" examples \
  | tar -x -C "$WORK/kv-examples" --strip-components=1
git --git-dir="${USER_GUIDE_GIT:?a clone of kubevirt/user-guide}" archive "$USER_GUIDE_AT" \
  | tar -x -C "$WORK/ug"
cp -r "$HERE/files" "$HERE/commands.tsv" "$WORK/"
cd "$WORK"
python3 "$HERE/extract.py" >/dev/null; python3 "$HERE/extract-yaml.py" >/dev/null
up() {  # a fresh stack on a free port, its data in ./data
  [ -f up.pid ] && { kill -INT -- "-$(cat up.pid)" 2>/dev/null || true; sleep 5; }
  rm -rf data
  setsid "$HERE/../../.venv/bin/virtbus" up --data-dir "$WORK/data" --port -1 > up.log 2>&1 &
  echo $! > up.pid
  for _ in $(seq 60); do grep -q '^bus:' up.log && break; sleep 1; done
  bash "$HERE/prefill-images.sh"
}
trap '[ -f up.pid ] && kill -INT -- "-$(cat up.pid)" 2>/dev/null; true' EXIT
up; bash "$HERE/apply-examples.sh" | tee results/manifests.log
up; bash "$HERE/run-commands.sh" > results/run.log 2>&1
cut -f2 results/commands-results.tsv | sort | uniq -c
