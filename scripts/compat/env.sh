# source me: the CLI pointed at the stack run.sh started (in $WORK, default compat-run/ here)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
M=${WORK:-$HERE/../../compat-run}
export VIRTBUS_CREDS=$M/data/creds/admin.creds VIRTBUS_TLS_CA=$M/data/tls/ca.pem
export VIRTBUS_NATS_URL=$(grep '^bus:' "$M/up.log" | awk '{print $2}')
export PATH=$HERE/../../.venv/bin:$PATH
