#!/usr/bin/env python3
"""Interop evidence with OpenViking's OWN implementation (the `openviking` package from PyPI).

Every seal and open here goes through `openviking.crypto.encryptor.FileEncryptor` with
`openviking.crypto.providers.LocalFileProvider(key_file)`: `await encryptor.encrypt(account_id, plaintext)`
and `await encryptor.decrypt(account_id, envelope)`. The provider derives the account key itself
(HKDF-SHA256 of the root key, salt `openviking-kek-salt-v1`, info `openviking:kek:v1:` + account ID);
this file never touches a key or a cipher. Run it with the Python that has `openviking` installed
(Tests/interop/make_evidence.sh sets that up); CI never runs it.

  openviking_check.py check KEYFILE TREE MANIFEST.json VERDICT.json [--meta k=v ...]
      open every file of TREE (backing files written by vikingfs) with OpenViking; compare with MANIFEST
      (vikingfs_writer.py's record of the plaintext written); write VERDICT. Exit 1 unless all match.
  openviking_check.py seal-into KEYFILE TREE MANIFEST.json RELPATH
      seal one new file into TREE with OpenViking (later rewritten through vikingfs) and record it.
  openviking_check.py make KEYFILE OUTDIR OUT.json [--meta k=v ...]
      seal a small OpenViking-made tree (the other direction) and record the expected plaintext hashes.

FileEncryptor.decrypt returns input that does not start with `OVE1` unchanged (OpenViking's legacy
plaintext passthrough), so `check` also requires the magic: a file vikingfs left in plaintext fails.
"""
import asyncio
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vikingfs_writer import account_of, content, save  # noqa: E402  (plain helpers, no crypto)

from openviking.crypto.encryptor import FileEncryptor  # noqa: E402
from openviking.crypto.exceptions import EncryptionError  # noqa: E402
from openviking.crypto.providers import LocalFileProvider  # noqa: E402

WRONG_ACCOUNT = "interop-wrong-account"


def encryptor(keyfile: str) -> FileEncryptor:
    if not os.path.exists(keyfile):
        # LocalFileProvider would silently create a fresh key at a missing path; never let it.
        sys.exit(f"no key file {keyfile}")
    return FileEncryptor(LocalFileProvider(keyfile))


