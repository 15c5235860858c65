#!/usr/bin/env bash
# Issue 16's event figures (docs/events.md, "Bench"): builds ingest, processor, fanout, gps-setup
# and the load generator (release), starts the three services against a THROWAWAY database and
# fresh topics on their own ports (the shared stack's services and data are not touched), then
# runs `loadgen events` twice:
#   1. $EVENTS_RATE fixes/s with $EVENTS_FENCES fences: fix-to-event latency on the WebSocket
#      (target: p99 under 250 ms at 10,000 fixes/s); first, on the empty database;
#   2. the stored rate without fences and with them, as fast as the pipeline stores (target: at
#      most 10 % lower with 10,000 fences): rounds of the two phases, every other one reversed
#      (without, with, with, without), with ingest shedding at a lag of $EVENTS_SHED_LAG_RECORDS
#      records, so that what is acknowledged is what the processor keeps up with and the stored
#      rate is the pipeline's, not a backlog's. Nothing is deleted between phases (the database
#      is dropped at the end), so no vacuum of one phase's rows runs in the next.
# Each prints its table (with the load average) and leaves a JSON report and an SVG chart in
# $EVENTS_OUT.
#
#   benches/events.sh
#   EVENTS_FENCES=1000 EVENTS_DURATION=20 benches/events.sh
#
# Knobs (env): EVENTS_FENCES (10000), EVENTS_RATE (10000), EVENTS_DURATION (s, 30),
# EVENTS_DEVICES (1000), EVENTS_WORKERS (32), EVENTS_BATCH (100), EVENTS_RUNS ("latency compare"),
# EVENTS_ROUNDS (3), EVENTS_SHED_LAG_RECORDS (2000; 0 = as fast as acknowledgements allow),
# EVENTS_ARGS (more loadgen events flags), EVENTS_OUT, EVENTS_PORT_BASE (18380),
# EVENTS_BUILD=0 (use the release binaries as they are); BENCH_KEEP=1 (keep the database and
# the broker's log), BENCH_PRIVATE_BROKER=0 (the stack's broker, not one of the run's own on an
# empty log at EVENTS_PORT_BASE + 5: benches/lib.sh says why).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FENCES=${EVENTS_FENCES:-10000}
RATE=${EVENTS_RATE:-10000}
DURATION=${EVENTS_DURATION:-30}
DEVICES=${EVENTS_DEVICES:-1000}
WORKERS=${EVENTS_WORKERS:-32}
BATCH=${EVENTS_BATCH:-100}
RUNS=${EVENTS_RUNS:-"latency compare"}
ROUNDS=${EVENTS_ROUNDS:-3}
export INGEST_SHED_LAG_RECORDS=${EVENTS_SHED_LAG_RECORDS:-2000}
PORT_BASE=${EVENTS_PORT_BASE:-18380}
OUT=${EVENTS_OUT:-$ROOT/target/events/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
BENCH=events
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

mkdir -p "$OUT/logs"
say "output: $OUT"
# The stack's PostgreSQL and Redis; `dev/stack up` only when one is down.
port_open 5432 && port_open 6379 || "$ROOT/dev/stack" up
bench_build "${EVENTS_BUILD:-1}" ingest processor fanout gps-runtime benches

trap bench_cleanup EXIT
bench_database events
export KAFKA_FIXES_TOPIC=events.fixes.$BENCH_SUFFIX
export KAFKA_REJECTED_TOPIC=events.rejected.$BENCH_SUFFIX
export KAFKA_EVENTS_TOPIC=events.events.$BENCH_SUFFIX
export PROCESSOR_GROUP_ID=events-processor-$BENCH_SUFFIX
# A random signing secret, shared by the services and the load generator's subscriber.
export JWT_SECRET=${JWT_SECRET:-$(head -c 48 /dev/urandom | base64 | tr -d '\n=')}
export RUST_LOG=${RUST_LOG:-warn}
export INGEST_HTTP_ADDR=127.0.0.1:$PORT_BASE
export INGEST_UDP_ADDR=127.0.0.1:$((PORT_BASE + 1))
export FANOUT_ADDR=127.0.0.1:$((PORT_BASE + 2))
export INGEST_TELTONIKA_ADDR=127.0.0.1:$((PORT_BASE + 3))
export PROCESSOR_ADDR=127.0.0.1:$((PORT_BASE + 4))
bench_broker $((PORT_BASE + 5))
"$TARGET/gps-setup" all >"$OUT/logs/setup.log" 2>&1 || { cat "$OUT/logs/setup.log" >&2; die "setup failed"; }
bench_services processor ingest fanout
say "services up: ingest :$PORT_BASE, fanout :$((PORT_BASE + 2)), processor :$((PORT_BASE + 4)), broker ${KAFKA_BROKERS:-of the stack}; shedding at a lag of $INGEST_SHED_LAG_RECORDS records"

# shellcheck disable=SC2206
EXTRA=(${EVENTS_ARGS:-})
COMMON=(--fences "$FENCES" --duration "$DURATION" --devices "$DEVICES" --workers "$WORKERS"
  --batch "$BATCH" --ingest-url "http://$INGEST_HTTP_ADDR" --fanout-url "ws://$FANOUT_ADDR/v1/live"
  --no-quarantine --quiet)
for run in $RUNS; do
  case $run in
    compare) args=(--compare-no-fences --compare-rounds "$ROUNDS") ;;
    latency) args=(--rate "$RATE") ;;
    *) die "unknown run $run (compare, latency)" ;;
  esac
  say "loadgen events ($run): ${args[*]} ${COMMON[*]} ${EXTRA[*]}"
  "$TARGET/loadgen" events "${args[@]}" "${COMMON[@]}" "${EXTRA[@]}" \
    --report "$OUT/$run.json" --chart "$OUT/$run.svg" | tee "$OUT/$run.txt" \
    || say "loadgen events $run failed (see above and $OUT/logs)"
done
say "reports and charts in $OUT"
