#!/usr/bin/env bash
# End-to-end benchmark: brings up the stack (dev/stack up), builds the services and the load
# generator (release), starts ingest, processor and fanout against a THROWAWAY database and
# THROWAWAY topics on their own ports (the shared stack's data and services are not touched),
# measures the raw ceilings in the same run (bulk binary COPY into positions, before and after the
# load; broker produce rate with the same record size), then runs the load generator for each mode
# and prints fixes/s with the ratio to those ceilings.
#
#   benches/e2e.sh                      every mode, 20 s each
#   E2E_MODES="http-batch" E2E_DURATION=10 benches/e2e.sh
#   E2E_RATE=10000 E2E_SUBSCRIBERS=4 benches/e2e.sh     sustained rate with live subscribers
#
# Knobs (env): E2E_MODES, E2E_DURATION (s), E2E_RATE (fixes/s, empty = as fast as acks allow),
# E2E_UDP_RATE (UDP's rate when E2E_RATE is empty, default 5000),
# E2E_DEVICES, E2E_WORKERS, E2E_BATCH, E2E_SUBSCRIBERS, E2E_COPY_ROWS, E2E_PRODUCE_RECORDS,
# E2E_DRAIN_FIXES (the processor-alone backlog, 0 = skip),
# E2E_OUT (output dir), E2E_PORT_BASE (default 18080), E2E_BUILD=0 (use the release binaries as
# they are); BENCH_KEEP=1 (keep the throwaway database
# and the broker's log), BENCH_PRIVATE_BROKER=0 (the stack's broker, not one of the run's own on
# an empty log at E2E_PORT_BASE + 6: benches/lib.sh says why).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODES=${E2E_MODES:-"http-batch http-single osmand owntracks udp"}
# UDP has no acknowledgement to pace on, so it always runs at a set rate.
UDP_RATE=${E2E_UDP_RATE:-5000}
DURATION=${E2E_DURATION:-20}
RATE=${E2E_RATE:-}
DEVICES=${E2E_DEVICES:-1000}
WORKERS=${E2E_WORKERS:-32}
BATCH=${E2E_BATCH:-100}
SUBSCRIBERS=${E2E_SUBSCRIBERS:-2}
COPY_ROWS=${E2E_COPY_ROWS:-1000000}
PRODUCE_RECORDS=${E2E_PRODUCE_RECORDS:-5000}
DRAIN_FIXES=${E2E_DRAIN_FIXES:-1000000}
PORT_BASE=${E2E_PORT_BASE:-18080}
OUT=${E2E_OUT:-$ROOT/target/e2e/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release

BENCH=e2e
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

mkdir -p "$OUT/logs"
say "output: $OUT"

# The stack's PostgreSQL and Redis; `dev/stack up` only when one is down.
port_open 5432 && port_open 6379 || "$ROOT/dev/stack" up

bench_build "${E2E_BUILD:-1}" ingest processor fanout gps-runtime benches

# --- A throwaway database, a broker of the run's own, topics ----------------------------------
trap bench_cleanup EXIT
bench_database e2e
bench_broker $((PORT_BASE + 6))
export KAFKA_FIXES_TOPIC=e2e.fixes.$BENCH_SUFFIX
export KAFKA_REJECTED_TOPIC=e2e.rejected.$BENCH_SUFFIX
export PROCESSOR_GROUP_ID=e2e-processor-$BENCH_SUFFIX
# A random signing secret per run, shared by the services and the load generator's subscribers.
export JWT_SECRET=${JWT_SECRET:-$(head -c 48 /dev/urandom | base64 | tr -d '\n=')}
export RUST_LOG=${RUST_LOG:-warn}
"$TARGET/gps-setup" all >"$OUT/logs/setup.log" 2>&1 || { cat "$OUT/logs/setup.log" >&2; die "setup failed"; }

# --- The services on their own ports -----------------------------------------------------------
export INGEST_HTTP_ADDR=127.0.0.1:$PORT_BASE
export INGEST_UDP_ADDR=127.0.0.1:$((PORT_BASE + 1))
export FANOUT_ADDR=127.0.0.1:$((PORT_BASE + 2))
export INGEST_TELTONIKA_ADDR=127.0.0.1:$((PORT_BASE + 3))
export PROCESSOR_ADDR=127.0.0.1:$((PORT_BASE + 4))
bench_services processor ingest fanout
say "services up: ingest :$PORT_BASE, fanout :$((PORT_BASE + 2)), processor :$((PORT_BASE + 4)), broker ${KAFKA_BROKERS:-of the stack}"

# --- Ceilings, measured now, on this machine ---------------------------------------------------
# The COPY ceiling swings by a third within minutes on a shared VM, so it is measured before and
# after the load runs; ratios are against the mean of the two, and both are printed.
say "ceiling: bulk COPY of $COPY_ROWS rows into positions (scratch database)"
COPY_JSON=$("$TARGET/loadgen" ceiling-copy --rows "$COPY_ROWS" --devices "$DEVICES" --json)
say "ceiling: produce $PRODUCE_RECORDS records of $BATCH fixes (scratch topic)"
PRODUCE_JSON=$("$TARGET/loadgen" ceiling-produce --records "$PRODUCE_RECORDS" --fixes-per-record "$BATCH" --devices "$DEVICES" --json)
echo "$COPY_JSON" >"$OUT/ceiling-copy.json"
echo "$PRODUCE_JSON" >"$OUT/ceiling-produce.json"
COPY_BEFORE=$(jq -r '.fixes_per_sec' <<<"$COPY_JSON")
PRODUCE_RATE=$(jq -r '.fixes_per_sec' <<<"$PRODUCE_JSON")
DRAIN_RATE=""
if [ "$DRAIN_FIXES" -gt 0 ]; then
  say "processor alone: drain a backlog of $DRAIN_FIXES fixes (scratch topic, own processor)"
  DRAIN_JSON=$("$TARGET/loadgen" drain --fixes "$DRAIN_FIXES" --devices "$DEVICES" \
    --processor-bin "$TARGET/processor" --metrics-addr "127.0.0.1:$((PORT_BASE + 5))" \
    --no-copy-ceiling --json) || die "processor drain failed"
  echo "$DRAIN_JSON" >"$OUT/drain.json"
  DRAIN_RATE=$(jq -r '.fixes_per_sec' <<<"$DRAIN_JSON")
fi

# --- The load generator, mode by mode ----------------------------------------------------------
RATE_ARGS=()
[ -n "$RATE" ] && RATE_ARGS=(--rate "$RATE")
for mode in $MODES; do
  say "loadgen $mode for ${DURATION}s"
  MODE_RATE=("${RATE_ARGS[@]}")
  [ "$mode" = udp ] && [ -z "$RATE" ] && MODE_RATE=(--rate "$UDP_RATE")
  "$TARGET/loadgen" run --mode "$mode" --duration "$DURATION" --devices "$DEVICES" \
    --workers "$WORKERS" --batch "$BATCH" --subscribers "$SUBSCRIBERS" "${MODE_RATE[@]}" \
    --ingest-url "http://$INGEST_HTTP_ADDR" --udp-addr "$INGEST_UDP_ADDR" \
    --fanout-url "ws://$FANOUT_ADDR/v1/live" \
    --report "$OUT/$mode.json" --chart "$OUT/$mode.svg" --quiet \
    | tee "$OUT/$mode.txt" || say "loadgen $mode failed (see above)"
done

say "ceiling: bulk COPY of $COPY_ROWS rows into positions, again after the load"
COPY_AFTER_JSON=$("$TARGET/loadgen" ceiling-copy --rows "$COPY_ROWS" --devices "$DEVICES" --json)
echo "$COPY_AFTER_JSON" >"$OUT/ceiling-copy-after.json"
COPY_AFTER=$(jq -r '.fixes_per_sec' <<<"$COPY_AFTER_JSON")
COPY_RATE=$(jq -n --argjson a "$COPY_BEFORE" --argjson b "$COPY_AFTER" '($a + $b) / 2')

# --- Summary ------------------------------------------------------------------------------------
echo
printf 'load: %s; machine: %s cores, load average %s\n' "$(uname -n)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %12.0f fixes/s  (before %.0f, after %.0f)\n' "ceiling: COPY into positions" \
  "$COPY_RATE" "$COPY_BEFORE" "$COPY_AFTER"
printf '%-28s %12.0f fixes/s\n' "ceiling: kafka produce" "$PRODUCE_RATE"
if [ -n "$DRAIN_RATE" ]; then
  printf '%-28s %12.0f fixes/s  (%.0f%% of COPY)\n' "processor alone (drain)" "$DRAIN_RATE" \
    "$(jq -n --argjson d "$DRAIN_RATE" --argjson c "$COPY_RATE" '$d / $c * 100')"
fi
# stored/s: rows stored once over sending plus settling time (a lower bound: settling ends with
# a quiet half second); it equals acked/s when the processor keeps up.
printf '%-12s %10s %10s %8s %10s %10s %8s\n' mode "acked/s" "stored/s" "/COPY" "db p99 ms" "ws p99 ms" loss
for mode in $MODES; do
  f="$OUT/$mode.json"
  [ -f "$f" ] || { printf '%-12s %10s\n' "$mode" "failed"; continue; }
  jq -r --arg mode "$mode" --argjson copy "$COPY_RATE" '
    (.loss.stored_once / (.send_secs + .settle_secs)) as $stored
    | [$mode, .acked_rate, $stored, ($stored / $copy * 100),
     .ingest_to_db.p99, .ingest_to_ws.p99,
     (if (.loss.acked > 0 and .loss.missing == 0 and .loss.unexpected == 0 and .loss.bad_stored == 0
          and .loss.bad_quarantined == .loss.bad_sent) then "PASS" else "FAIL" end)]
    | @tsv' "$f" |
    awk -F'\t' '{ printf "%-12s %10.0f %10.0f %7.1f%% %10.1f %10.1f %8s\n", $1, $2, $3, $4, $5, $6, $7 }'
done
say "reports and charts in $OUT"
