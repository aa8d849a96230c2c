#!/usr/bin/env bash
# CreateUser over HTTP, beside the lean reference design, in the same run
# (docs/benchmarks.md, "CreateUser over HTTP"):
#
#   deploy/create-bench.sh [CONNECTIONS] [SECONDS] [ROUNDS]    default 64 connections, 10 s, 2 rounds
#
# Builds ../shared/peers/minimal-create (the lean design) and the release
# binary if missing, then for each round runs wrk with
# ../shared/peers/create_users.lua against the lean design and against
# `userstream serve` on a fresh SQLite file (every feature on: auth,
# validation, sealing, metrics, request ids), one after the other. Prints
# each run's RESULT line, the CPU time per create of each process (from
# /proc, over the run) and the ratio. With DATABASE_URL=postgres://… the
# service runs on PostgreSQL instead (the lean design stays on SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."

connections=${1:-64}
seconds=${2:-10}
rounds=${3:-2}
peers=${PEERS_DIR:-../shared/peers}
bin=${USERSTREAM_BIN:-target/release/userstream}
lean=target/peers/release/minimal-create
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[ -x "$bin" ] || cargo build --release --locked -p userstream >&2
[ -x "$lean" ] || CARGO_TARGET_DIR=target/peers cargo build --release --manifest-path "$peers/minimal-create/Cargo.toml" >&2

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 200); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }
# utime + stime of a process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run NAME PID URL PATH TOKEN: one wrk run; prints its RESULT line and µs of CPU per create.
run() {
  local name=$1 pid=$2 url=$3 path=$4 token=$5 before after out
  before=$(ticks "$pid")
  out=$(LOAD_PATH=$path LOAD_TOKEN=$token LOAD_PREFIX="$name$RANDOM" LOAD_PHONE_BASE=$(( RANDOM % 90 + 10 )) \
    wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$peers/create_users.lua" "$url" | grep '^RESULT')
  after=$(ticks "$pid")
  local requests=${out#*requests=}; requests=${requests%% *}
  local cpu_us=$(( (after - before) * 1000000 / hz / (requests > 0 ? requests : 1) ))
  echo "$name $out cpu_us_per_create=$cpu_us"
}

for round in $(seq 1 "$rounds"); do
  port=$(free_port)
  "$lean" --db "$work/lean$round.db" --listen "127.0.0.1:$port" >"$work/lean.log" 2>&1 &
  lean_pid=$!; pids+=("$lean_pid")
  wait_for "http://127.0.0.1:$port/healthz"
  lean_line=$(run lean "$lean_pid" "http://127.0.0.1:$port" /customers "")
  kill "$lean_pid"; wait "$lean_pid" 2>/dev/null || true

  port=$(free_port)
  db=${DATABASE_URL:-sqlite://$work/userstream$round.db}
  key=$(DATABASE_URL=$db "$bin" apikey create --company 1 --json)
  field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" <<<"$key"; }
  "$bin" serve --database "$db" --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
  us_pid=$!; pids+=("$us_pid")
  wait_for "http://127.0.0.1:$port/readyz" || { cat "$work/serve.log" >&2; exit 1; }
  token=$(curl -sf -u "$(field api_key):$(field api_secret)" -d grant_type=client_credentials \
    "http://127.0.0.1:$port/service/panel/authentication/v1.0/company/1/oauth/token" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  us_line=$(run userstream "$us_pid" "http://127.0.0.1:$port" \
    /service/platform/user/v1.0/company/1/application/000000000000000000000001/customers "$token")
  kill "$us_pid"; wait "$us_pid" 2>/dev/null || true

  echo "round $round"
  echo "  $lean_line"
  echo "  $us_line"
  rate() { local r=${1#*rps=}; echo "${r%% *}"; }
  python3 -c "import sys; print('  ratio userstream/lean: %.2f' % (float(sys.argv[2]) / float(sys.argv[1])))" \
    "$(rate "$lean_line")" "$(rate "$us_line")"
done
