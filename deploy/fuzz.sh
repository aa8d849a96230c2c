#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time on its checked-in corpus
# (fuzz/corpus/TARGET), then prints executions and crashes per target.
# New inputs go to a scratch directory, so the checked-in corpus only grows
# by hand (`cargo +nightly fuzz cmin`). A crash fails the run; its input is
# in fuzz/artifacts/TARGET/: add it to the corpus and write a test for it.
#   FUZZ_SECONDS  time per target (default 30)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-30}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain on this machine (cargo fuzz needs one): fuzzing skipped" >&2
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet

# No sanitizer: the code under test forbids unsafe; libFuzzer's coverage
# guidance and Rust's own checks (debug assertions, overflow) remain.
cargo +nightly fuzz build --sanitizer none 2>&1 | tail -n 1
failed=0
summary=()
for target in $(cargo +nightly fuzz list); do
  scratch="$(mktemp -d)"
  log="$(mktemp)"
  if cargo +nightly fuzz run --sanitizer none "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
    crashes=0
  else
    crashes=1
    failed=1
    grep -E 'panicked|SUMMARY|Test unit written' "$log" | head -n 20 >&2 || true
  fi
  runs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1 || true)"
  summary+=("$(printf '%-16s %12s executions  %d crash(es)' "$target" "${runs:-?}" "$crashes")")
  rm -rf "$scratch" "$log"
done
printf 'fuzz: %s\n' "${summary[@]}"
exit "$failed"
