#!/usr/bin/env bash
# The long fault drill (docs/operations.md): builds the services and the load generator (release),
# then runs `loadgen drill` twice: the whole fault sequence with one instance of each service,
# then with two of each, adding the failovers (one instance of ingest, processor and fanout killed
# for good). Each drill starts its own broker, Redis, throwaway database and topics on free
# ports; the shared stack's services and data are not touched, except that the PostgreSQL server
# hosts the throwaway database and, with DRILL_POSTGRES_RESTART set, is restarted once per drill.
#
#   benches/drills.sh
#   DRILL_RATE=10000 DRILL_PHASE=30 benches/drills.sh
#   DRILL_POSTGRES_RESTART="pg_ctlcluster 15 main restart" benches/drills.sh
#   DRILL_INSTANCES="2" DRILL_FAULTS=kill-one-processor benches/drills.sh
#
# Knobs (env): DRILL_INSTANCES ("1 2"), DRILL_FAULTS (comma separated; default: the long
# sequence), DRILL_RATE (fixes/s, 2000), DRILL_DEVICES (200), DRILL_PHASE (s, 30), DRILL_FAULT_AT
# (s, 8), DRILL_DOWN (s, 5), DRILL_POSTGRES_RESTART (command; the restart-postgres row is skipped
# without one), DRILL_OUT (reports and logs), DRILL_PROFILE (release|debug).
# Exits non-zero when any drill has a row with a missing or doubled fix or a recovery over 30 s.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=${DRILL_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
OUT=${DRILL_OUT:-$ROOT/target/drills/$(date -u +%Y%m%dT%H%M%SZ)}
say() { printf '\033[1;34m[drill]\033[0m %s\n' "$*" >&2; }

mkdir -p "$OUT"
"$ROOT/dev/stack" up
say "building the services and the load generator ($PROFILE)"
PROFILE_FLAG=()
[ "$PROFILE" = release ] && PROFILE_FLAG=(--release)
cargo build "${PROFILE_FLAG[@]}" --manifest-path "$ROOT/Cargo.toml" \
  -p ingest -p processor -p fanout -p query-api -p benches --bins >"$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log" >&2; exit 1; }

ARGS=(--bin-dir "$TARGET" --rate "${DRILL_RATE:-2000}" --devices "${DRILL_DEVICES:-200}"
  --phase-secs "${DRILL_PHASE:-30}" --fault-at-secs "${DRILL_FAULT_AT:-8}"
  --down-secs "${DRILL_DOWN:-5}")
[ -n "${DRILL_FAULTS:-}" ] && ARGS+=(--faults "$DRILL_FAULTS")
[ -n "${DRILL_POSTGRES_RESTART:-}" ] && ARGS+=(--postgres-restart-cmd "$DRILL_POSTGRES_RESTART")

status=0
for n in ${DRILL_INSTANCES:-1 2}; do
  say "drill with $n instance(s) of each service (logs: $OUT/x$n)"
  RUST_LOG=${RUST_LOG:-benches=info,warn} "$TARGET/loadgen" drill "${ARGS[@]}" --instances "$n" \
    --work-dir "$OUT/x$n" --report "$OUT/drill-x$n.json" | tee "$OUT/drill-x$n.txt" || status=1
done
say "reports in $OUT"
exit $status
