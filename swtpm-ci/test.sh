#!/usr/bin/env bash
# Sets everything up and runs Tally's whole test suite: formatting, lints,
# unit tests and end-to-end tests (real daemon, real sockets, real swtpm).
# Exits non-zero on any failure. This is what CI runs (.ci/run).
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "installing packages"
bash "$here/install.sh"

step "starting swtpm"
tpm_dir=$(mktemp -d /tmp/tally-ci-tpm.XXXXXX)
trap 'bash "$here/swtpm.sh" stop "$tpm_dir"' EXIT
TCTI=$(bash "$here/swtpm.sh" start "$tpm_dir")
export TCTI TPM2TOOLS_TCTI="$TCTI"
echo "TCTI=$TCTI"
tpm2_getcap properties-fixed | grep -A2 TPM2_PT_MANUFACTURER

# Every skip goes to this file (tests write it through tally_tests::skip) and is
# printed and counted in the closing line: a skip is never a silent pass.
skip_log=$(mktemp /tmp/tally-ci-skips.XXXXXX)
export TALLY_SKIP_LOG="$skip_log"
# A check this script cannot run: counted as skipped, and under CI=true a failure
# (CI installs everything this script needs).
skip_check() {
    printf '%s\twhole check\t%s\n' "$1" "$2" >>"$skip_log"
    echo "SKIP ($1): $2"
    if [ "${CI:-}" = true ]; then
        echo "CI=true: $1 must run in CI" >&2
        exit 1
    fi
}
# rustup toolchains may lack the components; Debian's cargo-web has neither.
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

if cargo fmt --version >/dev/null 2>&1; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
else
    skip_check "cargo fmt" "cargo fmt is not installed with this toolchain (Debian's cargo-web has no rustfmt)"
fi

if cargo clippy --version >/dev/null 2>&1; then
    step "cargo clippy --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets --locked -- -D warnings
else
    skip_check "cargo clippy" "cargo clippy is not installed with this toolchain (Debian's cargo-web has no clippy)"
fi

step "cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --locked

# The Python client (client/python) against the debug tallyd just built: in a
# venv of its own, installed as a user installs it (pip install ./client/python).
step "Python client: ruff and pytest (client/python)"
py_passed=0 py_failed=0 py_skipped=0 py_status=0
python_suite() {
    local target=${CARGO_TARGET_DIR:-$root/target} python venv
    python=$(command -v /usr/bin/python3 || command -v python3 || true)
    if [ -z "$python" ]; then
        skip_check "pytest (client/python)" "no python3 on PATH (install.sh installs python3-venv)"
        return
    fi
    venv="$target/python-venv"
    if [ ! -x "$venv/bin/python" ] && ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        skip_check "pytest (client/python)" "$python -m venv failed (Debian: apt-get install python3-venv)"
        return
    fi
    # Dependencies first, then the package itself again (--force-reinstall:
    # pip would keep an older build of the same version).
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "./client/python[otel]" -r client/python/requirements-dev.txt ||
        ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            --force-reinstall --no-deps ./client/python; then
        skip_check "pytest (client/python)" "pip could not install ./client/python[otel] and requirements-dev.txt"
        return
    fi
    "$venv/bin/ruff" check client/python bench/python
    local py_log
    py_log=$(mktemp /tmp/tally-ci-pytest.XXXXXX)
    set +e
    TALLYD_BIN="$target/debug/tallyd" TALLY_BIN="$target/debug/tally" \
        "$venv/bin/python" -m pytest -rs -p no:cacheprovider client/python/tests 2>&1 | tee "$py_log"
    py_status=${PIPESTATUS[0]}
    set -e
    # pytest's closing line: "== 55 passed, 2 skipped, 1 failed in 14.39s ==".
    read -r py_passed py_failed py_skipped < <(awk '
        / in [0-9.]+s/ && /(passed|failed|skipped|error)/ {
            p = f = s = 0
            for (i = 1; i < NF; i++) { n = $i + 0; w = $(i+1)
                if (w ~ /^passed/) p = n; else if (w ~ /^(failed|error)/) f += n; else if (w ~ /^skipped/) s = n }
        }
        END { print p + 0, f + 0, s + 0 }' "$py_log")
    if [ "$py_status" != 0 ] && [ "$py_failed" = 0 ]; then
        # No test failed but pytest did (no tests collected, a usage error).
        py_failed=1
    fi
    rm -f "$py_log"
}
python_suite

step "cargo test"
log=$(mktemp /tmp/tally-ci-test.XXXXXX)
cargo test --workspace --locked 2>&1 | tee "$log"
# The fuzz targets, built and run briefly (TALLY_FUZZ_SECONDS each, default 20)
# where a nightly toolchain is present; CI does not install one, so its absence
# is a counted skip, never a failure.
if cargo +nightly --version >/dev/null 2>&1; then
    step "fuzz targets (libFuzzer + AddressSanitizer, ${TALLY_FUZZ_SECONDS:-20} s each)"
    fuzz_started=$(date +%s)
    bash "$here/fuzz.sh" "${TALLY_FUZZ_SECONDS:-20}"
    echo "fuzz: $(($(date +%s) - fuzz_started)) s in all"
else
    reason="no nightly toolchain (rustup toolchain install nightly): the fuzz targets were neither built nor run"
    printf 'fuzz targets\twhole check\t%s\n' "$reason" >>"$skip_log"
    echo "SKIP (fuzz targets): $reason"
fi

# Every skip, with its reason (libtest hides a passing test's output).
if [ -s "$skip_log" ]; then
    printf '\nskips:\n'
    sort "$skip_log" | awk -F '\t' '{ printf "  SKIP %s (%s): %s\n", $1, $2, $3 }'
fi
# One closing line for the whole suite (cargo prints one per test binary). A test
# that recorded a skip passed for libtest; here it counts as skipped, not passed.
skipped_tests=$(awk -F '\t' '$2 != "whole check" { print $1 }' "$skip_log" | sort -u | wc -l)
skipped_checks=$(awk -F '\t' '$2 == "whole check" { print $1 }' "$skip_log" | sort -u | wc -l)
# pytest's counts (client/python) are added in; its skips printed above (-rs).
awk -v skipped_tests="$skipped_tests" -v skipped_checks="$skipped_checks" \
    -v py_passed="$py_passed" -v py_failed="$py_failed" -v py_skipped="$py_skipped" '
     /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\nsuite: %d passed, %d failed, %d skipped (%d ignored, %d tests skipped in whole or part, %d checks skipped, %d pytest skipped)\n", p - skipped_tests + py_passed, f + py_failed, s + skipped_tests + skipped_checks + py_skipped, s, skipped_tests, skipped_checks, py_skipped;
           if (p == 0 || f + py_failed > 0) exit 1 }' "$log"
