#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback, for tests and local runs.
#
#   deploy/postgres.sh run CMD...   start a cluster, run CMD with DATABASE_URL_TEST set
#                                   to its URL, then stop and remove the cluster
#   deploy/postgres.sh start        start one and print `export DATABASE_URL_TEST=…` and
#                                   `export USERSTREAM_PG_DIR=…` (for eval)
#   deploy/postgres.sh stop [DIR]   stop and remove it (DIR defaults to $USERSTREAM_PG_DIR)
#   deploy/postgres.sh restart DIR  start the cluster in DIR again, on its port (after a
#                                   crash: it recovers from its WAL)
#
# Installs Debian's `postgresql` package when no server binaries are found.
set -euo pipefail

log() { echo "[postgres.sh] $*" >&2; }

find_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install_server() {
  local bindir
  bindir=$(find_bindir)
  if [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ]; then
    echo "$bindir"; return
  fi
  log "installing Debian package postgresql"
  mkdir -p /etc/postgresql-common
  # No default cluster on port 5432: ours live in temp dirs.
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  find_bindir
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bindir dir port
  bindir=$(install_server)
  dir=$(mktemp -d /tmp/userstream-pg.XXXXXX)
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  port=$(free_port)
  as_postgres "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  echo "$bindir" > "$dir/bindir"
  echo "$port" > "$dir/port"
  run_server "$dir"
  log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir)"
  echo "$dir"
}

run_server() {
  local dir=$1
  as_postgres "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$(cat "$dir/port") -c unix_socket_directories=$dir -c max_connections=400 -c fsync=on" \
    start >&2 || { cat "$dir/server.log" >&2; exit 1; }
}

stop() {
  local dir=${1:-${USERSTREAM_PG_DIR:-}}
  [ -n "$dir" ] && [ -d "$dir" ] || { log "no cluster dir given"; return 0; }
  as_postgres "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

url_of() { echo "postgres://postgres@127.0.0.1:$(cat "$1/port")/postgres"; }

case "${1:-}" in
  start)
    dir=$(start)
    echo "export DATABASE_URL_TEST=$(url_of "$dir")"
    echo "export USERSTREAM_PG_DIR=$dir"
    ;;
  stop)
    stop "${2:-}"
    ;;
  restart)
    run_server "${2:?usage: $0 restart DIR}"
    ;;
  run)
    shift
    dir=$(start)
    trap 'stop "$dir"' EXIT
    DATABASE_URL_TEST=$(url_of "$dir") "$@"
    ;;
  *)
    echo "usage: $0 start | stop [DIR] | restart DIR | run CMD..." >&2
    exit 2
    ;;
esac
