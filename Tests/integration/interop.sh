#!/usr/bin/env bash
# OpenViking interop, both directions (issue 3), from the fixtures committed in Tests/interop/.
# Does NOT install OpenViking: Tests/interop/make_evidence.sh (developer-run) produced the fixtures with the real
# `openviking` package; this suite checks what they say and that the current vikingfs still agrees with them.
source "$(dirname "$0")/lib.sh"

IOP=$REPO/Tests/interop
VERDICT=$IOP/openviking-verdict.json
MADE=$IOP/openviking-made.json
KEY=$SCRATCH/root.key
install -m 600 "$IOP/root.key" "$KEY"   # git does not keep the 0600 mode vikingfs-mount requires

echo "== (a) the committed verdict: OpenViking's FileEncryptor opened every vikingfs-written file"
check "verdict was made by OpenViking's own FileEncryptor and says every file matched" python3 - "$VERDICT" <<'PY'
import json, sys
v = json.load(open(sys.argv[1], encoding="utf-8"))
env = v["environment"]
assert "openviking.crypto.encryptor.FileEncryptor" in env["implementation"], env
assert "LocalFileProvider" in env["implementation"], env
for k in ("openviking_version", "python_version", "date"):
    assert env.get(k), f"verdict lacks {k}"
files = v["files"]
assert files, "verdict lists no files"
bad = []
for path, e in files.items():
    ok = (e.get("match") is True and e.get("sealed") is True and "error" not in e
          and e.get("openviking_sha256") == e.get("expected_sha256") and e.get("expected_sha256")
          and e.get("openviking_size") == e.get("expected_size")
          and e.get("wrong_account_rejected") not in (None, False))
    if not ok:
        bad.append(path)
assert not bad, f"OpenViking did not open these as expected: {bad}"
s = v["summary"]
assert s["all_match"] is True and s["files"] == len(files) == s["matched"] and s["mismatched"] == 0, s
print(f"openviking {env['openviking_version']}: {len(files)} files matched")
PY
check "verdict lists exactly the committed vikingfs-ove1 tree" python3 - "$VERDICT" "$IOP/vikingfs-ove1" <<'PY'
import json, os, sys
files = json.load(open(sys.argv[1], encoding="utf-8"))["files"]
tree = sys.argv[2]
on_disk = {os.path.relpath(os.path.join(b, n), tree) for b, _, ns in os.walk(tree) for n in ns}
assert on_disk == set(files), (sorted(on_disk - set(files)), sorted(set(files) - on_disk))
PY
check "verdict covers the edge sizes, _system, root-level, unicode and rewritten files" python3 - "$VERDICT" <<'PY'
import json, sys
files = json.load(open(sys.argv[1], encoding="utf-8"))["files"]
sizes = {e["expected_size"] for e in files.values()}
missing = {0, 1, 4095, 4096, 4097, 65537, 1 << 20} - sizes
assert not missing, f"sizes not covered: {missing}"
accounts = {e["account"] for e in files.values()}
assert "_system" in accounts and len(accounts) >= 3, accounts
assert any("/" not in p and e["account"] == "_system" for p, e in files.items() if p != "backend_meta.json"), "no root-level file"
assert files.get("backend_meta.json", {}).get("expected_size") == 0, "no key check"
assert any(not p.isascii() for p in files), "no unicode name"
assert sum("rewritten" in e["written"] for e in files.values()) >= 2, "no rewritten file"
assert any(e["written"].startswith("sealed by OpenViking") for e in files.values()), "no OpenViking-sealed file rewritten by vikingfs"
PY

echo "== (b) the committed vikingfs-written files still read back through vikingfs"
B1=$SCRATCH/vikingfs-ove1
M1=$SCRATCH/m1
cp -a "$IOP/vikingfs-ove1" "$B1"
check "mount the committed vikingfs-ove1 tree with the committed key" viking_mount "$B1" "$M1" -o root_key_file="$KEY"
check "every file reads back to the hash OpenViking decrypted" python3 - "$VERDICT" "$M1" <<'PY'
import hashlib, json, os, sys
files = json.load(open(sys.argv[1], encoding="utf-8"))["files"]
bad = []
for path, e in files.items():
    data = open(os.path.join(sys.argv[2], path), "rb").read()
    if hashlib.sha256(data).hexdigest() != e["openviking_sha256"] or len(data) != e["openviking_size"]:
        bad.append(path)
