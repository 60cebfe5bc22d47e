#!/usr/bin/env python3
"""A loopback stand-in for Volcengine KMS (Encrypt/Decrypt, version 2021-02-18) for vikingfs's integration tests.

Every request's signature is checked by recomputing it with the official SDK's `volcengine.auth.SignerV4` (the same
code that signs OpenViking's real KMS calls), so a request that passes here is one the real service would accept.
Answers mimic KMS: {"ResponseMetadata": {...}, "Result": {...}}, errors under ResponseMetadata.Error.

Key IDs that select a behaviour:
  test-key     normal Encrypt/Decrypt
  error-key    answers 400 with an error (like a disabled key)
  slow-key     answers only after --slow seconds (for client timeouts)
  flaky-key    answers 500 to the first request, then works (for retries)
anything else  404 NotFound

    python3 kms_server.py --port-file PATH --access-key AK --secret-key SK [--region cn-beijing]
GET /stats returns counters as JSON. The server stops on SIGTERM.
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
import uuid
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from volcengine.auth.SignerV4 import SignerV4
from volcengine.base.Request import Request
from volcengine.Credentials import Credentials

MAGIC = b"FAKEKMS1"
STATS = {"requests": 0, "verified": 0, "bad_signature": 0, "encrypt": 0, "decrypt": 0}
LOCK = threading.Lock()
FLAKY_SEEN = set()


def keystream(secret, nonce, n):
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(secret + nonce + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:n]


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-kms/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("kms_server: " + (fmt % args) + "\n")

    def reply(self, status, action, result=None, error=None):
        meta = OrderedDict([("RequestId", str(uuid.uuid4())), ("Action", action), ("Version", "2021-02-18"),
                            ("Service", "kms"), ("Region", self.server.region)])
        if error:
            meta["Error"] = OrderedDict([("CodeN", error[0]), ("Code", error[1]), ("Message", error[2])])
        doc = OrderedDict([("ResponseMetadata", meta)])
        if result is not None:
            doc["Result"] = result
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                body = json.dumps(STATS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.reply(404, "", error=(100404, "NotFound", "no such path"))

    def verify(self, body):
        """Recomputes the Authorization header with the SDK's SignerV4; returns an error tuple or None."""
        auth = self.headers.get("Authorization", "")
        xdate = self.headers.get("X-Date", "")
        if not auth or not xdate:
            return (100009, "MissingAuthenticationToken", "the request is not signed")
        try:
            cred = auth.split("Credential=", 1)[1].split(",", 1)[0]
            ak = cred.split("/", 1)[0]
        except IndexError:
            return (100010, "InvalidAuthorization", "malformed Authorization header")
        if ak != self.server.access_key:
            return (100010, "InvalidAccessKey", "the access key %s does not exist" % ak)
        try:
            signed_at = datetime.datetime.strptime(xdate, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            return (100010, "InvalidTimestamp", "bad X-Date")
        if abs((datetime.datetime.now(datetime.timezone.utc) - signed_at).total_seconds()) > 900:
            return (100010, "SignatureExpired", "X-Date is more than 15 minutes off")
        parts = urlsplit(self.path)
        r = Request()
        r.method = self.command
        r.path = parts.path
        r.query = OrderedDict(parse_qsl(parts.query, keep_blank_values=True))
        r.headers = OrderedDict((k, v) for k, v in self.headers.items() if k not in ("Authorization",))
        r.body = body
        SignerV4.get_current_format_date = staticmethod(lambda: xdate)
        SignerV4.sign(r, Credentials(self.server.access_key, self.server.secret_key, "kms", self.server.region,
                                     self.headers.get("X-Security-Token", "")))
        if not hmac.compare_digest(r.headers["Authorization"], auth):
            return (100011, "SignatureDoesNotMatch", "the request signature does not match")
        if self.headers.get("X-Content-Sha256") != hashlib.sha256(body).hexdigest():
            return (100011, "SignatureDoesNotMatch", "X-Content-Sha256 does not match the body")
        return None

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with LOCK:
            STATS["requests"] += 1
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        action = query.get("Action", "")
        problem = self.verify(body)
        if problem:
            with LOCK:
                STATS["bad_signature"] += 1
            return self.reply(401, action, error=problem)
        with LOCK:
            STATS["verified"] += 1
        if query.get("Version") != "2021-02-18" or action not in ("Encrypt", "Decrypt"):
            return self.reply(400, action, error=(100008, "InvalidActionOrVersion", "unsupported action or version"))
        try:
            doc = json.loads(body)
        except ValueError:
            return self.reply(400, action, error=(100001, "InvalidParameter", "the body is not JSON"))
        key_id = doc.get("KeyID", "")
        if key_id == "slow-key":
            time.sleep(self.server.slow)
        if key_id == "error-key":
            return self.reply(400, action, error=(100019, "KeyDisabled", "the key %s is disabled" % key_id))
        if key_id == "flaky-key":
            with LOCK:
                first = (action, doc.get("Plaintext") or doc.get("CiphertextBlob")) not in FLAKY_SEEN
                FLAKY_SEEN.add((action, doc.get("Plaintext") or doc.get("CiphertextBlob")))
            if first:
                return self.reply(500, action, error=(100500, "InternalError", "try again"))
        if key_id not in ("test-key", "slow-key", "flaky-key"):
            return self.reply(404, action, error=(100404, "KeyNotFound", "the key %s does not exist" % key_id))
        secret = hashlib.sha256(b"fake-kms-master:" + key_id.encode()).digest()
        if action == "Encrypt":
            with LOCK:
                STATS["encrypt"] += 1
            plaintext = base64.b64decode(doc["Plaintext"])
            nonce = secrets.token_bytes(16)
            kid = key_id.encode()
            blob = MAGIC + bytes([len(kid)]) + kid + nonce + bytes(
                a ^ b for a, b in zip(plaintext, keystream(secret, nonce, len(plaintext))))
            tag = hmac.new(secret, blob, hashlib.sha256).digest()[:16]
            return self.reply(200, action, result={"CiphertextBlob": base64.b64encode(blob + tag).decode(),
                                                   "KeyID": key_id})
        with LOCK:
            STATS["decrypt"] += 1
        try:
            raw = base64.b64decode(doc["CiphertextBlob"], validate=True)
        except Exception:
            return self.reply(400, action, error=(100001, "InvalidParameter", "CiphertextBlob is not base64"))
        blob, tag = raw[:-16], raw[-16:]
        if not blob.startswith(MAGIC) or not hmac.compare_digest(hmac.new(secret, blob, hashlib.sha256).digest()[:16], tag):
            return self.reply(400, action, error=(100020, "InvalidCiphertext", "the ciphertext is invalid for key %s" % key_id))
        n = blob[len(MAGIC)]
        rest = blob[len(MAGIC) + 1 + n:]
        nonce, ct = rest[:16], rest[16:]
        plaintext = bytes(a ^ b for a, b in zip(ct, keystream(secret, nonce, len(ct))))
        return self.reply(200, action, result={"Plaintext": base64.b64encode(plaintext).decode(), "KeyID": key_id})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--access-key", required=True)
    p.add_argument("--secret-key-file", required=True)
    p.add_argument("--region", default="cn-beijing")
    p.add_argument("--slow", type=float, default=5.0)
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.access_key = a.access_key
    with open(a.secret_key_file) as f:
        server.secret_key = f.read().strip()
    server.region = a.region
    server.slow = a.slow
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, a.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
