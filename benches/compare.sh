#!/usr/bin/env bash
# Yoom and Janus side by side under the same load: each server in turn pinned to core 0, the load
# tool (`yoom load`) on core 1, everything inside a private network namespace (loopback plus a
# veth pair for Janus, which ignores loopback interfaces). Prints a report per run and a
# side-by-side table; JSON reports land in target/bench/.
#
#   bash benches/compare.sh                       # all scenarios, both servers, 20 s each
#   DURATION=10 TARGETS=yoom bash benches/compare.sh 1x25
#   ROUNDS=3 bash benches/compare.sh 5x5          # three rounds; the table shows the middle run
#
# Each scenario runs on both servers back to back, so the two see the same machine; with ROUNDS=n
# the whole set runs n times over. On a shared VM one run's kernel time can differ from the next
# one's by 2x in the small rooms, so one round is a sample, not a figure.
#
# YOOM_BIN=path runs that binary instead of building the release one, OUT=dir puts the reports
# elsewhere (tests/compare_script.rs does both for its seconds-long smoke run).
#
# Scenarios: 1x25, 1x100, 1x200 (one publisher, N receive-only subscribers), 5x5 (five members
# who all publish); a prefix Rr runs R such rooms at once (8r5x5: eight rooms of five). Needs:
# namespaces (root, or unprivileged user namespaces), taskset, curl, python3, Debian's janus
# package (installed here, as root, when missing and TARGETS has janus).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS="${TARGETS:-yoom janus}"

if [ "${YOOM_BENCH_IN_NS:-}" != 1 ]; then
  root=$([ "$(id -u)" = 0 ] && echo yes || true)
  if [[ " $TARGETS " == *" janus "* ]] && ! command -v janus >/dev/null; then
    [ -n "$root" ] || { echo "janus is not installed: apt-get install janus (as root)" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends janus >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends janus >/dev/null; }
  fi
  [ -n "${YOOM_BIN:-}" ] || cargo build --release --quiet
  # Without root, an unprivileged user namespace owns the network namespace (and the veth).
  ns=-n; [ -n "$root" ] || ns=-rn
  exec unshare "$ns" env YOOM_BENCH_IN_NS=1 TARGETS="$TARGETS" bash -c 'exec bash "$0" "$@"' "$0" "$@"
fi

DURATION="${DURATION:-20}"
ROUNDS="${ROUNDS:-1}"
BIN="${YOOM_BIN:-$PWD/target/release/yoom}"
OUT="${OUT:-$PWD/target/bench}"
mkdir -p "$OUT"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(1x25 1x100 1x200 5x5)

ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 127.0.1.1/32 dev v0
ip link set v0 up
ip link set v1 up

SERVER=
stop_server() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true; SERVER=; }
trap stop_server EXIT

start_yoom() {
  # Every simulated member comes from one address: lift the per-address connection cap.
  taskset -c 0 "$BIN" serve --bind 127.0.0.1 --port 3300 --log warn --max-room-members 1000 \
    --max-connections-per-ip 100000 \
    >"$OUT/yoom-server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:3300/healthz >/dev/null 2>&1 && return; sleep 0.1; done
  echo "yoom did not start" >&2; exit 1
}

start_janus() {
  local conf="$OUT/janus-conf"
  rm -rf "$conf"; mkdir -p "$conf/plugins" "$conf/transports" "$conf/none"
  sed "s|@CONF@|$conf|g" benches/janus/janus.jcfg.in >"$conf/janus.jcfg"
  cp benches/janus/janus.plugin.videoroom.jcfg benches/janus/janus.transport.http.jcfg "$conf/"
  ln -s /usr/lib/x86_64-linux-gnu/janus/plugins/libjanus_videoroom.so "$conf/plugins/"
  ln -s /usr/lib/x86_64-linux-gnu/janus/transports/libjanus_http.so "$conf/transports/"
  taskset -c 0 janus -C "$conf/janus.jcfg" -F "$conf" >"$OUT/janus-server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do
    curl -sf -X POST -d '{"janus":"info","transaction":"x"}' http://127.0.1.1:8088/janus >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "janus did not start" >&2; exit 1
}

