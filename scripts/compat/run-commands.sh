#!/bin/bash
# Run commands.tsv against the stack (virtctl/kubectl replaced by virtbus), classify each.
# Output: results/cmd/<n>-<id>.out (full output), results/commands-results.tsv (id, class, rc, command, first line)
cd "$WORK"; . "$(dirname "$0")/env.sh"
mkvm() { sed -e "s/vm-cirros/$1/g" -e 's/runStrategy: Halted/runStrategy: Always/' kv-examples/vm-cirros.yaml | virtbus apply -f -; }
export -f mkvm
rm -rf results/cmd; mkdir -p results/cmd; : > results/commands-results.tsv
n=0
grep -v '^#' commands.tsv | while IFS=$'\t' read -r id mode cmd; do
  n=$((n+1)); c=$(printf '%s' "$cmd" | sed -E 's/\b(virtctl|kubectl)\b/virtbus/g')
  out=results/cmd/$(printf %03d $n)-$id.out
  case $mode in C) t=60; [ "$id" = S ] && t=300;; I) t=15;; W) t=8;; esac
  timeout -k 5 $t bash -o pipefail -c "$c" < /dev/null > $out 2>&1; rc=$?
  [ "$id" = S ] && { printf 'SETUP rc=%s %s\n' $rc "$c" >> results/setup.log; continue; }
  if grep -q 'Traceback\|internal error\|Internal error' $out; then cls=internal
  elif [ $rc = 124 ] || [ $rc = 137 ]; then
    if [ $mode != C ] && ! grep -qi 'error\|refused\|not found\|No such' $out; then cls=worked; else cls=timeout; fi
  elif grep -q "No such option\|Missing argument\|No such command\|Got unexpected extra argument\|Invalid value\|Missing option\|requires an argument" $out || [ $rc = 2 ]; then cls=usage
  elif [ $rc = 0 ]; then cls=worked
  else cls=refused; fi
  first=$(grep -v '^\s*$' $out | grep -v '^Warning' | head -1 | cut -c1-200)
  printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$cls" "$rc" "$c" "$first" >> results/commands-results.tsv
  printf '%-4s %-8s rc=%-3s %s\n      -> %s\n' "$id" "$cls" "$rc" "$(echo "$c" | cut -c1-110)" "$first"
done
