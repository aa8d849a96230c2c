#!/usr/bin/env bash
# Runs every test of userstream: the domain purity check, unit and property
# tests, the event-log contract suite and the black-box HTTP tests, on SQLite
# and on a throwaway PostgreSQL cluster (installed if missing); and every
# fuzz target for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== domain purity: userstream-domain must not depend on IO crates"
if cargo tree -p userstream-domain -e normal --prefix none | grep -E '^(tokio|sqlx[a-z-]*|axum|async-nats|tracing|reqwest|hyper) '; then
  echo "userstream-domain depends on an IO crate" >&2
  exit 1
fi

# The KurrentDB adapter builds, lints and runs its contract tests (with
# EVENTSTORE_URL) with everything else: one build, with the feature.
features=(--features userstream-tests/eventstore)

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings

echo "== official SDKs"
command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
npm ci --prefix tests/sdk --no-audit --no-fund --loglevel=error
python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null \
  || { apt-get update -qq && apt-get install -y -qq python3-venv; }
[ -x tests/sdk/.venv/bin/python ] || python3 -m venv tests/sdk/.venv
tests/sdk/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
echo "== the console's browser: Debian's Chromium, driven by playwright-core"
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
npm ci --prefix tests/console --no-audit --no-fund --loglevel=error
echo "== schemathesis and openapi-spec-validator (for the OpenAPI tests)"
[ -x tests/ops/.venv/bin/python ] || python3 -m venv tests/ops/.venv
tests/ops/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/ops/requirements.txt
# Only the Compose Specification's JSON schema is read from this package
# (tests/ops/check_deploy.py); its own dependencies are not wanted.
tests/ops/.venv/bin/pip install --quiet --disable-pip-version-check --no-deps docker-compose==1.29.2

echo "== build"
cargo build --workspace --all-targets --locked "${features[@]}"

echo "== fuzzing: every cargo-fuzz target for ${FUZZ_SECONDS:-30} s on its corpus"
bash deploy/fuzz.sh

runner=(cargo test --workspace --locked "${features[@]}")
if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --locked --no-fail-fast "${features[@]}")
fi

echo "== tests (${runner[*]}) on SQLite, PostgreSQL and NATS JetStream"
exec bash deploy/postgres.sh run bash deploy/nats.sh run "${runner[@]}"
