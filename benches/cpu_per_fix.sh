#!/usr/bin/env bash
# CPU per stored fix per service under one load-generator run (docs/performance.md, "Cheaper per
# fix"). Starts a PRIVATE tansu broker on fresh sqlite storage (so the broker's CPU is this run's
# alone), a throwaway database and topics, the release ingest and processor from BIN_DIR, then
# `loadgen run --mode http-batch` (batches of 100, 1000 devices, 32 workers); meanwhile it polls
# /proc every 0.5 s (utime + stime; processes that come and go are included) and prints, per
# service, CPU seconds divided by the fixes the loss check found stored, as one JSON line.
#
#   benches/cpu_per_fix.sh target/release 20000 30              20,000 fixes/s for 30 s
#   benches/cpu_per_fix.sh target/release max 30                as fast as acknowledgements allow
#   benches/cpu_per_fix.sh target/release 20000 30 INGEST_ENVELOPE_FORMAT=json
#   PERF=1 benches/cpu_per_fix.sh ...    also `perf record -g` 15 s of the services (perf.data)
#
# "postgres" is every backend connected to the run's database (the processor's writers and the
# load generator's latency probe); "pgaux" the shared checkpointer, background writer and WAL
# writer (other users' writes included). Needs the shared PostgreSQL and Redis (`dev/stack up`)
# and the tansu binary (TANSU_BIN, default where `dev/stack` builds it). Output: CPU_OUT (default
# target/cpu-per-fix/<time>).
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(cd "${1:?bin dir}" && pwd); RATE=${2:?rate or max}; DURATION=${3:?seconds}; shift 3
TANSU=${TANSU_BIN:-$HOME/.cache/gps-telemetry/tansu-0.6.0/bin/tansu}
ADMIN_URL=${DATABASE_URL:-postgres://gps:gps@127.0.0.1:5432/gps}
KPORT=${CPU_KAFKA_PORT:-19392}; PORT_BASE=${CPU_PORT_BASE:-18680}
SUFFIX=$(date +%s)_$RANDOM
OUT=${CPU_OUT:-$ROOT/target/cpu-per-fix/$(date -u +%Y%m%dT%H%M%SZ)}; mkdir -p "$OUT/kafka"
DB=gps_cpu_$SUFFIX
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -qtAX "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$OUT/kafka"
}
trap cleanup EXIT
port_open "$KPORT" && { echo "port $KPORT is taken; set CPU_KAFKA_PORT" >&2; exit 1; }
(cd "$OUT/kafka" && exec "$TANSU" broker --storage-engine "sqlite://tansu.db" \
  --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
  >"$OUT/tansu.log" 2>&1) &
TANSU_PID=$!; PIDS+=("$TANSU_PID")
for _ in $(seq 100); do port_open "$KPORT" && break; sleep 0.1; done
psql -qtAX "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
export DATABASE_URL="${ADMIN_URL%/*}/$DB" KAFKA_BROKERS=127.0.0.1:$KPORT
export KAFKA_FIXES_TOPIC=cpu.fixes KAFKA_REJECTED_TOPIC=cpu.rejected PROCESSOR_GROUP_ID=cpu-processor
export JWT_SECRET=${JWT_SECRET:-$(head -c 48 /dev/urandom | base64 | tr -d '\n=')} RUST_LOG=${RUST_LOG:-warn}
export INGEST_HTTP_ADDR=127.0.0.1:$PORT_BASE INGEST_UDP_ADDR=127.0.0.1:$((PORT_BASE + 1))
export INGEST_TELTONIKA_DISABLED=true PROCESSOR_ADDR=127.0.0.1:$((PORT_BASE + 4))
"$BIN/gps-setup" all >"$OUT/setup.log" 2>&1
(exec env "$@" "$BIN/processor" >"$OUT/processor.log" 2>&1) & PROC_PID=$!; PIDS+=("$PROC_PID")
(exec env "$@" "$BIN/ingest" >"$OUT/ingest.log" 2>&1) & INGEST_PID=$!; PIDS+=("$INGEST_PID")
for port in $PORT_BASE $((PORT_BASE + 4)); do
  for _ in $(seq 300); do port_open "$port" && break; sleep 0.1; done
