#!/usr/bin/env bash
# Runs every fuzz target for a set time and reports executions and findings.
#
#   scripts/fuzz.sh [SECONDS [TARGET...]]   (default 60 s each, every target)
#
# Needs the nightly toolchain (cargo-fuzz is installed into ~/.cargo/bin if
# missing); without it, says so and exits 0. The committed seeds are in
# fuzz/corpus/TARGET; what a run discovers goes to
# $GAUSSEDGE_CACHE/fuzz-corpus/TARGET, outside the clone. Memory is bounded
# (-rss_limit_mb, -malloc_limit_mb), so an allocation bomb is a finding.
# A finding leaves its input in fuzz/artifacts/TARGET and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
CACHE="${GAUSSEDGE_CACHE:-$HOME/.cache/gaussedge}"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: skipped (no nightly toolchain; rustup toolchain install nightly)"
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  if ! timeout 900 cargo install cargo-fuzz --locked >/dev/null 2>&1; then
    echo "fuzz: skipped (cargo-fuzz could not be installed here)"
    exit 0
  fi
fi

targets=(frames stats server manifest)
if [ "$#" -gt 1 ]; then targets=("${@:2}"); fi
build_log=$(mktemp)
if ! (cd fuzz && cargo +nightly fuzz build) >"$build_log" 2>&1; then
  cat "$build_log"
  exit 1
fi
rm -f "$build_log"
failed=0
for t in "${targets[@]}"; do
  work="$CACHE/fuzz-corpus/$t"
  mkdir -p "$work"
  log=$(mktemp)
  if (cd fuzz && cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1) >"$log" 2>&1; then
    result="no findings"
  else
    result="FINDING (see fuzz/artifacts/$t)"
    failed=1
    grep -E "ERROR|panicked|SUMMARY" "$log" | head -5 || true
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  corpus=$(find "$work" -type f | wc -l)
  echo "fuzz $t: ${runs:-?} executions (limit ${secs} s), corpus $corpus inputs, $result"
  rm -f "$log"
done
exit "$failed"
