#!/usr/bin/env bash
# Issue 10's outage scenario as separate processes with the configuration a new user gets:
# one controller, one agent, one front, all defaults but addresses and apps. App "bad" has a
# fake APNs answering every request 503 (retry-after: 1); app "good" a healthy one. Prints
# good's 100,000-token broadcast time clean, then while bad's 100,000-token broadcast is
# queued and failing.
#
#   cargo build --release && scripts/outage-with-defaults.sh [runs] [gap seconds]
set -euo pipefail
V=${VOLLEY:-$(cd "$(dirname "$0")/.." && pwd)/target/release/volley}
RUNS=${1:-5}
GAP=${2:-1}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
cd "$DIR"
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out key.p8
python3 - "$DIR" <<'PY'
import json, socket, sys
d = sys.argv[1]
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
ports = {k: free() for k in ["good", "bad", "ctl", "front", "agent"]}
json.dump(ports, open(f"{d}/ports.json", "w"))
app = lambda name, key, endpoint, ca: f'''
[[apps]]
name = "{name}"
api_keys = ["{key}"]
[apps.apns]
endpoint = "{endpoint}"
topic = "com.example.{name}"
key_file = "{d}/key.p8"
key_id = "KEYID12345"
team_id = "TEAMID1234"
{ca}'''
open(f"{d}/volley.toml", "w").write(f'''
[front]
listen = "127.0.0.1:{ports['front']}"
controller = "127.0.0.1:{ports['ctl']}"
[controller]
listen = "127.0.0.1:{ports['ctl']}"
data_dir = "{d}/data"
[agent]
listen = "127.0.0.1:{ports['agent']}"
controller = "127.0.0.1:{ports['ctl']}"
''' + app("good", "good-key-0123456789abcdef", f"https://127.0.0.1:{ports['good']}", f'ca_file = "{d}/good-ca.pem"')
    + app("bad", "bad-key-0123456789abcdefg", f"http://127.0.0.1:{ports['bad']}", ""))
for name, tag in [("good1", "a"), ("bad", "b"), ("good2", "c"), ("warm", "d")]:
    tokens = [f"{tag * 8}{i:056x}" for i in range(100_000)]
    json.dump({"title": "t", "targets": {"apns": tokens}}, open(f"{d}/{name}.json", "w"))
PY
P() { python3 -c "import json;print(json.load(open('ports.json'))['$1'])"; }
F=http://127.0.0.1:$(P front)
GK=good-key-0123456789abcdef
BK=bad-key-0123456789abcdefg
post() { # app key body → job id
  curl -s -X POST "$F/v1/apps/$1/notifications" -H "Authorization: Bearer $2" \
    -H 'Content-Type: application/json' --data-binary @"$3" |
    python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])'
}
timed() { # app key body → seconds until done
  local t0 id
  t0=$(date +%s.%N)
  id=$(post "$@")
  until curl -s -H "Authorization: Bearer $2" "$F/v1/jobs/$id" | grep -q '"state":"done"'; do sleep 0.05; done
  python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')"
}
for run in $(seq "$RUNS"); do
  rm -rf data good-ca.pem ./*.log
  "$V" fake-apns --listen "127.0.0.1:$(P good)" --ca-out good-ca.pem --skip-auth >good.stats 2>good.log &
  "$V" fake-apns --listen "127.0.0.1:$(P bad)" --h2c --skip-auth --transient-error-rate 1.0 >bad.stats 2>bad.log &
  until [ -s good-ca.pem ]; do sleep 0.05; done
  "$V" controller --config volley.toml 2>ctl.log &
  until grep -q "controller listening" ctl.log; do sleep 0.05; done
  "$V" agent --config volley.toml 2>agent.log &
  "$V" front --config volley.toml 2>front.log &
  until curl -sf "$F/readyz" >/dev/null; do sleep 0.05; done
  until grep -q "registered with the controller" agent.log; do sleep 0.05; done
  timed good "$GK" warm.json >/dev/null
  clean=$(timed good "$GK" good1.json)
  post bad "$BK" bad.json >/dev/null
  sleep "$GAP"
  outage=$(timed good "$GK" good2.json)
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  refused=$(python3 -c 'import json;print(json.load(open("bad.stats"))["requests"])')
  python3 -c "print(f'run $run: clean {$clean:.2f} s, during the outage {$outage:.2f} s: {$outage/$clean:.2f}x; the failing provider saw $refused requests')"
done
