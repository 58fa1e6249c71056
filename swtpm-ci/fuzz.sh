#!/usr/bin/env bash
# Builds every fuzz target of fuzz/ with libFuzzer, AddressSanitizer and
# SanitizerCoverage, with cargo-fuzz's instrumentation flags (so cargo-fuzz
# itself is not needed), and runs each one for SECONDS (default 20) on its
# committed corpus, new inputs going to a scratch directory. Needs a nightly
# toolchain (`cargo +nightly`). Exits non-zero if a build fails or a target
# crashes (libFuzzer then writes the input to fuzz/artifacts/<target>/, see
# docs/OPERATIONS.md, "Fuzzing"). Prints one line per target: executions,
# executions per second, coverage.
#
#   bash swtpm-ci/fuzz.sh [SECONDS]
set -euo pipefail

seconds=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"

# What `cargo fuzz build -O -a` passes (sancov module pass, 8-bit counters,
# PC table, comparison tracing, `cfg(fuzzing)`, ASan, debug assertions; and
# overflow checks) except its stack-depth tracing,
# -simplifycfg-branch-fold-threshold=0 and -Ccodegen-units=1 (a slower
# build). `--target` keeps the flags off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Zsanitizer=address -Cdebug-assertions -Coverflow-checks"
export RUSTFLAGS

started=$(date +%s)
cargo +nightly build --manifest-path "$root/fuzz/Cargo.toml" --release --locked \
    --target "$host" --target-dir "$target_dir" --bins
echo "fuzz: built in $(($(date +%s) - started)) s"

# Every [[bin]] of fuzz/Cargo.toml is a target.
targets=$(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name = / { gsub(/"/, "", $3); print $3; bin = 0 }' \
    "$root/fuzz/Cargo.toml")
[ -n "$targets" ] || { echo "fuzz: no targets in fuzz/Cargo.toml" >&2; exit 1; }

for target in $targets; do
    scratch=$(mktemp -d "/tmp/tally-fuzz-$target.XXXXXX")
    log="$scratch.log"
    mkdir -p "$root/fuzz/artifacts/$target"
    status=0
    # -timeout: one input may take this long (request_handler drives a daemon).
    "$target_dir/$host/release/$target" -max_total_time="$seconds" -timeout=30 \
        -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$root/fuzz/artifacts/$target/" \
        "$scratch" "$root/fuzz/corpus/$target" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    coverage=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    printf 'fuzz: %-28s %10s execs in %ss (%s/s), %s\n' "$target" "${execs:-?}" "$seconds" \
        "${per_second:-?}" "${coverage:-no coverage line}"
    if [ "$status" != 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target failed (exit $status); its input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    rm -rf "$scratch" "$log"
done
