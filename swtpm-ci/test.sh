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

if cargo fmt --version >/dev/null 2>&1; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
else
    echo "SKIP: cargo fmt is not installed with this toolchain (Debian's cargo-web has no rustfmt)"
fi

if cargo clippy --version >/dev/null 2>&1; then
    step "cargo clippy --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets --locked -- -D warnings
else
    echo "SKIP: cargo clippy is not installed with this toolchain (Debian's cargo-web has no clippy)"
fi

step "cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --locked

step "cargo test"
log=$(mktemp /tmp/tally-ci-test.XXXXXX)
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\nsuite: %d passed, %d failed, %d skipped\n", p, f, s; if (p == 0 || f > 0) exit 1 }' "$log"
