#!/usr/bin/env bash
# Provisions and starts a software TPM (swtpm) on a Unix socket.
#
#   swtpm-ci/swtpm.sh start DIR   provision DIR (once: EK + EK certificate from
#                                 swtpm's local CA, sha256 PCR bank), start
#                                 swtpm in the background, wait until it
#                                 answers, print the TCTI string on stdout
#   swtpm-ci/swtpm.sh stop DIR    stop it
#
# Use the TCTI with tallyd (tpm.tcti / TCTI) and tpm2-tools (TPM2TOOLS_TCTI).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock="$dir/swtpm.sock"
tcti="swtpm:path=$sock"

case "$cmd" in
start)
    if [ ! -e "$dir/tpm2-00.permall" ]; then
        # swtpm_setup needs a local CA for the EK certificate; create the
        # default user config files once if the system has none.
        if [ ! -e /etc/swtpm_setup.conf ] && [ ! -e "${XDG_CONFIG_HOME:-$HOME/.config}/swtpm_setup.conf" ]; then
            /usr/share/swtpm/swtpm-create-user-config-files --root >/dev/null 2>&1 || true
        fi
        swtpm_setup --tpm2 --tpmstate "$dir" --create-ek-cert --create-platform-cert \
            --pcr-banks sha256 --overwrite >"$dir/swtpm_setup.log" 2>&1 || {
            cat "$dir/swtpm_setup.log" >&2
            exit 1
        }
    fi
    if [ -e "$dir/swtpm.pid" ] && kill -0 "$(cat "$dir/swtpm.pid")" 2>/dev/null; then
        echo "$tcti"
        exit 0
    fi
    rm -f "$sock" "$sock.ctrl"
    swtpm socket --tpm2 --tpmstate dir="$dir" \
        --server type=unixio,path="$sock" --ctrl type=unixio,path="$sock.ctrl" \
        --flags not-need-init,startup-clear --pid file="$dir/swtpm.pid" \
        --log file="$dir/swtpm.log" --daemon
    for _ in $(seq 1 100); do
        if TPM2TOOLS_TCTI="$tcti" tpm2_getcap properties-fixed >/dev/null 2>&1; then
            echo "$tcti"
            exit 0
        fi
        sleep 0.1
    done
    echo "swtpm did not answer within 10 s; log:" >&2
    cat "$dir/swtpm.log" >&2 || true
    exit 1
    ;;
stop)
    if [ -e "$dir/swtpm.pid" ]; then
        kill "$(cat "$dir/swtpm.pid")" 2>/dev/null || true
        rm -f "$dir/swtpm.pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
