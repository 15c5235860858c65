#!/usr/bin/env bash
# Issue 16's event figures (docs/events.md, "Bench"): builds ingest, processor, fanout, gps-setup
# and the load generator (release), starts the three services against a THROWAWAY database and
# fresh topics on their own ports (the shared stack's services and data are not touched), then
# runs `loadgen events` twice:
#   1. the stored rate without fences and with $EVENTS_FENCES fences, back to back, as fast as
#      acknowledgements allow (target: at most 10 % lower with 10,000 fences);
#   2. $EVENTS_RATE fixes/s with the fences: fix-to-event latency on the WebSocket (target: p99
#      under 250 ms at 10,000 fixes/s).
# Each prints its table (with the load average) and leaves a JSON report and an SVG chart in
# $EVENTS_OUT.
#
#   benches/events.sh
#   EVENTS_FENCES=1000 EVENTS_DURATION=20 benches/events.sh
#
# Knobs (env): EVENTS_FENCES (10000), EVENTS_RATE (10000), EVENTS_DURATION (s, 30),
# EVENTS_DEVICES (1000), EVENTS_WORKERS (32), EVENTS_BATCH (100), EVENTS_RUNS ("compare latency"),
# EVENTS_ARGS (more loadgen events flags), EVENTS_OUT, EVENTS_PORT_BASE (18380),
# EVENTS_BUILD=0 (use the release binaries as they are), EVENTS_KEEP=1 (keep the database).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FENCES=${EVENTS_FENCES:-10000}
RATE=${EVENTS_RATE:-10000}
DURATION=${EVENTS_DURATION:-30}
DEVICES=${EVENTS_DEVICES:-1000}
WORKERS=${EVENTS_WORKERS:-32}
BATCH=${EVENTS_BATCH:-100}
RUNS=${EVENTS_RUNS:-"compare latency"}
PORT_BASE=${EVENTS_PORT_BASE:-18380}
OUT=${EVENTS_OUT:-$ROOT/target/events/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release

say() { printf '\033[1;34m[events]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[events]\033[0m %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

mkdir -p "$OUT/logs"
say "output: $OUT"
# The stack's PostgreSQL, Redis and broker; `dev/stack up` only when one is down.
port_open 5432 && port_open 6379 && port_open 9092 || "$ROOT/dev/stack" up
if [ "${EVENTS_BUILD:-1}" = 1 ]; then
  say "building release binaries (ingest, processor, fanout, gps-setup, loadgen)"
  cargo build --release --manifest-path "$ROOT/Cargo.toml" \
    -p ingest -p processor -p fanout -p gps-runtime -p benches --bins \
    >"$OUT/logs/build.log" 2>&1 || { tail -30 "$OUT/logs/build.log" >&2; die "build failed"; }
fi

BASE_URL=${DATABASE_URL:-postgres://gps:gps@127.0.0.1:5432/gps}
SUFFIX=$(date +%s)_$RANDOM
DB_NAME=gps_events_$SUFFIX
psql -qtAX "$BASE_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null
export DATABASE_URL="${BASE_URL%/*}/$DB_NAME"
export KAFKA_FIXES_TOPIC=events.fixes.$SUFFIX
export KAFKA_REJECTED_TOPIC=events.rejected.$SUFFIX
export KAFKA_EVENTS_TOPIC=events.events.$SUFFIX
export PROCESSOR_GROUP_ID=events-processor-$SUFFIX
# A random signing secret, shared by the services and the load generator's subscriber.
export JWT_SECRET=${JWT_SECRET:-$(head -c 48 /dev/urandom | base64 | tr -d '\n=')}
export RUST_LOG=${RUST_LOG:-warn}
export INGEST_HTTP_ADDR=127.0.0.1:$PORT_BASE
export INGEST_UDP_ADDR=127.0.0.1:$((PORT_BASE + 1))
export FANOUT_ADDR=127.0.0.1:$((PORT_BASE + 2))
export INGEST_TELTONIKA_ADDR=127.0.0.1:$((PORT_BASE + 3))
export PROCESSOR_ADDR=127.0.0.1:$((PORT_BASE + 4))
"$TARGET/gps-setup" all >"$OUT/logs/setup.log" 2>&1 || { cat "$OUT/logs/setup.log" >&2; die "setup failed"; }

PIDS=()
cleanup() {
  say "stopping the services"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${EVENTS_KEEP:-0}" != 1 ]; then
    psql -qtAX "$BASE_URL" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

for port in $PORT_BASE $((PORT_BASE + 2)) $((PORT_BASE + 4)); do
  port_open "$port" && die "port $port is taken; set EVENTS_PORT_BASE"
done
for svc in processor ingest fanout; do
  "$TARGET/$svc" >"$OUT/logs/$svc.log" 2>&1 &
  PIDS+=($!)
done
for port in $PORT_BASE $((PORT_BASE + 2)) $((PORT_BASE + 4)); do
  for _ in $(seq 300); do port_open "$port" && break; sleep 0.1; done
  port_open "$port" || die "a service did not open port $port (logs: $OUT/logs)"
done
say "services up: ingest :$PORT_BASE, fanout :$((PORT_BASE + 2)), processor :$((PORT_BASE + 4))"

# shellcheck disable=SC2206
EXTRA=(${EVENTS_ARGS:-})
COMMON=(--fences "$FENCES" --duration "$DURATION" --devices "$DEVICES" --workers "$WORKERS"
  --batch "$BATCH" --ingest-url "http://$INGEST_HTTP_ADDR" --fanout-url "ws://$FANOUT_ADDR/v1/live"
  --no-quarantine --quiet --cleanup)
for run in $RUNS; do
  case $run in
    compare) args=(--compare-no-fences) ;;
    latency) args=(--rate "$RATE") ;;
    *) die "unknown run $run (compare, latency)" ;;
  esac
  say "loadgen events ($run): ${args[*]} ${COMMON[*]} ${EXTRA[*]}"
  "$TARGET/loadgen" events "${args[@]}" "${COMMON[@]}" "${EXTRA[@]}" \
    --report "$OUT/$run.json" --chart "$OUT/$run.svg" | tee "$OUT/$run.txt" \
    || say "loadgen events $run failed (see above and $OUT/logs)"
done
say "reports and charts in $OUT"
