#!/usr/bin/env python3
"""Reference signatures for vikingfs's VolcengineSigner, computed by Volcengine's official Python SDK.

    pip install volcengine
    python3 Tests/vectors/volcengine/make_vectors.py > Tests/vectors/volcengine/signer_vectors.json

Each vector holds the request as the signer receives it (method, path, query pairs, headers, body, X-Date,
credentials, region, service) and what the SDK's `SignerV4.sign` produced: every header after signing, the
Authorization value and the SHA-256 of the canonical request. The KMS vectors build the request with the SDK's own
`Service.prepare_request` for the Encrypt/Decrypt ApiInfo that OpenViking's VolcengineKMSProvider uses, so the header
set is exactly what a real KMS call carries. The Swift tests read the JSON; they do not need the SDK.
"""
import base64
import importlib.metadata
import copy
import json
from collections import OrderedDict

from volcengine.ApiInfo import ApiInfo
from volcengine.auth.SignerV4 import SignerV4
from volcengine.base.Request import Request
from volcengine.base.Service import Service
from volcengine.Credentials import Credentials
from volcengine.ServiceInfo import ServiceInfo

AK = "AKLTYjQ2NWY1ZjAtZmVkYy00ZTdmLWE3ZjQtMjg3NjVhZmFhOTI3"
SK = "TWpVd1l6VTNOVE0zT0RNME5ERTFORGd5TmpZNE5HUTFNMkZoTm1RMk1HSQ=="


def kms_request(host, action, body, scheme="https"):
    """The request OpenViking's KmsService.json() builds, before signing."""
    class Kms(Service):
        def __init__(self):
            creds = Credentials(AK, SK, "kms", "cn-beijing")
            info = ServiceInfo(host, {"Accept": "application/json"}, creds, 30, 30, scheme)
            apis = {
                "Encrypt": ApiInfo("POST", "/", {"Action": "Encrypt", "Version": "2021-02-18"}, {}, {}),
                "Decrypt": ApiInfo("POST", "/", {"Action": "Decrypt", "Version": "2021-02-18"}, {}, {}),
            }
            super().__init__(info, apis)
    service = Kms()
    r = service.prepare_request(service.api_info[action], {})
    r.headers["Content-Type"] = "application/json"
    r.body = body
    return r


def plain_request(method, host, path, query_pairs, headers, body):
    r = Request()
    r.method = method
    r.host = host
    r.path = path
    q = OrderedDict()
    for k, v in query_pairs:
        if k in q:
            q[k] = (q[k] if isinstance(q[k], list) else [q[k]]) + [v]
        else:
            q[k] = v
    r.query = q
    r.headers = OrderedDict(headers)
    r.body = body
    return r


def query_pairs(q):
    pairs = []
    for k, v in q.items():
        for item in (v if isinstance(v, list) else [v]):
            pairs.append([k, item])
    return pairs


def vector(name, request, date, region, service, ak=AK, sk=SK, token=""):
    before = copy.deepcopy(request)
    SignerV4.get_current_format_date = staticmethod(lambda: date)
    creds = Credentials(ak, sk, service, region, token)
    SignerV4.sign(request, creds)
    # Recompute the canonical request hash on the signed request (Authorization is not a signed header).
    md_req = copy.deepcopy(request)
    from volcengine.auth.MetaData import MetaData
    canonical_sha256 = SignerV4.hashed_canonical_request_v4(md_req, MetaData())
    body = before.body if isinstance(before.body, bytes) else before.body.encode("utf-8")
    return {
        "name": name,
        "method": before.method,
        "path": before.path,
        "query": query_pairs(before.query),
        "headers": [[k, v] for k, v in before.headers.items()],
        "body_base64": base64.b64encode(body).decode(),
        "date": date,
        "access_key_id": ak,
        "secret_access_key": sk,
        "session_token": token,
        "region": region,
        "service": service,
        "expected": {
            "headers": [[k, v] for k, v in request.headers.items()],
            "authorization": request.headers["Authorization"],
            "canonical_request_sha256": canonical_sha256,
        },
    }


