#!/usr/bin/env bash
# pretix on PostgreSQL under the peer's load (after setup.sh): one-position
# orders from 50 clients until a quota of 5,000 is sold (cap 300 s), then
# the item list and a quota's availability read by 50 clients for 20 s,
# then the oversell check. Results in $PEER_ROOT/results-<time>/.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PEER="$(cd "$HERE/../../../shared/peer-pretix" && pwd)"
export PEER_ROOT="${PEER_ROOT:-/tmp/peer-pretix-pg}"
ROOT="$PEER_ROOT"; stamp=$(date +%H%M%S); R="$ROOT/results-$stamp"; mkdir -p "$R"
TOKEN="$(cat "$ROOT/token")"; PY="$ROOT/venv/bin/python"
export PRETIX_CONFIG_FILE="$ROOT/pretix.cfg" PYTHONPATH="$PEER" DJANGO_SETTINGS_MODULE=peer_settings
trap '"$PEER/server.sh" stop || true' EXIT
WORKERS=4 "$PEER/server.sh" start
o="o$stamp"; g="g$stamp"
"$PY" "$PEER/setup_events.py" --token "$TOKEN" --events "$o" "$g" --quota 5000 --out "$R/events.json"
item() { "$PY" -c "import json;print(json.load(open('$R/events.json'))['$1']['item'])"; }
quota() { "$PY" -c "import json;print(json.load(open('$R/events.json'))['$1']['quota'])"; }
timeout 330 "$PY" "$PEER/load.py" orders --token "$TOKEN" --event "$o" --item "$(item "$o")" -c 50 \
    --max-requests 30000 --max-seconds 300 --json-out "$R/orders_c50.json" > "$R/orders_c50.out"
cat "$R/orders_c50.out"
for p in items/ "quotas/$(quota "$g")/availability/"; do
  timeout 40 "$ROOT/cargo/bin/oha" -z 20s -c 50 --no-tui --output-format json \
    -H "Authorization: Token $TOKEN" \
    "http://127.0.0.1:8345/api/v1/organizers/peer/events/$g/$p" > "$R/get_c50_$(echo "$p" | tr / _).json"
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); s=d['summary']; l=d['latencyPercentiles']; print(sys.argv[2], round(s['requestsPerSec'],1), 'req/s, p99', round(l['p99'],3), 's')" \
    "$R/get_c50_$(echo "$p" | tr / _).json" "$p"
done
"$PEER/server.sh" stop
"$PY" -m pretix shell < "$PEER/check_db.py" | grep CHECK | tee "$R/check_db.txt"