assert not bad, f"vikingfs reads these differently from OpenViking: {bad}"
print(f"{len(files)} files")
PY
check "the mount lists exactly those files" python3 - "$VERDICT" "$M1" <<'PY'
import json, os, sys
files = json.load(open(sys.argv[1], encoding="utf-8"))["files"]
seen = {os.path.relpath(os.path.join(b, n), sys.argv[2]) for b, _, ns in os.walk(sys.argv[2]) for n in ns}
assert seen == set(files), (sorted(seen ^ set(files)))
PY
check "unmount" viking_umount "$M1"
check "reading left the backing files byte-identical" diff -r "$IOP/vikingfs-ove1" "$B1"

echo "== (c) their byte layout is OVE1"
check "magic OVE1, version 1, provider 0x01, lengths 48/12/12, size = plaintext + 100" python3 - "$VERDICT" "$IOP/vikingfs-ove1" <<'PY'
import json, os, struct, sys
files = json.load(open(sys.argv[1], encoding="utf-8"))["files"]
for path, e in files.items():
    d = open(os.path.join(sys.argv[2], path), "rb").read()
    magic, version, provider, wl, kl, dl = struct.unpack(">4sBBHHH", d[:12])
    assert magic == b"OVE1", (path, magic)
    assert version == 1 and provider == 0x01, (path, version, provider)
    assert (wl, kl, dl) == (48, 12, 12), (path, wl, kl, dl)
    assert len(d) == e["expected_size"] + 100, (path, len(d), e["expected_size"])
PY
check "the independent reference decrypter agrees (account from the verdict)" python3 - "$VERDICT" "$IOP/vikingfs-ove1" "$KEY" "$REPO/Tests/integration/vikingfs_ref.py" <<'PY'
import hashlib, json, os, subprocess, sys
verdict, tree, key, ref = sys.argv[1:5]
for path, e in json.load(open(verdict, encoding="utf-8"))["files"].items():
    out = subprocess.run(["python3", ref, "decrypt", key, e["account"], os.path.join(tree, path)],
                         capture_output=True, check=True).stdout
    assert hashlib.sha256(out).hexdigest() == e["expected_sha256"], path
PY

echo "== (d) OpenViking-made files read back through vikingfs"
B2=$SCRATCH/openviking-made
M2=$SCRATCH/m2
cp -a "$IOP/openviking-made" "$B2"
check "openviking-made.json lists exactly the committed OpenViking-made tree, all OVE1" python3 - "$MADE" "$IOP/openviking-made" <<'PY'
import json, os, sys
m = json.load(open(sys.argv[1], encoding="utf-8"))
assert "openviking.crypto.encryptor.FileEncryptor" in m["environment"]["implementation"]
assert m["environment"].get("openviking_version")
files, tree = m["files"], sys.argv[2]
on_disk = {os.path.relpath(os.path.join(b, n), tree) for b, _, ns in os.walk(tree) for n in ns}
assert on_disk == set(files) and len(files) >= 4, (sorted(on_disk ^ set(files)))
assert len({e["account"] for p, e in files.items() if p != "backend_meta.json"}) >= 2
assert any(e["size"] == 0 for p, e in files.items() if p != "backend_meta.json"), "no empty file"
for p, e in files.items():
    d = open(os.path.join(tree, p), "rb").read()
    assert d[:4] == b"OVE1" and len(d) == e["envelope_size"] == e["size"] + 100, p