def main():
    vectors = []
    enc_body = json.dumps({"KeyID": "0f3b5c1e-1a2b-4c3d-9e8f-0123456789ab",
                           "Plaintext": base64.b64encode(bytes(range(32))).decode()})
    vectors.append(vector("kms-encrypt-cn-beijing",
                          kms_request("kms.cn-beijing.volcengineapi.com", "Encrypt", enc_body),
                          "20260102T030405Z", "cn-beijing", "kms"))
    dec_body = json.dumps({"KeyID": "key-2",
                           "CiphertextBlob": base64.b64encode(b"\x00\x01opaque-ciphertext-blob\xff" * 3).decode()})
    vectors.append(vector("kms-decrypt-ap-southeast-1",
                          kms_request("kms.ap-southeast-1.volcengineapi.com", "Decrypt", dec_body),
                          "20251231T235959Z", "ap-southeast-1", "kms"))
    vectors.append(vector("kms-decrypt-loopback-port-kept",
                          kms_request("127.0.0.1:18080", "Decrypt", dec_body, scheme="http"),
                          "20260315T120000Z", "cn-shanghai", "kms"))
    vectors.append(vector("host-port-443-dropped",
                          plain_request("POST", "kms.cn-beijing.volcengineapi.com:443", "/",
                                        [["Action", "Encrypt"], ["Version", "2021-02-18"]],
                                        [["Host", "kms.cn-beijing.volcengineapi.com:443"],
                                         ["Content-Type", "application/json"]], '{"KeyID":"k"}'),
                          "20260102T030405Z", "cn-beijing", "kms"))
    vectors.append(vector("post-without-content-type",
                          plain_request("POST", "open.volcengineapi.com", "/",
                                        [["Action", "ListKeys"], ["Version", "2021-02-18"]],
                                        [["Host", "open.volcengineapi.com"]], "Limit=10&Offset=0"),
                          "20260102T030405Z", "cn-beijing", "kms"))
    vectors.append(vector("get-query-escaping-and-path",
                          plain_request("GET", "example.volcengineapi.com", "/a path/ünï/x+y*~",
                                        [["Zeta", "last"], ["Action", "Describe Things"], ["a", "1/2?3=4&5"],
                                         ["Filter", "b"], ["Filter", "a"], ["Empty", ""], ["Ünïcode", "värde €"]],
                                        [["Host", "example.volcengineapi.com"], ["Accept", "*/*"]], ""),
                          "20240229T000000Z", "cn-guangzhou", "iam"))
    vectors.append(vector("session-token-and-extra-headers",
                          plain_request("PUT", "kms.cn-beijing.volcengineapi.com", "/",
                                        [["Action", "Encrypt"], ["Version", "2021-02-18"]],
                                        [["Host", "kms.cn-beijing.volcengineapi.com"],
                                         ["Content-Type", "application/json; charset=utf-8"],
                                         ["Content-Md5", "1B2M2Y8AsgTpgAMF7PvdJA=="],
                                         ["X-Custom-Trace", "trace value  with spaces"],
                                         ["x-lowercase-not-signed", "v"],
                                         ["User-Agent", "vikingfs"]], '{"KeyID":"k","Plaintext":"AAAA"}'),
                          "20260704T101010Z", "cn-beijing", "kms", token="STS2eyJ0eXBlIjoic2Vzc2lvbiJ9.token"))
    vectors.append(vector("empty-body-post",
                          plain_request("POST", "kms.cn-beijing.volcengineapi.com", "/",
                                        [["Action", "DescribeRegions"], ["Version", "2021-02-18"]],
                                        [["Host", "kms.cn-beijing.volcengineapi.com"],
                                         ["Content-Type", "application/json"]], ""),
                          "20260102T030405Z", "cn-beijing", "kms"))
    vectors.append(vector("other-credentials",
                          kms_request("kms.cn-beijing.volcengineapi.com", "Encrypt",
                                      json.dumps({"KeyID": "k\"quoted\"", "Plaintext": "AQID"})),
                          "20300101T000000Z", "cn-beijing", "kms",
                          ak="AKLTother", sk="a secret with spaces and ünïcode"))
    doc = {
        "generator": "Tests/vectors/volcengine/make_vectors.py",
        "sdk": "volcengine " + importlib.metadata.version("volcengine"),
        "vectors": vectors,
    }
    print(json.dumps(doc, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