def environment(meta_args):
    info = {
        "implementation": "openviking.crypto.encryptor.FileEncryptor + "
                          "openviking.crypto.providers.LocalFileProvider (installed package, not a reimplementation)",
        "openviking_version": importlib.metadata.version("openviking"),
        "cryptography_version": importlib.metadata.version("cryptography"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }
    for arg in meta_args:
        key, _, value = arg.partition("=")
        info[key] = value
    return info


def parse_meta(args):
    meta, rest, it = [], [], iter(args)
    for a in it:
        if a == "--meta":
            meta.append(next(it))
        else:
            rest.append(a)
    return rest, meta


def layout(data: bytes) -> dict:
    if len(data) < 12:
        return {"magic": data[:4].decode("latin-1")}
    magic, version, provider, wl, kl, dl = struct.unpack(">4sBBHHH", data[:12])
    return {"magic": magic.decode("latin-1"), "version": version, "provider": provider,
            "wrapped_key_len": wl, "key_iv_len": kl, "data_iv_len": dl}


def walk(tree):
    for base, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            yield os.path.relpath(os.path.join(base, name), tree).replace(os.sep, "/")


async def check(keyfile, tree, manifest_path, verdict_path, meta):
    enc = encryptor(keyfile)
    manifest = json.load(open(manifest_path, encoding="utf-8"))
    on_disk = set(walk(tree))
    results = {}
    for rel in sorted(on_disk | set(manifest)):
        want = manifest.get(rel)
        entry = {"account": want["account"] if want else account_of(rel)}
        if want:
            entry.update(written=want["written"], expected_sha256=want["sha256"], expected_size=want["size"])
        if rel not in on_disk:
            entry.update(match=False, error="missing from the backing tree")
            results[rel] = entry
            continue
        data = open(os.path.join(tree, rel), "rb").read()
        entry["backing_size"] = len(data)
        entry["layout"] = layout(data)
        entry["sealed"] = data.startswith(b"OVE1")
        try:
            plain = await enc.decrypt(entry["account"], data)
            entry["openviking_sha256"] = hashlib.sha256(plain).hexdigest()
            entry["openviking_size"] = len(plain)
        except EncryptionError as e:
            entry["error"] = f"{type(e).__name__}: {e}"
        # Negative control: the same envelope under another account's key must not open.
        try:
            await enc.decrypt(WRONG_ACCOUNT, data)
            entry["wrong_account_rejected"] = False
        except EncryptionError as e:
            entry["wrong_account_rejected"] = type(e).__name__
        entry["match"] = bool(want) and entry["sealed"] and "error" not in entry \
            and entry.get("openviking_sha256") == want["sha256"] and entry.get("openviking_size") == want["size"] \
            and entry["wrong_account_rejected"] is not False
        if not want:
            entry["error"] = "not in the manifest (a file vikingfs was not asked to write)"
        results[rel] = entry

    matched = sum(1 for e in results.values() if e["match"])
    verdict = {
        "what": "Files written through a vikingfs mount with -o format=ove1, opened with OpenViking's own "
                "FileEncryptor. Per file: the account whose key OpenViking was asked to use (DESIGN section 2), "
                "the plaintext SHA-256/size vikingfs was given, and OpenViking's decrypted SHA-256/size.",
        "summary": {
            "files": len(results), "matched": matched, "mismatched": len(results) - matched,
            "accounts": sorted({e["account"] for e in results.values()}),
            "all_match": matched == len(results) and len(results) > 0,
        },
        "environment": environment(meta),
        "key_file": "Tests/interop/root.key (test-only key)",
        "tree": "Tests/interop/vikingfs-ove1/",
        "files": results,
    }
    save(verdict_path, verdict, sort=False)
    print(f"OpenViking {verdict['environment']['openviking_version']}: {matched}/{len(results)} files matched")
    for rel, e in results.items():
        if not e["match"]:
            print(f"  MISMATCH {rel}: {e.get('error') or e}")
    return 0 if verdict["summary"]["all_match"] else 1


async def seal_into(keyfile, tree, manifest_path, rel):
    enc = encryptor(keyfile)
    plain = ("# sealed by OpenViking FileEncryptor\n" + "a line OpenViking wrote\n" * 60).encode()
    account = account_of(rel)
    path = os.path.join(tree, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(await enc.encrypt(account, plain))
    manifest = json.load(open(manifest_path, encoding="utf-8"))
    manifest[rel] = {"account": account, "sha256": hashlib.sha256(plain).hexdigest(), "size": len(plain),
                     "written": f"sealed by OpenViking FileEncryptor ({len(plain)} bytes)"}
    save(manifest_path, manifest)
    print(f"OpenViking sealed {rel} under {account}")
    return 0


# The OpenViking-made set: different names, accounts and contents from ../shared/vectors/ove1.
def made_set():
    return [
        ("backend_meta.json", b"", "the key check: empty plaintext under _system, as OpenViking writes it"),
        ("acme/memories/ov-empty.md", b"", "empty file"),
        ("acme/memories/ov-made 文档.md", "# Made by OpenViking\n中文内容，以及 émojis 🚀.\n".encode() * 20,
         "text, unicode name"),
        ("tenant-7/resources/ov-made.bin", content("openviking-made/tenant-7/resources/ov-made.bin", 70001),
         "binary, 70001 bytes"),
    ]


async def make(keyfile, outdir, out_json, meta):
    enc = encryptor(keyfile)
    files = {}
    for rel, plain, note in made_set():
        account = account_of(rel)
        sealed = await enc.encrypt(account, plain)
        assert await enc.decrypt(account, sealed) == plain
        path = os.path.join(outdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(sealed)
        files[rel] = {"account": account, "sha256": hashlib.sha256(plain).hexdigest(), "size": len(plain),
                      "envelope_size": len(sealed), "layout": layout(sealed), "note": note}
    save(out_json, {
        "what": "OVE1 files sealed by OpenViking's own FileEncryptor with Tests/interop/root.key; "
                "vikingfs must read them back to these plaintext hashes.",
        "environment": environment(meta),
        "tree": "Tests/interop/openviking-made/",
        "files": files,
    }, sort=False)
    print(f"OpenViking sealed {len(files)} files into {outdir}")
    return 0


def main(argv):
    args, meta = parse_meta(argv[1:])
    if args[:1] == ["check"] and len(args) == 5:
        return asyncio.run(check(*args[1:], meta))
    if args[:1] == ["seal-into"] and len(args) == 5:
        return asyncio.run(seal_into(*args[1:]))
    if args[:1] == ["make"] and len(args) == 4:
        return asyncio.run(make(*args[1:], meta))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
