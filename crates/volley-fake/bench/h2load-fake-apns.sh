#!/usr/bin/env bash
# Measures the fake APNs with h2load: requests/s and CPU-µs per request of the fake and of h2load.
#
#   crates/volley-fake/bench/h2load-fake-apns.sh [runs] [auth|skip-auth]
#
# Needs h2load (apt-get install nghttp2-client). Builds the example in --release, starts it on
# 127.0.0.1:22197, runs h2load 4 connections x 100 streams x 500k requests `runs` times (default 3)
# with a 211-byte APNs payload, and prints one line per run plus the medians. CPU time of the fake
# comes from /proc/<pid>/stat (utime+stime) before and after each run.
set -euo pipefail
RUNS=${1:-3}
MODE=${2:-skip-auth}
N=${N:-500000}
PORT=${PORT:-22197}
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
WORK=$(mktemp -d)
trap 'kill "$FAKE" 2>/dev/null || true; rm -rf "$WORK"' EXIT

cargo build --release -q -p volley-fake --examples --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release/examples"
python3 - "$WORK/payload.json" <<'PY'
import json, sys
def body(n):
    return json.dumps({"aps": {"alert": {"title": "Volley benchmark", "body": "x" * n}, "sound": "default"}},
                      separators=(",", ":"))
n = 0
while len(body(n)) < 211:
    n += 1
open(sys.argv[1], "w").write(body(n))
PY

ARGS=(--listen "127.0.0.1:$PORT" --ca-out "$WORK/ca.pem" --topic com.example.app)
HEADERS=(-H 'apns-topic: com.example.app' -H 'apns-push-type: alert')
if [ "$MODE" = auth ]; then
    JWT=$("$BIN/bench_credentials" "$WORK/apns-public.pem")
    ARGS+=(--jwt-public-key "$WORK/apns-public.pem")
    HEADERS+=(-H "authorization: bearer $JWT")
else
    ARGS+=(--skip-auth)
fi
"$BIN/fake_apns" "${ARGS[@]}" >"$WORK/final-stats.json" 2>"$WORK/fake.log" &
FAKE=$!
for _ in $(seq 50); do grep -q listening "$WORK/fake.log" 2>/dev/null && break; sleep 0.1; done

TOKEN=$(printf 'ab%.0s' $(seq 32))
TCK=$(getconf CLK_TCK)
: >"$WORK/results"
for run in $(seq "$RUNS"); do
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$FAKE/stat")
    T1=$(date +%s.%N)
    OUT=$( { TIMEFORMAT='%U %S'; time h2load -n "$N" -c 4 -m 100 "${HEADERS[@]}" -d "$WORK/payload.json" \
        "https://127.0.0.1:$PORT/3/device/$TOKEN"; } 2>&1 )
    read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$FAKE/stat")
    T2=$(date +%s.%N)
    RPS=$(echo "$OUT" | sed -n 's/.*finished in [0-9.]*s, \([0-9.]*\) req\/s.*/\1/p')
    OK=$(echo "$OUT" | sed -n 's/.* \([0-9]*\) succeeded.*/\1/p')
    read -r hu hs < <(echo "$OUT" | tail -1)
    python3 - "$run" "$RPS" "$OK" "$u1" "$s1" "$u2" "$s2" "$hu" "$hs" "$TCK" "$N" "$(cut -d' ' -f1 /proc/loadavg)" "$T1" "$T2" \
        >>"$WORK/results" <<'PY'
import sys
run, rps, ok, u1, s1, u2, s2, hu, hs, tck, n, load, t1, t2 = sys.argv[1:]
fake_s = ((int(u2) + int(s2)) - (int(u1) + int(s1))) / int(tck)
fake = fake_s * 1e6 / int(n)
client = (float(hu) + float(hs)) * 1e6 / int(n)
busy = 100 * fake_s / (float(t2) - float(t1))
print(f"{run} {float(rps):.0f} {fake:.2f} {client:.2f} {ok} {load} {busy:.0f}")
PY
    tail -1 "$WORK/results" | awk '{printf "run %s: %s req/s, fake %s CPU-us/req (busy %s%% of a core), h2load %s CPU-us/req, %s succeeded, loadavg %s\n", $1, $2, $3, $7, $4, $5, $6}'
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"median: {med(1):.0f} req/s, fake {med(2):.2f} CPU-us/req (busy {med(6):.0f}% of a core), "
      f"h2load {med(3):.2f} CPU-us/req")
PY
