#!/usr/bin/env python3
"""An independent reference of vikingfs's on-disk formats (docs/format.md), written from the spec with the
`cryptography` package. Tests use it to check what the Swift implementation writes, byte for byte.

  vikingfs_ref.py account-key KEYFILE ACCOUNT          print the account key (hex)
  vikingfs_ref.py decrypt KEYFILE ACCOUNT FILE          print the plaintext of a native or OVE1 backing file
  vikingfs_ref.py vectors                               print the known-answer vectors as JSON
"""
import json
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NATIVE_MAGIC = b"VKFS"
OVE1_MAGIC = b"OVE1"
HEADER_LEN = 96
OVERHEAD = 28


def account_key(root: bytes, account: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"openviking-kek-salt-v1",
                info=b"openviking:kek:v1:" + account.encode()).derive(root)


def root_key_id(root: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=8, salt=b"vikingfs-root-key-id-v1", info=b"").derive(root)


def native_seal(root, account, plaintext, file_key, file_id, key_nonce, block_nonces, block_shift=12):
    prefix = NATIVE_MAGIC + bytes([1, block_shift]) + struct.pack(">H", HEADER_LEN) + b"\0" * 4
    prefix += file_id + root_key_id(root) + key_nonce
    wrapped = AESGCM(account_key(root, account)).encrypt(key_nonce, file_key, prefix + account.encode())
    out = prefix + wrapped
    block = 1 << block_shift
    for index in range((len(plaintext) + block - 1) // block):
        nonce = block_nonces[index]
        chunk = plaintext[index * block:(index + 1) * block]
        out += nonce + AESGCM(file_key).encrypt(nonce, chunk, file_id + struct.pack(">Q", index))
    return out


def native_open(root, account, data):
    assert data[:4] == NATIVE_MAGIC and data[4] == 1, "not a VKFS v1 file"
    shift = data[5]
    assert struct.unpack(">H", data[6:8])[0] == HEADER_LEN
    file_id, key_id, key_nonce, wrapped = data[12:28], data[28:36], data[36:48], data[48:96]
    assert key_id == root_key_id(root), "sealed under another root key"
    file_key = AESGCM(account_key(root, account)).decrypt(key_nonce, wrapped, data[:48] + account.encode())
    block, stored = 1 << shift, (1 << shift) + OVERHEAD
    out, body, index = b"", data[HEADER_LEN:], 0
    while body:
        chunk, body = body[:stored], body[stored:]
        if chunk == b"\0" * len(chunk):
            out += b"\0" * (len(chunk) - OVERHEAD)
        else:
            out += AESGCM(file_key).decrypt(chunk[:12], chunk[12:], file_id + struct.pack(">Q", index))
        index += 1
    return out


def ove1_open(root, account, data):
    assert data[:4] == OVE1_MAGIC and data[4] == 1
    wl, kl, dl = struct.unpack(">HHH", data[6:12])
    at = 12
    wrapped, key_iv, data_iv = data[at:at + wl], data[at + wl:at + wl + kl], data[at + wl + kl:at + wl + kl + dl]
    file_key = AESGCM(account_key(root, account)).decrypt(key_iv, wrapped, None)
    return AESGCM(file_key).decrypt(data_iv, data[at + wl + kl + dl:], None)


def read_root(path):
    return bytes.fromhex(open(path).read().strip())


def vectors():
    root = bytes(range(32))
    file_key = bytes(range(0x40, 0x60))
    file_id = bytes(range(0xa0, 0xb0))
    key_nonce = bytes(range(0xc0, 0xcc))
    nonces = [bytes([0xd0 + i] * 12) for i in range(3)]
    plaintext = bytes((i * 7 + 3) % 256 for i in range(4096 * 2 + 100))
    cases = []
    for account, text in (("acme", b""), ("acme", b"hello, vikingfs\n"), ("_system", plaintext)):
        sealed = native_seal(root, account, text, file_key, file_id, key_nonce, nonces)
        assert native_open(root, account, sealed) == text
        cases.append({"account": account, "plaintext_hex": text.hex(), "sealed_hex": sealed.hex()})
    return {
        "root_key_hex": root.hex(), "root_key_id_hex": root_key_id(root).hex(), "file_key_hex": file_key.hex(),
        "file_id_hex": file_id.hex(), "key_nonce_hex": key_nonce.hex(), "block_nonces_hex": [n.hex() for n in nonces],
        "block_shift": 12, "cases": cases,
    }


def main(argv):
    if argv[1:2] == ["account-key"]:
        print(account_key(read_root(argv[2]), argv[3]).hex())
    elif argv[1:2] == ["decrypt"]:
        data = open(argv[4], "rb").read()
        opener = native_open if data[:4] == NATIVE_MAGIC else ove1_open
        sys.stdout.buffer.write(opener(read_root(argv[2]), argv[3], data))
    elif argv[1:2] == ["vectors"]:
        print(json.dumps(vectors(), indent=1))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
