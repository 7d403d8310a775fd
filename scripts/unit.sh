#!/usr/bin/env bash
# The suite in two lanes at once. The real-QEMU tests (marked `kvm`) spend their minutes on guest
# boots that mostly wait, and the rest averages well under a core, so side by side the suite takes
# about as long as its longer lane. Each lane's output stays whole: the QEMU lane's is printed after.
# Arguments go to both lanes (`make unit PYTEST_ARGS="tests/cli -x"`).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
log=$(mktemp -t virtbus-kvm-lane.XXXXXX)
"$BIN/pytest" -m kvm -p no:cacheprovider "$@" >"$log" 2>&1 &
lane=$!
trap 'kill "$lane" 2>/dev/null; wait "$lane" 2>/dev/null; rm -f "$log"' EXIT
"$BIN/pytest" -m "not kvm" "$@"
rest=$?
wait "$lane"
kvm=$?
echo
echo "===== the QEMU/KVM lane (pytest -m kvm) ====="
cat "$log"
# 5 is "no test collected": a selection that holds no QEMU test (or none but QEMU tests) is fine.
[ "$kvm" -eq 5 ] && kvm=0
[ "$rest" -eq 5 ] && [ "$kvm" -eq 0 ] && rest=0
exit $(( rest != 0 || kvm != 0 ))
