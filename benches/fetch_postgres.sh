#!/usr/bin/env bash
# Benchmark: `binance-ml fetch` from a local PostgreSQL versus `psql COPY (SELECT ...) TO
# STDOUT > /dev/null` on the same query, in the same run; peak RSS of the fetch.
#
#   eval "$(bash scripts/postgres.sh)"          # server, role, database
#   bash benches/fetch_postgres.sh [DAYS] [SYMBOLS] [LEVELS] [CADENCE_S]
#
# Defaults: 30 days x 7 symbols x 10 levels at 10 s = 18,144,000 rows (the issue's figure).
# The table is generated in the server (generate_series) once per size and kept.
set -euo pipefail

DAYS=${1:-30}
NSYM=${2:-7}
LEVELS=${3:-10}
CADENCE=${4:-10}
URI=${BINANCE_ML_TEST_DATABASE_URI:?set BINANCE_ML_TEST_DATABASE_URI (eval \"\$(bash scripts/postgres.sh)\")}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TABLE="bench_obs_${DAYS}d_${NSYM}s_${LEVELS}l_${CADENCE}c"
START=1717200000 # 2024-06-01T00:00:00Z
STEPS=$((DAYS * 86400 / CADENCE))
ALL_SYMBOLS=(BTCUSDT ETHUSDT BNBUSDT ADAUSDT ETHBTC BNBBTC ADABTC SOLUSDT XRPUSDT DOGEUSDT)
SYMBOLS=("${ALL_SYMBOLS[@]:0:NSYM}")
EXPECTED=$((STEPS * NSYM * LEVELS))
WORK=$(mktemp -d /tmp/binance-ml-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

sql_list() { local IFS=,; printf "'%s'" "$1"; shift; for s in "$@"; do printf ",'%s'" "$s"; done; }
SYM_SQL=$(sql_list "${SYMBOLS[@]}")

have=$(psql "$URI" -qtAc "SELECT count(*) FROM $TABLE" 2>/dev/null || echo 0)
if [ "$have" != "$EXPECTED" ]; then
    echo "generating $TABLE: $EXPECTED rows..." >&2
    psql "$URI" -q -v ON_ERROR_STOP=1 <<SQL >&2
DROP TABLE IF EXISTS $TABLE;
CREATE UNLOGGED TABLE $TABLE (ts TIMESTAMP(3) NOT NULL, batch_id BIGINT, symbol TEXT NOT NULL,
  level INT NOT NULL, bid_price DOUBLE PRECISION, bid_qty DOUBLE PRECISION,
  ask_price DOUBLE PRECISION, ask_qty DOUBLE PRECISION);
INSERT INTO $TABLE
SELECT to_timestamp($START + s * $CADENCE) AT TIME ZONE 'UTC', ($START + s * $CADENCE) / 600, u.sym, l,
       round((100 * u.k * (1 + 0.01 * sin(s / 500.0)) - 0.01 * l)::numeric, 2)::float8,
       round((1 + ((s * 7 + l * 13) % 97) / 10.0)::numeric, 4)::float8,
       round((100 * u.k * (1 + 0.01 * sin(s / 500.0)) + 0.01 * l)::numeric, 2)::float8,
       round((1 + ((s * 11 + l * 3) % 89) / 10.0)::numeric, 4)::float8
FROM generate_series(0, $STEPS - 1) AS s,
     unnest(ARRAY[$SYM_SQL]) WITH ORDINALITY AS u(sym, k),
     generate_series(1, $LEVELS) AS l;
-- GreptimeDB's TIME INDEX is on ts; the PostgreSQL equivalent:
CREATE INDEX ON $TABLE (ts);
ANALYZE $TABLE;
SQL
fi

END_S=$((START + DAYS * 86400))
END_DATE=$(date -u -d "@$END_S" +%Y-%m-%dT%H:%M:%SZ)
# The query of `fetch` (it sends it per query chunk; here over the whole range at once).
QUERY="SELECT ts, symbol, level, bid_price, bid_qty, ask_price, ask_qty FROM $TABLE WHERE ts >= '2024-06-01T00:00:00.000Z' AND ts < '${END_DATE%Z}.000Z' AND symbol IN ($SYM_SQL) AND level >= 1 AND level <= $LEVELS AND bid_price > 0 AND ask_price > 0"

BIN="$ROOT/target/release/binance-ml"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release >&2)

correlated=$(printf '"%s",' "${SYMBOLS[@]:1}")
cat > "$WORK/bench.yaml" <<YAML
workdir: "$WORK/work"
data:
  source_type: database
  connection:
    database_uri: "$URI"
    table_name: $TABLE
    query_chunk_seconds: 86400
  asset_pairs:
    target_asset: ${SYMBOLS[0]}
    correlated_assets: [${correlated%,}]
  time_range:
    start_date: "2024-06-01T00:00:00Z"
    end_date: "$END_DATE"
    cadence_seconds: $CADENCE
  order_book:
    depth_levels: $LEVELS
YAML

# Warm the server's cache once, then alternate psql and fetch REPS times (the machine may be
# shared: alternating exposes both to the same load) and report the medians.
REPS=${REPS:-3}
psql "$URI" -qc "COPY ($QUERY) TO STDOUT" > /dev/null
: > "$WORK/psql.s"; : > "$WORK/fetch.s"; : > "$WORK/rss.kb"
for _ in $(seq 1 "$REPS"); do
    t0=$(date +%s.%N)
    psql "$URI" -qc "COPY ($QUERY) TO STDOUT" > /dev/null
    t1=$(date +%s.%N)
    /usr/bin/time -v "$BIN" fetch --force --config "$WORK/bench.yaml" --log-level warning \
        > "$WORK/fetch.out" 2> "$WORK/time.txt"
    t2=$(date +%s.%N)
    echo "$t1 - $t0" | bc >> "$WORK/psql.s"
    echo "$t2 - $t1" | bc >> "$WORK/fetch.s"
    awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt" >> "$WORK/rss.kb"
done
median() { sort -g "$1" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
tp=$(median "$WORK/psql.s"); tf=$(median "$WORK/fetch.s"); rss_kb=$(sort -g "$WORK/rss.kb" | tail -1)
cache_mb=$(du -sm "$WORK/work/data" | cut -f1)

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg); $(psql "$URI" -qtAc 'SHOW server_version') ; $(date -u +%FT%TZ); medians of $REPS" >&2
awk -v rows="$EXPECTED" -v tp="$tp" -v tf="$tf" \
    -v rss="$rss_kb" -v cache="$cache_mb" -v days="$DAYS" -v nsym="$NSYM" -v lv="$LEVELS" -v cad="$CADENCE" 'BEGIN {
    printf "| %d d x %d sym x %d lv @ %d s | %d | %.2f s (%.0f rows/s) | %.2f s (%.0f rows/s) | %.2f | %.0f MiB | %d MiB |\n",
        days, nsym, lv, cad, rows, tp, rows / tp, tf, rows / tf, (rows / tf) / (rows / tp), rss / 1024, cache
}'