done
sleep 2

# The sampler: CPU seconds per group while it runs (until SIGTERM); name=pid or name=/regex/
# on the command line (a backend's title is set after fork, so non-matching pids are looked at
# again; a pid first seen during the run counts from 0).
SAMPLER='
import json, os, re, signal, sys, time
tck = os.sysconf("SC_CLK_TCK"); groups = {}
for arg in sys.argv[1:]:
    name, spec = arg.split("=", 1)
    groups[name] = re.compile(spec[1:-1]) if spec.startswith("/") else int(spec)
first, last, owner = {}, {}, {}
def ticks(pid):
    rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])
def poll(initial):
    for p in filter(str.isdigit, os.listdir("/proc")):
        pid = int(p)
        try:
            if owner.get(pid) is None:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                owner[pid] = next((n for n, g in groups.items()
                                   if (g == pid if isinstance(g, int) else g.search(cmd))), None)
            if owner[pid] is not None:
                t = ticks(pid); first.setdefault(pid, t if initial else 0); last[pid] = t
        except (OSError, IndexError):
            pass
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
poll(True)
while not stop:
    time.sleep(0.5); poll(False)
poll(False)
out = {n: 0.0 for n in groups}
for pid, n in owner.items():
    if n and pid in last:
        out[n] += (last[pid] - first[pid]) / tck
print(json.dumps({k: round(v, 2) for k, v in out.items()}))
'
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
python3 -c "$SAMPLER" ingest=$INGEST_PID processor=$PROC_PID tansu=$TANSU_PID \
  postgres="/^postgres: .*: gps $DB /" pgaux="/^postgres: .*: (checkpointer|background writer|walwriter)/" \
  loadgen="/^[^ ]*loadgen run --mode http-batch .*--ingest-url http:\/\/127.0.0.1:$PORT_BASE/" \
  >"$OUT/cpu.json" &
SAMPLER_PID=$!
if [ -n "${PERF:-}" ]; then
  (sleep 8
   backends=$(pgrep -f "^postgres: .*: gps $DB " | paste -sd, -)
   perf record -F 199 -g -o "$OUT/perf.data" -p "$INGEST_PID,$PROC_PID,$TANSU_PID${backends:+,$backends}" \
     -- sleep 15 >"$OUT/perf.log" 2>&1) &
  PERF_PID=$!
fi
RATE_ARGS=(); [ "$RATE" != max ] && RATE_ARGS=(--rate "$RATE")
"$BIN/loadgen" run --mode http-batch --duration "$DURATION" --devices 1000 --workers 32 --batch 100 \
  --subscribers 0 "${RATE_ARGS[@]}" --ingest-url "http://$INGEST_HTTP_ADDR" --udp-addr "$INGEST_UDP_ADDR" \
  --report "$OUT/report.json" --chart "$OUT/report.svg" --quiet >"$OUT/loadgen.txt" 2>&1 \
  || echo "loadgen run failed (see $OUT/loadgen.txt)" >&2
kill -TERM "$SAMPLER_PID"; wait "$SAMPLER_PID" || true
[ -n "${PERF_PID:-}" ] && { wait "$PERF_PID" || true; }
LOAD1=$(cut -d' ' -f1 /proc/loadavg)
jq -c --arg services "$*" --arg rate "$RATE" --arg load "$LOAD0 -> $LOAD1" --slurpfile cpu "$OUT/cpu.json" '
  .loss.stored_once as $stored
  | {services: $services, rate: $rate, load: $load, acked_per_sec: .acked_rate,
     stored: $stored, stored_per_sec: ($stored / (.send_secs + .settle_secs)),
     ingest_to_db_p99_ms: .ingest_to_db.p99, missing: .loss.missing,
     cpu_secs: $cpu[0],
     cpu_us_per_fix: ($cpu[0] | with_entries(.value = (.value / $stored * 1e6 * 10 | round / 10)))}' \
  "$OUT/report.json"
