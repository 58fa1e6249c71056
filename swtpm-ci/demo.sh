#!/usr/bin/env bash
# Sets everything up and runs Tally's main job: start tallyd, send events,
# export the log and verify it offline, then show that tampering is caught.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

step "installing packages"
bash "$here/install.sh"

step "building"
cargo build --workspace --locked --release
bin="$root/target/release"

work=$(mktemp -d /tmp/tally-demo.XXXXXX)
step "starting swtpm (a software TPM: fine for a demo, proves nothing against root)"
TCTI=$(bash "$here/swtpm.sh" start "$work/tpm")
echo "TCTI=$TCTI"

step "provisioning the TPM: NV counter, owner record, attestation key and owner key"
"$bin/tallyd" --data-dir "$work/data" --tcti "$TCTI" provision >"$work/ak.pem"
cat "$work/ak.pem"

step "starting tallyd on $work, anchoring in the TPM"
"$bin/tallyd" --data-dir "$work/data" --socket "$work/tally.sock" --tcti "$TCTI" 2>"$work/tallyd.log" &
tallyd_pid=$!
cleanup() {
    kill "$tallyd_pid" 2>/dev/null || true
    wait "$tallyd_pid" 2>/dev/null || true
    bash "$here/swtpm.sh" stop "$work/tpm"
}
stop_tallyd() {
    kill "$tallyd_pid"
    wait "$tallyd_pid" || true
}
trap cleanup EXIT
export TALLY_SOCKET="$work/tally.sock"
for _ in $(seq 1 100); do
    [ -S "$TALLY_SOCKET" ] && break
    sleep 0.1
done

step "the log's identity, born with its genesis anchor: what a verifier pins (here: copied off the host now)"
"$bin/tallyd" --data-dir "$work/data" identity >"$work/identity.json"
cat "$work/identity.json"

step "appending events"
"$bin/tally" append --kind model.load --actor inference-1 --subject llama-3-8b \
    --attr model_sha256=9f2c... --payload '{"quantization":"q4"}' --content-type application/json
seq 1 10000 | awk '{printf "{\"kind\":\"prompt\",\"actor\":\"agent-%d\",\"subject\":\"req-%d\",\"attributes\":{\"prompt_sha256\":\"%064d\"},\"payload\":\"event %d\"}\n", $1%7, $1, $1, $1}' |
    "$bin/tally" append --stdin | tail -n 2

step "status"
"$bin/tally" status

step "the last two events"
"$bin/tally" tail --from 10000

step "anchoring the head in the TPM now (it also happens every 10 s by itself)"
"$bin/tally" anchor

step "export, and a fresh TPM attestation for a nonce only the verifier knows (carrying any anchor made since)"
nonce=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
"$bin/tally" export --out "$work/log.tally" --attest "$work/fresh.att" --nonce "$nonce"

step "verify offline against the pinned identity: chain, origin (genesis), anchors, counter, currentness"
"$bin/tally" verify "$work/log.tally" --identity "$work/identity.json" \
    --attestation "$work/fresh.att" --nonce "$nonce"

step "a Merkle inclusion proof of one event, checked with only the identity"
"$bin/tally" prove inclusion --seq 4242 --out "$work/seq4242.proof"
"$bin/tally" verify-proof "$work/seq4242.proof" --identity "$work/identity.json"

step "tampering with one byte of one record: verify must fail and name it"
python3 - "$work/log.tally" "$work/tampered.tally" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[len(data) // 2] ^= 0x01
open(sys.argv[2], "wb").write(data)
PY
set +e
"$bin/tally" verify "$work/tampered.tally" --identity "$work/identity.json"
code=$?
set -e
if [ "$code" != 1 ]; then
    echo "DEMO FAILED: the tampered bundle did not FAIL (exit $code)" >&2
    exit 1
fi
step "stopping tallyd (clean shutdown), then cross-checking with tpm2-tools"
stop_tallyd
"$bin/tally" quote-files "$work/log.tally" --ak "$work/ak.pem" --out-dir "$work/quotes" | tail -n 1 >"$work/checkquote.sh"
cat "$work/checkquote.sh"
bash "$work/checkquote.sh" >/dev/null && echo "tpm2_checkquote: accepted"
echo "tpm2_nvread counter: $(TPM2TOOLS_TCTI="$TCTI" tpm2_nvread 0x01c17a11 -C o 2>/dev/null | od -An -tx1 | tr -d ' ')"

echo
echo "demo OK: the log verified against the TPM, tpm2_checkquote agreed, the tampered copy was rejected (files in $work)"
