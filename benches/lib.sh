# Shared by the bench scripts (sourced, not run): messages, a throwaway database, a broker of the
# run's own on an empty log, the release services on their own ports, and the cleanup of all
# that. Each script sets BENCH (its name in messages) and OUT before sourcing.
#
#   BENCH=events; OUT=...; . "$ROOT/benches/lib.sh"
#   bench_build 1 ingest processor fanout gps-runtime benches
#   bench_database events                 # CREATE DATABASE gps_events_<suffix>; DATABASE_URL
#   bench_broker $((PORT_BASE + 5))       # tansu on an empty sqlite log in $OUT/kafka
#   bench_services processor ingest fanout
#   trap bench_cleanup EXIT

say() { printf '\033[1;34m[%s]\033[0m %s\n' "$BENCH" "$*" >&2; }
die() { printf '\033[1;31m[%s]\033[0m %s\n' "$BENCH" "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Build the release binaries of the packages named (their --bins: a --bin filter would apply to
# every -p and skip the services), unless $1 is 0 (the script's *_BUILD=0: use them as they are).
bench_build() {
  local build=$1; shift
  [ "$build" = 1 ] || return 0
  local args=() pkg
  for pkg in "$@"; do args+=(-p "$pkg"); done
  say "building release binaries ($*)"
  cargo build --release --manifest-path "$ROOT/Cargo.toml" "${args[@]}" --bins \
    >"$OUT/logs/build.log" 2>&1 || { tail -30 "$OUT/logs/build.log" >&2; die "build failed"; }
}

BENCH_PIDS=()
BENCH_DB=""
BENCH_BASE_URL=${DATABASE_URL:-postgres://gps:gps@127.0.0.1:5432/gps}
BENCH_SUFFIX=$(date +%s)_$RANDOM

# A throwaway database named gps_<prefix>_<suffix>, migrated by `gps-setup` later; exports
# DATABASE_URL. Dropped by bench_cleanup unless BENCH_KEEP=1.
bench_database() {
  BENCH_DB=gps_$1_$BENCH_SUFFIX
  psql -qtAX "$BENCH_BASE_URL" -c "CREATE DATABASE $BENCH_DB" >/dev/null
  export DATABASE_URL="${BENCH_BASE_URL%/*}/$BENCH_DB"
}

# A tansu of the run's own on port $1 and an empty sqlite log in $OUT/kafka (removed by
# bench_cleanup unless BENCH_KEEP=1); exports KAFKA_BROKERS. Why not the stack's broker: tansu's
# cost per record grows with what its sqlite file already holds (the same events run stored ~30 %
# fewer fixes/s against the stack's broker once earlier runs had left 1.5 GB in it), so runs on
# it are not comparable with each other. BENCH_PRIVATE_BROKER=0 keeps the stack's.
bench_broker() {
  [ "${BENCH_PRIVATE_BROKER:-1}" = 1 ] || return 0
  local port=$1
  local bin=${TANSU_BIN:-${GPS_CACHE_DIR:-$HOME/.cache/gps-telemetry}/tansu-0.6.0/bin/tansu}
  [ -x "$bin" ] || die "tansu not found at $bin (dev/stack up builds it)"
  port_open "$port" && die "port $port is taken; set the script's PORT_BASE"
  mkdir -p "$OUT/kafka"
  (cd "$OUT/kafka" && exec "$bin" broker --storage-engine "sqlite://tansu.db" \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" >"$OUT/logs/broker.log" 2>&1) &
  BENCH_BROKER_PID=$!
  for _ in $(seq 300); do port_open "$port" && break; sleep 0.1; done
  port_open "$port" || die "the broker did not open port $port (log: $OUT/logs/broker.log)"
  export KAFKA_BROKERS=127.0.0.1:$port
}

# Start the release services named (processor, ingest, fanout) from $TARGET with the
# environment as exported, logs in $OUT/logs/<name><LOG_SUFFIX>.log, and wait for their HTTP
# ports (INGEST_HTTP_ADDR, PROCESSOR_ADDR, FANOUT_ADDR).
bench_services() {
  local svc port ports=()
  for svc in "$@"; do
    case $svc in
      ingest) port=${INGEST_HTTP_ADDR##*:} ;;
      processor) port=${PROCESSOR_ADDR##*:} ;;
      fanout) port=${FANOUT_ADDR##*:} ;;
      *) die "unknown service $svc" ;;
    esac
    port_open "$port" && die "port $port ($svc) is taken; set the script's PORT_BASE"
    ports+=("$port")
  done
  for svc in "$@"; do
    "$TARGET/$svc" >"$OUT/logs/$svc${LOG_SUFFIX:-}.log" 2>&1 &
    BENCH_PIDS+=($!)
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 300); do port_open "$port" && break; sleep 0.1; done
    port_open "$port" || die "a service did not open port $port (logs: $OUT/logs)"
  done
}

# SIGTERM the services started so far and wait for them (they drain and commit).
bench_stop_services() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  BENCH_PIDS=()
}

# Stop everything, then drop the database and the broker's log (BENCH_KEEP=1 keeps both).
bench_cleanup() {
  say "stopping the services"
  bench_stop_services
  if [ -n "${BENCH_BROKER_PID:-}" ]; then
    kill -TERM "$BENCH_BROKER_PID" 2>/dev/null || true
    wait "$BENCH_BROKER_PID" 2>/dev/null || true
  fi
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$OUT/kafka"
    # A connection still closing can fail the first DROP: try a few times, never abort here
    # (under `set -e` a failing command would end the cleanup half done).
    local tries
    for tries in 1 2 3 4 5; do
      [ -z "$BENCH_DB" ] && break
      if psql -qtAX "$BENCH_BASE_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" \
        >"$OUT/logs/drop-database.log" 2>&1; then
        BENCH_DB=""
        break
      fi
      sleep 1
    done
    [ -z "$BENCH_DB" ] || say "could not drop $BENCH_DB ($OUT/logs/drop-database.log): drop it by hand"
  fi
  return 0
}