PY
new_key "$SCRATCH/wrong.key"
mkdir -p "$SCRATCH/m-wrong"
check "a wrong root key is refused against OpenViking's key check (exit 3)" bash -c "
    timeout 20 '$BIN/vikingfs-mount' '$B2' '$SCRATCH/m-wrong' -f -o root_key_file='$SCRATCH/wrong.key' >'$SCRATCH/m-wrong.log' 2>&1
    s=\$?; [ \$s -eq 3 ] || { echo \"exit \$s\"; cat '$SCRATCH/m-wrong.log'; exit 1; }"
fusermount3 -u "$SCRATCH/m-wrong" 2>/dev/null || true
check "mount the OpenViking-made tree (its key check was sealed by OpenViking)" viking_mount "$B2" "$M2" -o root_key_file="$KEY"
check "every OpenViking-made file reads back to its hash" python3 - "$MADE" "$M2" <<'PY'
import hashlib, json, os, sys
files = json.load(open(sys.argv[1], encoding="utf-8"))["files"]
for path, e in files.items():
    data = open(os.path.join(sys.argv[2], path), "rb").read()
    assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["size"], path
print(f"{len(files)} files")
PY
check "unmount" viking_umount "$M2"
check "reading left the OpenViking-made files byte-identical" diff -r "$IOP/openviking-made" "$B2"

echo "== (e) round trip: OpenViking-made files copied and modified through a format=ove1 mount"
check "mount the OpenViking-made tree with format=ove1" viking_mount "$B2" "$M2" -o root_key_file="$KEY",format=ove1
TEXT=$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1],encoding="utf-8"))["files"]; print(next(p for p,e in f.items() if e["size"] > 0 and p.endswith(".md")))' "$MADE")
EMPTY=$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1],encoding="utf-8"))["files"]; print(next(p for p,e in f.items() if e["size"] == 0 and p != "backend_meta.json"))' "$MADE")
BIN_FILE=$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1],encoding="utf-8"))["files"]; print(next(p for p,e in f.items() if p.endswith(".bin")))' "$MADE")
acct() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1],encoding="utf-8"))["files"][sys.argv[2]]["account"])' "$MADE" "$1"; }
check "modify an OpenViking-made file in place (pwrite + append) through the mount" python3 - "$M2/$TEXT" "$SCRATCH/text.expected" <<'PY'
import os, sys
path, expected = sys.argv[1:3]
before = bytearray(open(path, "rb").read())
fd = os.open(path, os.O_RDWR)
os.pwrite(fd, b"[edited by vikingfs]", 3)
os.lseek(fd, 0, os.SEEK_END)
os.write(fd, b"appended through vikingfs\n" * 300)
os.close(fd)
before[3:23] = b"[edited by vikingfs]"
before += b"appended through vikingfs\n" * 300
open(expected, "wb").write(before)
assert open(path, "rb").read() == bytes(before)
PY
check "append to the empty OpenViking-made file" bash -c "printf 'no longer empty\n' >> '$M2/$EMPTY'"
check "copy OpenViking-made files to new files through the mount" bash -c "cp '$M2/$BIN_FILE' '$M2/$BIN_FILE.copy' && cp '$M2/$TEXT' '$M2/$TEXT.copy'"
check "unmount" viking_umount "$M2"
check "the modified and copied files are OVE1 on disk (magic, version, provider, 48/12/12)" python3 - \
        "$B2/$TEXT" "$B2/$EMPTY" "$B2/$BIN_FILE.copy" "$B2/$TEXT.copy" <<'PY'
import struct, sys
for path in sys.argv[1:]:
    d = open(path, "rb").read()
    assert d[:4] == b"OVE1" and d[4] == 1 and d[5] == 1, (path, d[:6])
    assert struct.unpack(">HHH", d[6:12]) == (48, 12, 12), path
PY
check "the modified file decrypts with vikingfs_ref.py to the new content" bash -c "
    cmp <($REF decrypt '$KEY' '$(acct "$TEXT")' '$B2/$TEXT') '$SCRATCH/text.expected' &&
    cmp <($REF decrypt '$KEY' '$(acct "$TEXT")' '$B2/$TEXT.copy') '$SCRATCH/text.expected'"
check "the appended empty file decrypts to its new content" bash -c "
    [ \"\$($REF decrypt '$KEY' '$(acct "$EMPTY")' '$B2/$EMPTY')\" = 'no longer empty' ]"
check "the copy of the binary file decrypts to OpenViking's plaintext hash" bash -c "
    [ \"\$($REF decrypt '$KEY' '$(acct "$BIN_FILE")' '$B2/$BIN_FILE.copy' | sha256sum | cut -d' ' -f1)\" = \
      \"\$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1],encoding=\"utf-8\"))[\"files\"][sys.argv[2]][\"sha256\"])' '$MADE' '$BIN_FILE')\" ]"
check "the untouched OpenViking-made files were not rewritten" bash -c "cmp '$IOP/openviking-made/$BIN_FILE' '$B2/$BIN_FILE' && cmp '$IOP/openviking-made/backend_meta.json' '$B2/backend_meta.json'"
check "no temporary file is left in the backing dir" bash -c "[ -z \"\$(find '$B2' -name '.vikingfs-tmp-*')\" ]"
check "remount (native default) reads the modified OVE1 file back" bash -c "
    $(declare -f viking_mount viking_umount); BIN='$BIN'
    viking_mount '$B2' '$SCRATCH/m3' -o root_key_file='$KEY' && cmp '$SCRATCH/m3/$TEXT' '$SCRATCH/text.expected'; s=\$?
    viking_umount '$SCRATCH/m3'; exit \$s"

finish
