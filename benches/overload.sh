#!/usr/bin/env bash
# The overload chart (docs/performance.md, "Overload"): builds ingest, processor and the load
# generator (release), then runs `loadgen overload` twice with the same offered load against a
# fresh ingest and processor each time (a THROWAWAY database, fresh topics and consumer group
# per run, own ports; the shared stack's services and data are not touched): once with shedding
# on (INGEST_SHED_LAG_RECORDS=$OVERLOAD_BOUND), once with a bound no backlog reaches (the lag
# is still polled and charted, nothing is shed). CSV, SVG chart and summary of each run in
# $OVERLOAD_OUT.
#
#   benches/overload.sh
#   OVERLOAD_BOUND=5000 OVERLOAD_STEPS=20000,100000,200000 OVERLOAD_STEP_SECS=20 benches/overload.sh
#
# Knobs (env): OVERLOAD_BOUND (records, 2000), OVERLOAD_RUNS ("on off"), OVERLOAD_STEPS
# (fixes/s, comma separated), OVERLOAD_STEP_SECS (15), OVERLOAD_TAIL_SECS (60),
# OVERLOAD_ARGS (more loadgen overload flags), OVERLOAD_OUT, OVERLOAD_PORT_BASE (18280),
# OVERLOAD_BUILD=0 (use the release binaries as they are), OVERLOAD_BIN_DIR (where they are).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BOUND=${OVERLOAD_BOUND:-2000}
RUNS=${OVERLOAD_RUNS:-"on off"}
STEPS=${OVERLOAD_STEPS:-20000,50000,80000,110000,140000,170000,200000}
STEP_SECS=${OVERLOAD_STEP_SECS:-15}
TAIL_SECS=${OVERLOAD_TAIL_SECS:-60}
PORT_BASE=${OVERLOAD_PORT_BASE:-18280}
OUT=${OVERLOAD_OUT:-$ROOT/target/overload/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${OVERLOAD_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}

say() { printf '\033[1;34m[overload]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[overload]\033[0m %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

mkdir -p "$OUT/logs"
say "output: $OUT"
# The stack's PostgreSQL and broker; `dev/stack up` (which also builds gps-setup) only when down.
port_open 5432 && port_open 9092 || "$ROOT/dev/stack" up
if [ "${OVERLOAD_BUILD:-1}" = 1 ]; then
  say "building release binaries (ingest, processor, gps-setup, loadgen)"
  cargo build --release --manifest-path "$ROOT/Cargo.toml" \
    -p ingest -p processor -p gps-runtime -p benches --bins \
    >"$OUT/logs/build.log" 2>&1 || { tail -30 "$OUT/logs/build.log" >&2; die "build failed"; }
fi

BASE_URL=${DATABASE_URL:-postgres://gps:gps@127.0.0.1:5432/gps}
SUFFIX=$(date +%s)_$RANDOM
DB_NAME=gps_overload_$SUFFIX
psql -qtAX "$BASE_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null
export DATABASE_URL="${BASE_URL%/*}/$DB_NAME"
export RUST_LOG=${RUST_LOG:-warn}
export INGEST_HTTP_ADDR=127.0.0.1:$PORT_BASE
export INGEST_UDP_ADDR=127.0.0.1:$((PORT_BASE + 1))
export INGEST_TELTONIKA_ADDR=127.0.0.1:$((PORT_BASE + 3))
export PROCESSOR_ADDR=127.0.0.1:$((PORT_BASE + 4))

PIDS=()
stop_services() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_services
  psql -qtAX "$BASE_URL" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

for run in $RUNS; do
  # Fresh topics and group: each run starts with no backlog.
  export KAFKA_FIXES_TOPIC=overload.fixes.$SUFFIX.$run
  export KAFKA_REJECTED_TOPIC=overload.rejected.$SUFFIX.$run
  export PROCESSOR_GROUP_ID=overload-processor-$SUFFIX-$run
  "$TARGET/gps-setup" all >"$OUT/logs/setup-$run.log" 2>&1 || { cat "$OUT/logs/setup-$run.log" >&2; die "setup failed"; }
  # Off: a bound no backlog reaches, so that the lag is still polled and charted.
  bound=$BOUND title="shedding on (bound $BOUND records)"
  [ "$run" = off ] && bound=1000000000000 title="shedding off (lag polled, nothing shed)"
  for port in $PORT_BASE $((PORT_BASE + 4)); do
    port_open "$port" && die "port $port is taken; set OVERLOAD_PORT_BASE"
  done
  "$TARGET/processor" >"$OUT/logs/processor-$run.log" 2>&1 &
  PIDS+=($!)
  INGEST_SHED_LAG_RECORDS=$bound "$TARGET/ingest" >"$OUT/logs/ingest-$run.log" 2>&1 &
  PIDS+=($!)
  for port in $PORT_BASE $((PORT_BASE + 4)); do
    for _ in $(seq 300); do port_open "$port" && break; sleep 0.1; done
    port_open "$port" || die "a service did not open port $port (logs: $OUT/logs)"
  done
  say "shedding $run (INGEST_SHED_LAG_RECORDS=$bound): steps $STEPS fixes/s, ${STEP_SECS}s each"
  # shellcheck disable=SC2086
  "$TARGET/loadgen" overload --ingest-url "http://$INGEST_HTTP_ADDR" \
    --processor-url "http://$PROCESSOR_ADDR" --steps "$STEPS" --step-secs "$STEP_SECS" \
    --tail-secs "$TAIL_SECS" --csv "$OUT/overload-$run.csv" --chart "$OUT/overload-$run.svg" \
    --title "loadgen overload, $title" ${OVERLOAD_ARGS:-} \
    | tee "$OUT/overload-$run.txt" || say "loadgen overload ($run) failed"
  stop_services
done
say "reports and charts in $OUT"
