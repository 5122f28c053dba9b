#!/usr/bin/env bash
# Load scenarios against a release build of Yoom: the server pinned to core 0, the load tool to
# core 1, everything on loopback inside a private network namespace. Prints one report per
# scenario and a summary table; JSON reports land in target/bench/.
#
#   bash benches/compare.sh                # all scenarios, 20 s each
#   DURATION=10 bash benches/compare.sh 1x25
#
# Scenarios: 1x25, 1x100, 1x200 (one publisher, N receive-only subscribers), 5x5 (five members
# who all publish). Janus is not driven yet (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${YOOM_BENCH_IN_NS:-}" != 1 ]; then
  cargo build --release --quiet
  exec unshare -n env YOOM_BENCH_IN_NS=1 bash -c 'ip link set lo up && exec bash "$0" "$@"' "$0" "$@"
fi

DURATION="${DURATION:-20}"
PORT=3300
BIN=target/release/yoom
OUT=target/bench
mkdir -p "$OUT"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(1x25 1x100 1x200 5x5)

taskset -c 0 "$BIN" serve --bind 127.0.0.1 --port "$PORT" --log warn --max-room-members 1000 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

for s in "${scenarios[@]}"; do
  case "$s" in
    1x*) pubs=1; subs="${s#1x}" ;;
    5x5) pubs=5; subs=0 ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
  echo "== scenario $s: $pubs publisher(s), $subs subscriber(s), ${DURATION}s =="
  taskset -c 1 "$BIN" load --url "http://127.0.0.1:$PORT" --rooms 1 --publishers "$pubs" \
    --subscribers "$subs" --duration "$DURATION" --join-rate 50 --audio \
    --server-pid "$SERVER" --json >"$OUT/yoom-$s.json"
  python3 - "$OUT/yoom-$s.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r["video"]
cpu = r["server_cpu_us_per_forwarded_packet"]
print(f'streams {v["tracks"]}/{r["video_streams_expected"]}  loss {v["loss_percent"]:.3f}%  '
      f'delay p99 {v["delay_ms_p99"]} ms  first frame p95 {v["first_keyframe_ms_p95"]} ms  '
      f'CPU {cpu if cpu is None else round(cpu, 2)} µs/pkt  RSS {r["server_rss_mib"]:.1f} MiB  '
      f'tool CPU {r["tool_cpu_percent"]:.0f}%')
print(r["verdict"])
PY
  sleep 2
done
