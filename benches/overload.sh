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
# OVERLOAD_BUILD=0 (use the release binaries as they are), OVERLOAD_BIN_DIR (where they are);
# BENCH_KEEP=1 (keep the database and the broker's log), BENCH_PRIVATE_BROKER=0 (the stack's
# broker, not one of the run's own on an empty log at OVERLOAD_PORT_BASE + 6: benches/lib.sh).
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

BENCH=overload
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

mkdir -p "$OUT/logs"
say "output: $OUT"
# The stack's PostgreSQL; `dev/stack up` (which also builds gps-setup) only when down.
port_open 5432 || "$ROOT/dev/stack" up
bench_build "${OVERLOAD_BUILD:-1}" ingest processor gps-runtime benches

trap bench_cleanup EXIT
bench_database overload
bench_broker $((PORT_BASE + 6))
export RUST_LOG=${RUST_LOG:-warn}
export INGEST_HTTP_ADDR=127.0.0.1:$PORT_BASE
export INGEST_UDP_ADDR=127.0.0.1:$((PORT_BASE + 1))
export INGEST_TELTONIKA_ADDR=127.0.0.1:$((PORT_BASE + 3))
export PROCESSOR_ADDR=127.0.0.1:$((PORT_BASE + 4))

for run in $RUNS; do
  # Fresh topics and group: each run starts with no backlog.
  export KAFKA_FIXES_TOPIC=overload.fixes.$BENCH_SUFFIX.$run
  export KAFKA_REJECTED_TOPIC=overload.rejected.$BENCH_SUFFIX.$run
  export PROCESSOR_GROUP_ID=overload-processor-$BENCH_SUFFIX-$run
  "$TARGET/gps-setup" all >"$OUT/logs/setup-$run.log" 2>&1 || { cat "$OUT/logs/setup-$run.log" >&2; die "setup failed"; }
  # Off: a bound no backlog reaches, so that the lag is still polled and charted.
  bound=$BOUND title="shedding on (bound $BOUND records)"
  [ "$run" = off ] && bound=1000000000000 title="shedding off (lag polled, nothing shed)"
  INGEST_SHED_LAG_RECORDS=$bound LOG_SUFFIX=-$run bench_services processor ingest
  say "shedding $run (INGEST_SHED_LAG_RECORDS=$bound): steps $STEPS fixes/s, ${STEP_SECS}s each"
  # shellcheck disable=SC2086
  "$TARGET/loadgen" overload --ingest-url "http://$INGEST_HTTP_ADDR" \
    --processor-url "http://$PROCESSOR_ADDR" --steps "$STEPS" --step-secs "$STEP_SECS" \
    --tail-secs "$TAIL_SECS" --csv "$OUT/overload-$run.csv" --chart "$OUT/overload-$run.svg" \
    --title "loadgen overload, $title" ${OVERLOAD_ARGS:-} \
    | tee "$OUT/overload-$run.txt" || say "loadgen overload ($run) failed"
  bench_stop_services
done
say "reports and charts in $OUT"
