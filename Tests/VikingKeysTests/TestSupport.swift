import Foundation
import Testing
import VikingCrypto
@testable import VikingKeys

/// The repository root, from this file's path (Tests/VikingKeysTests/TestSupport.swift).
func repositoryRoot(_ file: String = #filePath) -> String {
    var parts = file.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}

func env(_ name: String) -> String? {
    guard let v = getenv(name) else { return nil }
    let s = String(cString: v)
    return s.isEmpty ? nil : s
}

/// A fresh private temporary directory, removed by the caller with `removeTree`.
func makeTempDir() -> String {
    var template = Array("/tmp/vikingkeys-test-XXXXXX".utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(p != nil)
    return String(cString: p!)
}

func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

func writeFile(_ path: String, _ text: String, mode: mode_t = 0o600) {
    FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    chmod(path, mode)
}

func keyErrorMessage(_ body: () throws -> Void) -> String? {
    do { try body(); return nil } catch { return (error as? KeyError)?.description ?? "\(error)" }
}

func keyError(_ body: () throws -> Void) -> KeyError? {
    do { try body(); return nil } catch { return error as? KeyError }
}

/// A loopback port nothing listens on.
func closedPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    close(fd)
    return Int(UInt16(bigEndian: addr.sin_port))
}

struct TestRequest: Sendable {
    var method: String
    var target: String
    var headers: [(String, String)]
    var body: [UInt8]
    func header(_ name: String) -> String? { headers.last { $0.0.lowercased() == name.lowercased() }?.1 }
    var path: String { String(target.split(separator: "?", maxSplits: 1).first ?? "") }
    var query: [(String, String)] {
        let parts = target.split(separator: "?", maxSplits: 1)
        guard parts.count == 2 else { return [] }
        return parts[1].split(separator: "&").map { item in
            let kv = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(kv[0]).removingPercentEncoding ?? String(kv[0]),
                    kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : "")
        }
    }
}

enum TestReply: Sendable {
    case json(Int, String)
    case chunkedJSON(Int, String)
    /// Never answers (the connection stays open until the server stops or `seconds` pass).
    case hang(seconds: Double)
}

/// A tiny loopback HTTP/1.1 server for failure-path tests (retries, timeouts, error bodies).
final class TestHTTPServer: @unchecked Sendable {
    let port: Int
    private let fd: Int32
    private let handler: @Sendable (TestRequest) -> TestReply
    private let lock = NSLock()
    private var _requests: [TestRequest] = []
    private var stopped = false

    var requests: [TestRequest] { lock.lock(); defer { lock.unlock() }; return _requests }
    var address: String { "http://127.0.0.1:\(port)" }

    init(_ handler: @escaping @Sendable (TestRequest) -> TestReply) {
        self.handler = handler
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 16)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.fd = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    func stop() {
        lock.lock(); stopped = true; lock.unlock()
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    private func acceptLoop() {
        while !isStopped {
            let client = accept(fd, nil, nil)
            if client < 0 { if isStopped { return }; continue }
            Thread { [self] in serve(client) }.start()
        }
    }

    private func serve(_ client: Int32) {
        defer { close(client) }
        var raw = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        var request: TestRequest? = nil
        while request == nil {
            let n = recv(client, &buffer, buffer.count, 0)
            if n <= 0 { return }
            raw += buffer[0..<n]
            request = parse(raw)
        }
        lock.lock(); _requests.append(request!); lock.unlock()
        let reply = handler(request!)
        switch reply {
        case .hang(let seconds):
            let end = Date().addingTimeInterval(seconds)
            while Date() < end && !isStopped { usleep(50_000) }
        case .json(let status, let body):
            let bytes = Array(body.utf8)
            let head = "HTTP/1.1 \(status) X\r\nContent-Type: application/json\r\nContent-Length: \(bytes.count)\r\nConnection: close\r\n\r\n"
            _ = send(client, Array(head.utf8) + bytes, head.utf8.count + bytes.count, Int32(MSG_NOSIGNAL))
        case .chunkedJSON(let status, let body):
            let bytes = Array(body.utf8)
            var out = Array("HTTP/1.1 \(status) X\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
            var i = 0
            while i < bytes.count {
                let n = min(7, bytes.count - i)
                out += Array("\(String(n, radix: 16))\r\n".utf8) + bytes[i..<i + n] + Array("\r\n".utf8)
                i += n
            }
            out += Array("0\r\n\r\n".utf8)
            _ = send(client, out, out.count, Int32(MSG_NOSIGNAL))
        }
    }

    private func parse(_ raw: [UInt8]) -> TestRequest? {
        let marker: [UInt8] = [13, 10, 13, 10]
        guard raw.count >= 4, let end = (0...(raw.count - 4)).first(where: { Array(raw[$0..<$0 + 4]) == marker }) else { return nil }
        let head = String(decoding: raw[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let first = head[0].split(separator: " ")
        var headers: [(String, String)] = []
        for line in head.dropFirst() {
            guard let c = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<c]), line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)))
        }
        let length = Int(headers.last { $0.0.lowercased() == "content-length" }?.1 ?? "0") ?? 0
        guard raw.count >= end + 4 + length else { return nil }
        return TestRequest(method: String(first[0]), target: String(first[1]), headers: headers,
                           body: Array(raw[(end + 4)..<(end + 4 + length)]))
    }
}
