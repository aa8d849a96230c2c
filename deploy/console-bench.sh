#!/usr/bin/env bash
# How long the admin console's search takes to show results at USERS users
# (docs/benchmarks.md, "Admin console"):
#
#   deploy/console-bench.sh [USERS] [ROUNDS]      default 1000000 users, 30 searches of each kind
#
# Loads USERS users (user{i}, user{i}@bench.example, 9{i:09}) and attribute
# values on a tenth of them (score0..score9) into a new SQLite file with
# `userstream bench --import`, serves that file on a free loopback port,
# and times searches in Debian's Chromium (tests/console/measure.mjs): from
# pressing Enter to the result row on screen.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${USERSTREAM_BIN:-target/release/userstream}
[ -x "$bin" ] || cargo build --release --locked -p userstream >&2
users=${1:-1000000}
rounds=${2:-30}
[ -d tests/console/node_modules/playwright-core ] || npm ci --prefix tests/console >&2
# CONSOLE_BENCH_DIR keeps the loaded database there (and reuses it).
work=${CONSOLE_BENCH_DIR:-$(mktemp -d)}
mkdir -p "$work"
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; [ -n "${CONSOLE_BENCH_DIR:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
db="sqlite://$work/console.db"

if [ ! -f "$work/console.db" ]; then
  attribute_users=$(( users / 10 > 0 ? users / 10 : 1 ))
  "$bin" bench --database "$db" --import "$users" --import-attributes "$(( attribute_users * 10 ))" \
    --attribute-users "$attribute_users" >&2
fi
key=$(DATABASE_URL=$db "$bin" apikey create --company 1 --json)
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" <<<"$key"; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" serve --database "$db" --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.5
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/serve.log" >&2; exit 1; }
(cd tests/console && node measure.mjs "http://127.0.0.1:$port" 1 000000000000000000000001 \
  "$(field api_key)" "$(field api_secret)" "$users" "$rounds")
