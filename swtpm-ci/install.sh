#!/usr/bin/env bash
# Installs what building and testing Tally needs on Debian 12, as root:
# the TPM stack (swtpm, swtpm-tools, libtss2-dev, tpm2-tools), systemd's tools, a C toolchain
# (LMDB is C), python3-venv when missing (the Python client's tests) and, when no
# cargo is on PATH, Debian's Rust 1.9x (rustc-web).
# Idempotent: safe to run again.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it uses apt-get)" >&2
    exit 1
fi

# systemd: systemd-analyze and systemd-socket-activate for the unit tests
# (present on a full Debian 12; containers may lack them).
packages=(swtpm swtpm-tools libtss2-dev tpm2-tools pkg-config build-essential ca-certificates systemd)
if ! command -v cargo >/dev/null 2>&1; then
    # Debian 12's security archive carries a current Rust as rustc-web/cargo-web.
    packages+=(rustc-web cargo-web)
fi
# The Python client's tests (test.sh) run in a venv: Debian keeps venv's
# ensurepip in python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3 python3-venv)
fi

apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"

cargo --version
swtpm --version | head -n 1
