#!/usr/bin/env python3
"""Cross-check: Argon2id hashes made by vikingfs (Swift, APIKeyHasher.hash) verified by Python argon2-cffi.

Usage (run once after regenerating the fixture; needs `pip install argon2-cffi`):

    VIKINGFS_WRITE_APIKEY_FIXTURE=1 swift test --filter VikingAPIKeysTests.VikingfsMadeHashTests/writeFixture
    python3 Tests/VikingAPIKeysTests/crosscheck.py

For every entry of vikingfs-made-hashes.json (beside this script) it checks that
  1. argon2.PasswordHasher().verify(hash, key) succeeds (the way OpenViking verifies keys);
  2. the hash carries OpenViking's parameters (argon2id, v=19, m=65536, t=3, p=2, 16-byte salt, 32-byte hash),
     so a PasswordHasher configured like OpenViking's reports check_needs_rehash() == False;
  3. a wrong key is rejected with VerifyMismatchError;
  4. argon2.low_level.hash_secret_raw over the same key and salt gives byte-for-byte the same raw hash.
Exits non-zero on any failure.
"""
import base64
import importlib.metadata
import json
import pathlib
import sys

import argon2
from argon2.exceptions import VerifyMismatchError
from argon2.low_level import Type, hash_secret_raw

HERE = pathlib.Path(__file__).resolve().parent
FIXTURE = HERE / "vikingfs-made-hashes.json"

OPENVIKING = argon2.PasswordHasher(time_cost=3, memory_cost=65536, parallelism=2, hash_len=32, salt_len=16,
                                   type=Type.ID)


def b64decode_unpadded(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def wrong(key: bytes) -> bytes:
    return b"a" if not key else key[:-1] + bytes([key[-1] ^ 1])


def main() -> int:
    entries = json.loads(FIXTURE.read_text(encoding="utf-8"))
    print(f"argon2-cffi {importlib.metadata.version('argon2-cffi')}, "
          f"argon2-cffi-bindings {importlib.metadata.version('argon2-cffi-bindings')}")
    print(f"checking {len(entries)} vikingfs-made hashes from {FIXTURE.name}")
    failures = 0
    for entry in entries:
        key, phc = entry["key"], entry["hash"]
        label = repr(key if len(key) <= 24 else key[:21] + "...")
        problems = []
        try:
            OPENVIKING.verify(phc, key)
        except Exception as exc:  # noqa: BLE001 - report anything
            problems.append(f"verify failed: {exc!r}")
        params = argon2.extract_parameters(phc)
        expected = argon2.Parameters(type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=3,
                                     memory_cost=65536, parallelism=2)
        if params != expected:
            problems.append(f"parameters {params} != {expected}")
        if OPENVIKING.check_needs_rehash(phc):
            problems.append("check_needs_rehash() is True")
        try:
            OPENVIKING.verify(phc, wrong(key.encode("utf-8")))
            problems.append("wrong key verified")
        except VerifyMismatchError:
            pass
        _, variant, version, _, salt_b64, hash_b64 = phc.split("$")
        raw = hash_secret_raw(key.encode("utf-8"), b64decode_unpadded(salt_b64), time_cost=3, memory_cost=65536,
                              parallelism=2, hash_len=32, type=Type.ID, version=19)
        if raw != b64decode_unpadded(hash_b64):
            problems.append("raw hash differs from hash_secret_raw")
        status = "OK  " if not problems else "FAIL"
        print(f"{status} {label:30} {phc}")
        for p in problems:
            print(f"     {p}")
        failures += bool(problems)
    print(f"{len(entries) - failures}/{len(entries)} verified by argon2-cffi; {failures} failures")
    return 1 if failures or not entries else 0


if __name__ == "__main__":
    sys.exit(main())
