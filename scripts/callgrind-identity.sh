#!/usr/bin/env bash
# Instructions per /v1/tool call with auth off, with a bearer token, and per /metrics scrape
# (docs/benchmarks.md, "Identity and metrics"): each daemon runs under callgrind with
# --wal-sync none and takes N echo calls over one keep-alive connection (and SCRAPES scrapes).
# Needs: valgrind, python3, a release build (cargo build --release).
#   scripts/callgrind-identity.sh [N] [SCRAPES]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
scrapes=${2:-100}
bin=$PWD/target/release/autonomy
out=$(mktemp -d)
client=$out/client.py
cat >"$client" <<'PY'
import http.client, json, sys
port, n, token, scrapes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
h = {"Content-Type": "application/json"}
if token:
    h["Authorization"] = "Bearer " + token
body = json.dumps({"kind": "tool.echo", "params": {"message": "hello"}})
for _ in range(n):
    c.request("POST", "/v1/tool", body, h)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
for _ in range(scrapes):
    c.request("GET", "/metrics")
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
# run NAME CALLS off|required SCRAPES: prints NAME and the total instructions.
run() {
  local name=$1 calls=$2 mode=$3 sc=$4 d=$out/$1 tok=""
  mkdir -p "$d"
  if [ "$mode" = required ]; then tok=$("$bin" agent add cg --agents "$d/agents.json" 2>/dev/null); fi
  valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" "$bin" runtime start --demo \
    --listen 127.0.0.1:0 --wal-dir "$d/wal" --agents "$d/agents.json" --wal-sync none \
    --auth "$mode" 2>"$d/err" &
  local vp=$! port=""
  for _ in $(seq 600); do
    port=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$d/err" 2>/dev/null | grep -o "[0-9]*$" || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  python3 "$client" "$port" "$calls" "$tok" "$sc"
  kill -TERM "$vp"
  wait "$vp" || true
  echo "$name $(grep -h '^totals:' "$d/cg.out" | awk '{print $2}')"
}
base=$(run base 0 off 0 | awk '{print $2}')
off=$(run off "$n" off 0 | awk '{print $2}')
req=$(run required "$n" required 0 | awk '{print $2}')
scr=$(run scraped "$n" off "$scrapes" | awk '{print $2}')
echo "no calls:                   $base"
echo "$n calls, auth off:         $off ($(( (off - base) / n )) per call)"
echo "$n calls, --auth required:  $req ($(( (req - base) / n )) per call)"
echo "$n calls + $scrapes scrapes:  $scr ($(( (scr - off) / scrapes )) per scrape)"
rm -rf "$out"
