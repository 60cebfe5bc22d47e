#!/usr/bin/env python3
"""Writes the interop evidence set through a vikingfs mount (format=ove1) and records what was written.

Standard library only: it is a plain client of the mountpoint, like any application.

  vikingfs_writer.py write MOUNTPOINT MANIFEST.json
      create every file of the set through the mount; MANIFEST.json gets, per backing path, the account whose
      key must seal it (DESIGN section 2), the plaintext SHA-256 and size, and how the file was written.
  vikingfs_writer.py rewrite MOUNTPOINT MANIFEST.json RELPATH
      modify an existing file through the mount (pwrite in the middle + append, one open/close) and update
      its manifest entry. Used on a file that OpenViking sealed, to show a vikingfs rewrite stays readable.

Contents are deterministic (SHAKE-256 of the path), so the expected hashes can be recomputed from this file.
"""
import hashlib
import json
import os
import re
import sys

SYSTEM = "_system"
ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_.@-]+$")


def account_of(relpath: str) -> str:
    """DESIGN section 2: the first component when it is a valid account ID not starting with `_`, else _system."""
    parts = relpath.split("/")
    first = parts[0]
    if len(parts) >= 2 and ACCOUNT_ID.match(first) and first.count("@") <= 1 \
            and first not in (".", "..") and not first.startswith("_"):
        return first
    return SYSTEM


def content(relpath: str, size: int) -> bytes:
    return hashlib.shake_256(b"vikingfs-interop:" + relpath.encode()).digest(size) if size else b""


# (backing-relative path, plaintext, note). Directories are created as needed.
def evidence_set():
    files = [
        ("_system/accounts.json", b'{"accounts": {"acme": {"created_at": "2026-01-01T00:00:00Z"}, '
                                  b'"globex": {}, "tenant-7": {}, "ops.eu@corp": {}}}\n', "_system account"),
        ("root-level.txt", b"a file directly in the backing root belongs to _system\n", "root-level file"),
        ("acme/_system/users.json", b'{"users": {"alice": {"role": "admin", "key": "sk-alice-plaintext", '
                                    b'"key_prefix": "sk-ali"}}}\n', "per-account _system dir"),
        ("acme/resources/notes/.abstract.md", "# Notes\nL0 abstract — résumé.\n".encode(), "L0 file"),
        ("acme/resources/notes/.overview.md", ("## Overview\n" + "line of overview text\n" * 150).encode(),
         "L1 file"),
    ]
    for size in (0, 1, 4095, 4096, 4097, 65537, 1 << 20):
        path = f"acme/resources/blobs/size-{size}.bin"
        files.append((path, content(path, size), f"{size} bytes"))
    files += [
        ("globex/memories/日本語のメモ.md", "これは暗号化されたメモです。\n".encode(), "unicode file name"),
        ("globex/resources/Ünïcødé dïr/naïve café 🚀.txt", "emoji and accents in names ✓\n".encode(),
         "unicode directory and file name"),
        ("tenant-7/resources/data.bin", content("tenant-7/resources/data.bin", 12345), "third account"),
        ("ops.eu@corp/resources/report.md", b"account ID with '.', '@' and no leading underscore\n",
         "account ID with . and @"),
        ("données/à-la-racine.txt", "a first component that is not an account ID → _system\n".encode(),
         "non-ID first component (unicode)"),
    ]
    return files


def write_file(path: str, data: bytes, chunk: int = 128 << 10):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for at in range(0, len(data), chunk):
            os.write(fd, data[at:at + chunk])
    finally:
        os.close(fd)


def record(manifest, relpath, data, note):
    manifest[relpath] = {"account": account_of(relpath), "sha256": hashlib.sha256(data).hexdigest(),
                         "size": len(data), "written": note}


def cmd_write(mnt, manifest_path):
    manifest = {}
    for relpath, data, note in evidence_set():
        write_file(os.path.join(mnt, relpath), data)
        record(manifest, relpath, data, note)

    # Rewritten: written and closed, then reopened, changed in place and extended, closed again.
    rel = "acme/resources/rewritten.md"
    first = ("version 1\n" + "original line\n" * 400).encode()
    write_file(os.path.join(mnt, rel), first)
    fd = os.open(os.path.join(mnt, rel), os.O_RDWR)
    os.pwrite(fd, b"CHANGED IN PLACE", 2000)
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, b"appended after reopening\n" * 200)
    os.close(fd)
    final = bytearray(first)
    final[2000:2016] = b"CHANGED IN PLACE"
    final += b"appended after reopening\n" * 200
    record(manifest, rel, bytes(final), "rewritten: 5610 bytes written+closed, reopened O_RDWR, "
                                        "16 bytes overwritten at 2000, 5000 appended, closed")

    # Rewritten shorter: 70000 bytes, closed, then reopened with O_TRUNC and 10 bytes written.
    rel = "globex/resources/shrunk.bin"
    write_file(os.path.join(mnt, rel), content(rel, 70000))
    write_file(os.path.join(mnt, rel), b"now short\n")
    record(manifest, rel, b"now short\n", "rewritten: 70000 bytes written+closed, reopened O_TRUNC, 10 bytes")

    # The mount made the key check itself (DESIGN 4.4): empty plaintext under _system.
    if os.path.exists(os.path.join(mnt, "backend_meta.json")):
        record(manifest, "backend_meta.json", open(os.path.join(mnt, "backend_meta.json"), "rb").read(),
               "key check created by vikingfs-mount on the empty backing dir")

    # Read everything back through the mount before trusting the manifest.
    for relpath, entry in manifest.items():
        got = open(os.path.join(mnt, relpath), "rb").read()
        assert hashlib.sha256(got).hexdigest() == entry["sha256"], f"mount reads {relpath} back wrong"
    save(manifest_path, manifest)
    print(f"wrote {len(manifest)} files through {mnt}")


def cmd_rewrite(mnt, manifest_path, rel):
    manifest = json.load(open(manifest_path, encoding="utf-8"))
    path = os.path.join(mnt, rel)
    before = open(path, "rb").read()
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"<vikingfs>", min(5, len(before)))
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, b"line appended by vikingfs\n" * 50)
    os.close(fd)
    after = bytearray(before)
    at = min(5, len(before))
    after[at:at + 10] = b"<vikingfs>"
    after += b"line appended by vikingfs\n" * 50
    assert open(path, "rb").read() == bytes(after), "mount reads the rewrite back wrong"
    note = manifest.get(rel, {}).get("written", "")
    record(manifest, rel, bytes(after), (note + "; " if note else "") +
           f"rewritten through vikingfs: 10 bytes overwritten at {at}, 1300 appended")
    save(manifest_path, manifest)
    print(f"rewrote {rel}")


def save(path, manifest, sort=True):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(manifest.items())) if sort else manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"] and len(sys.argv) == 4:
        cmd_write(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["rewrite"] and len(sys.argv) == 5:
        cmd_rewrite(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print(__doc__)
        sys.exit(2)
