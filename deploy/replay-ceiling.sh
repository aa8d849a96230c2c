#!/usr/bin/env bash
# How fast can the database itself write what a `users_v1` replay writes?
#
#   deploy/replay-ceiling.sh sqlite://FILE [USERS]     FILE must not exist yet
#   deploy/replay-ceiling.sh postgres://URL [USERS]    URL names an empty database
#
# Migrates the database with `userstream migrate` (the real schema), then
# inserts USERS users (default 1,000,000) and their two contacts each with
# INSERT … SELECT inside the database, in one transaction, with the scratch
# settings a replay uses: no client, no statement parsing per row, no
# network; on PostgreSQL the query-only indexes are built after the rows,
# as a replay builds them. The rate it prints is an upper bound for
# replaying a log of `user.created` events into these tables on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${USERSTREAM_BIN:-target/release/userstream}
[ -x "$bin" ] || cargo build --release -p userstream >&2
url=${1:-}
users=${2:-1000000}

# One user row and its contacts per n; keys grow with n, as in the benchmark.
users_sql() {
  local series=$1 hex=$2 pad=$3
  cat <<SQL
INSERT INTO users_v1 (company_id, application_id, user_id, seq, version, username, username_key,
  first_name, last_name, gender, emails, phone_numbers, meta, account_type, blocked, archived,
  created_at, updated_at, email, phone, email_verified, phone_verified, login_count)
SELECT '1', 'app', $hex, n, 1, 'user' || n, 'user' || n, 'First', 'Last', 'male',
  '[{"active":true,"email":"user' || n || '@example.com","primary":true,"verified":true}]',
  '[{"active":true,"country_code":91,"phone":"98' || $pad || '","primary":true,"verified":true}]',
  '{}', 'user', 0, 0, '2026-11-24T10:00:00.000000Z', '2026-11-24T10:00:00.000000Z',
  'user' || n || '@example.com', '98' || $pad, 1, 1, 0
FROM $series;
INSERT INTO user_contacts_v1 (application_id, user_id, kind, value)
SELECT 'app', $hex, 'email', 'user' || n || '@example.com' FROM $series
UNION ALL SELECT 'app', $hex, 'phone', '98' || $pad FROM $series;
SQL
}

case "$url" in
  sqlite://*)
    file=${url#sqlite://}
    [ ! -e "$file" ] || { echo "$file exists; name a new file" >&2; exit 2; }
    command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; } >/dev/null
    # A replay's fresh file has 64 KiB pages (set before the first table).
    sqlite3 "$file" "PRAGMA page_size = 65536; VACUUM;"
    "$bin" migrate --database "$url" >/dev/null
    started=$(date +%s.%N)
    {
      echo "PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144; BEGIN;"
      users_sql "(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < $users) SELECT n FROM s)" \
        "printf('%024x', n)" "printf('%08d', n)"
      echo "COMMIT;"
    } | sqlite3 -bail "$file" >/dev/null
    ;;
  postgres://* | postgresql://*)
    "$bin" migrate --database "$url" >/dev/null
    # As a PostgreSQL replay does: the query-only indexes (UsersProjection's
    # read_indexes) are built after the rows, all at once.
    read_indexes="'users_v1_list', 'users_v1_created', 'users_v1_username', 'users_v1_external'"
    definitions=$(psql -qAt -v ON_ERROR_STOP=1 "$url" \
      -c "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname IN ($read_indexes)")
    psql -q -v ON_ERROR_STOP=1 "$url" -c "DROP INDEX $(echo "$read_indexes" | tr -d "'")" >/dev/null
    started=$(date +%s.%N)
    {
      echo "SET synchronous_commit = off; BEGIN;"
      users_sql "generate_series(1, $users) AS n" "lpad(to_hex(n), 24, '0')" "lpad(n::text, 8, '0')"
      echo "COMMIT;"
    } | psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null
    while read -r definition; do
      psql -q -v ON_ERROR_STOP=1 "$url" -c "SET maintenance_work_mem = '128MB'" -c "$definition" >/dev/null &
    done <<<"$definitions"
    wait
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
ended=$(date +%s.%N)
awk -v u="$users" -v a="$started" -v b="$ended" \
  'BEGIN { printf "%d users (%d rows) in %.1f s: %.0f users/s, the most a users_v1 replay of user.created can reach here\n", u, 3 * u, b - a, u / (b - a) }'