case "$ROUNDS" in ''|*[!0-9]*|0) echo "ROUNDS must be a positive number" >&2; exit 2 ;; esac
for round in $(seq "$ROUNDS"); do
  for s in "${scenarios[@]}"; do
    rooms=1 room="$s"
    if [[ "$s" =~ ^([1-9][0-9]*)r(.+)$ ]]; then rooms="${BASH_REMATCH[1]}" room="${BASH_REMATCH[2]}"; fi
    case "$room" in
      1x*) pubs=1; subs="${room#1x}" ;;
      5x5) pubs=5; subs=0 ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
    for target in $TARGETS; do
      # A fresh server per run, so memory and CPU belong to that scenario alone.
      if [ "$target" = yoom ]; then
        start_yoom
        args=(--url http://127.0.0.1:3300 --media-ip 127.0.0.1)
      else
        start_janus
        args=(--target janus --janus-url http://127.0.1.1:8088/janus --media-ip 127.0.1.1)
      fi
      report="$OUT/$target-$s.json" of=
      if [ "$ROUNDS" != 1 ]; then report="$OUT/$target-$s.round$round.json" of=", round $round of $ROUNDS"; fi
      echo "== $target $s: $rooms room(s) of $pubs publisher(s), $subs subscriber(s), ${DURATION}s$of =="
      taskset -c 1 "$BIN" load "${args[@]}" --rooms "$rooms" --publishers "$pubs" --subscribers "$subs" \
        --duration "$DURATION" --join-rate 50 --audio --server-pid "$SERVER" --json >"$report" || true
      stop_server
      sleep 1
    done
  done
done

python3 - "$OUT" "$TARGETS" "$ROUNDS" "${scenarios[@]}" <<'PY'
import functools, json, os, shutil, sys
out, targets, rounds, scenarios = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), sys.argv[4:]
STEADY = "server_cpu_us_per_delivered_packet_steady"
def read(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
@functools.cache
def runs(t, s):
    """Every round's report, in round order (None where a run left none)."""
    if rounds == 1:
        return [read(os.path.join(out, f"{t}-{s}.json"))]
    return [read(os.path.join(out, f"{t}-{s}.round{k}.json")) for k in range(1, rounds + 1)]
def middle(t, s):
    """The run with the middle steady figure (the lower middle for an even count); with several
    rounds its report is also copied to <server>-<scenario>.json."""
    reports = runs(t, s)
    measured = [(r[STEADY], k) for k, r in enumerate(reports, 1) if r and r.get(STEADY) is not None]
    if not measured:
        return next((r for r in reports if r), None)
    k = sorted(measured)[(len(measured) - 1) // 2][1]
    if rounds > 1:
        shutil.copyfile(os.path.join(out, f"{t}-{s}.round{k}.json"), os.path.join(out, f"{t}-{s}.json"))
    return reports[k - 1]
fmt = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
print()
print(f"{'scenario':<8} {'server':<6} {'streams':>9} {'loss %':>7} {'p99 ms':>7} {'1st key p95':>11} {'core %':>7} {'µs/pkt':>7} {'steady':>7} {'user':>6} {'RSS MiB':>8} {'tool %':>7}")
for s in scenarios:
    row = {}
    for t in targets:
        r = middle(t, s)
        if r is None:
            print(f"{s:<8} {t:<6} (no result)")
            continue
        v = r["video"]
        core = 100 * r["server_cpu_s"] / r["duration_s"] if r["server_cpu_s"] is not None else None
        if r["server_cpu_us_per_delivered_packet"]:
            row[t] = (r["server_cpu_us_per_delivered_packet"], r.get("server_cpu_us_per_delivered_packet_steady"))
        print(f"{s:<8} {t:<6} {v['tracks']:>4}/{r['video_streams_expected']:<4} {fmt(v['loss_percent'],3):>7} "
              f"{fmt(v['delay_ms_p99'],1):>7} {fmt(v['first_keyframe_ms_p95'],0):>11} {fmt(core,0):>7} "
              f"{fmt(r['server_cpu_us_per_delivered_packet']):>7} {fmt(r.get('server_cpu_us_per_delivered_packet_steady')):>7} "
              f"{fmt(r.get('server_user_cpu_us_per_delivered_packet_steady')):>6} "
              f"{fmt(r['server_rss_mib'],1):>8} {fmt(r['tool_cpu_percent'],0):>7}")
        if r["members_failed"]:
            print(f"{'':<8} {t}: {r['members_failed']} member(s) failed (server log: {out}/{t}-server.log)")
        for e in r.get("member_errors", []):
            print(f"{'':<8}   {e['members']} × {e['error']}")
    if rounds > 1:
        for t in targets:
            got = [r for r in runs(t, s) if r and r.get(STEADY) is not None]
            steady = " / ".join(fmt(r[STEADY], 1) for r in got)
            user = " / ".join(fmt(r.get("server_user_cpu_us_per_delivered_packet_steady"), 1) for r in got)
            print(f"{'':<8} {t}: steady µs/pkt by round {steady} (user {user})")
    if row.get("yoom") and row.get("janus"):
        (jw, js), (yw, ys) = row["janus"], row["yoom"]
        steady = f", {js/ys:.2f}× in steady state" if js and ys else ""
        print(f"{'':<8} ratio: Janus needs {jw/yw:.2f}× Yoom's CPU per delivered packet over the run{steady}")
        if rounds > 1:
            pairs = zip(runs("janus", s), runs("yoom", s))
            by_round = [j[STEADY] / y[STEADY] for j, y in pairs
                        if j and y and j.get(STEADY) and y.get(STEADY)]
            print(f"{'':<8} ratio in steady state by round (each round's two runs back to back): "
                  + " / ".join(f"{x:.2f}×" for x in by_round))
if rounds > 1:
    print(f"\nEach row is the middle one of {rounds} rounds by steady µs/pkt (its report: <server>-<scenario>.json).")
print("\nµs/pkt = server CPU time over the run (joins included) / packets (video+audio) the subscribers received.")
print("steady = the same from 3 s after the last member connected to the end (no joining).")
print("user = the part of steady spent in the server's own code; the rest is the kernel's, which on")
print("       loopback also runs the receivers' network stack and wakes them (their machines would).")
PY
