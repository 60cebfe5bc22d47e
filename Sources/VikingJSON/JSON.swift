/// A JSON value that keeps object members in their order and numbers as written, so a document can be read,
/// changed in one place and written back without disturbing anything else. Used for `ov.conf`, the Vault and KMS
/// answers, `users.json` and the admin command's `--json` output.
public indirect enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    /// The number's text exactly as it appeared (or as written for output).
    case number(String)
    case string(String)
    case array([JSON])
    case object([Member])

    public struct Member: Equatable, Sendable {
        public var key: String
        public var value: JSON
        public init(_ key: String, _ value: JSON) {
            self.key = key
            self.value = value
        }
    }

    public static func int<I: BinaryInteger>(_ value: I) -> JSON { .number(String(value)) }

    /// The value of the last member named `key` (as Python's `json` keeps the last of duplicate keys).
    public subscript(key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.last { $0.key == key }?.value
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The members when this is an object.
    public var members: [Member]? {
        if case .object(let m) = self { return m }
        return nil
    }

    /// The number's value when this is a number.
    public var doubleValue: Double? {
        if case .number(let text) = self { return Double(text) }
        return nil
    }

    /// "an object", "a string"…, for messages.
    public var typeName: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case .string: return "a string"
        case .number: return "a number"
        case .bool: return "a boolean"
        case .null: return "null"
        }
    }

    // MARK: serializing

    /// Compact text in Python's `json.dumps` default style (`", "` and `": "` separators, non-ASCII escaped),
    /// which is how OpenViking writes its JSON files.
    public func serialized() -> String {
        var out = ""
        write(to: &out)
        return out
    }

    /// `s` as a JSON string literal, quotes included.
    public static func quoted(_ s: String) -> String {
        var out = ""
        writeString(s, to: &out)
        return out
    }

    private func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n): out += n
        case .string(let s): JSON.writeString(s, to: &out)
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += ", " }
                item.write(to: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (i, m) in members.enumerated() {
                if i > 0 { out += ", " }
                JSON.writeString(m.key, to: &out)
                out += ": "
                m.value.write(to: &out)
            }
            out += "}"
        }
    }

    private static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value >= 0x20 && scalar.value < 0x7f {
                    out.unicodeScalars.append(scalar)
                } else if scalar.value <= 0xffff {
                    out += "\\u" + hex4(scalar.value)
                } else {
                    let v = scalar.value - 0x10000
                    out += "\\u" + hex4(0xd800 + (v >> 10)) + "\\u" + hex4(0xdc00 + (v & 0x3ff))
                }
            }
        }
        out += "\""
    }

    private static func hex4(_ v: UInt32) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(v >> 12 & 0xf)], digits[Int(v >> 8 & 0xf)], digits[Int(v >> 4 & 0xf)], digits[Int(v & 0xf)]])
    }

    // MARK: parsing

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        /// Byte offset of the problem in the document.
        public let offset: Int
        /// 1-based line and column (in characters) of the problem.
        public let line: Int
        public let column: Int
        public let reason: String
        public var description: String { "\(reason) at line \(line), column \(column)" }
    }

    /// Parses one JSON document (RFC 8259; surrounding whitespace allowed, nothing else). With
    /// `allowingByteOrderMark`, a leading UTF-8 byte order mark is skipped, as Python's `json` does with `utf-8-sig`.
    public static func parse(_ bytes: [UInt8], allowingByteOrderMark: Bool = false) throws(ParseError) -> JSON {
        var parser = Parser(bytes: bytes)
        if allowingByteOrderMark && bytes.starts(with: [0xEF, 0xBB, 0xBF]) { parser.at = 3 }
        parser.skipWhitespace()
        guard parser.at < bytes.count else { throw parser.error("empty document") }
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.at == bytes.count else { throw parser.error("unexpected text after the JSON value") }
        return value
    }

    public static func parse(_ text: String) throws(ParseError) -> JSON { try parse(Array(text.utf8)) }

    private struct Parser {
        let bytes: [UInt8]
        var at = 0
        static let maxDepth = 256

        func error(_ reason: String) -> ParseError {
            var line = 1, column = 1
            for b in bytes[0..<min(at, bytes.count)] {
                if b == 0x0a { line += 1; column = 1 } else if b & 0xC0 != 0x80 { column += 1 }
            }
            return ParseError(offset: at, line: line, column: column, reason: reason)
        }

        mutating func skipWhitespace() {
            while at < bytes.count, isWhitespace(bytes[at]) { at += 1 }
        }

        mutating func literal(_ word: String) throws(ParseError) {
            let w = Array(word.utf8)
            guard at + w.count <= bytes.count, bytes[at..<at + w.count].elementsEqual(w) else { throw error("invalid literal") }
            at += w.count
        }

        mutating func value(depth: Int) throws(ParseError) -> JSON {
            guard depth < Parser.maxDepth else { throw error("nesting too deep") }
            guard at < bytes.count else { throw error("unexpected end of input") }
            switch bytes[at] {
            case UInt8(ascii: "{"):
                at += 1
                var members: [Member] = []
                skipWhitespace()
                if at < bytes.count, bytes[at] == UInt8(ascii: "}") { at += 1; return .object(members) }
                while true {
                    skipWhitespace()
                    guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                    let key = try string()
                    skipWhitespace()
                    guard at < bytes.count, bytes[at] == UInt8(ascii: ":") else { throw error("expected ':' after key \"\(key)\"") }
                    at += 1
                    skipWhitespace()
                    members.append(Member(key, try value(depth: depth + 1)))
                    skipWhitespace()
                    guard at < bytes.count else { throw error("unterminated object") }
                    if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
                    if bytes[at] == UInt8(ascii: "}") { at += 1; return .object(members) }
                    throw error("expected ',' or '}' in object")
                }
            case UInt8(ascii: "["):
                at += 1
                var items: [JSON] = []
                skipWhitespace()
                if at < bytes.count, bytes[at] == UInt8(ascii: "]") { at += 1; return .array(items) }
                while true {
                    skipWhitespace()
                    items.append(try value(depth: depth + 1))
                    skipWhitespace()
                    guard at < bytes.count else { throw error("unterminated array") }
                    if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
                    if bytes[at] == UInt8(ascii: "]") { at += 1; return .array(items) }
                    throw error("expected ',' or ']' in array")
                }
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            default: throw error("unexpected character '\(Character(Unicode.Scalar(bytes[at])))'")
            }
        }

        /// A number as RFC 8259 spells it: no leading zeros, no bare '.', digits after '.' and 'e'.
        mutating func number() throws(ParseError) -> String {
            let start = at
            func digits(_ p: inout Parser) -> Int {
                let s = p.at
                while p.at < p.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(p.bytes[p.at]) { p.at += 1 }
                return p.at - s
            }
            if bytes[at] == UInt8(ascii: "-") { at += 1 }
            if at < bytes.count, bytes[at] == UInt8(ascii: "0") {
                at += 1
            } else {
                guard digits(&self) > 0 else { throw error("expected digits in number") }
            }
            if at < bytes.count, bytes[at] == UInt8(ascii: ".") {
                at += 1
                guard digits(&self) > 0 else { throw error("expected digits after '.' in number") }
            }
            if at < bytes.count, bytes[at] == UInt8(ascii: "e") || bytes[at] == UInt8(ascii: "E") {
                at += 1
                if at < bytes.count, bytes[at] == UInt8(ascii: "+") || bytes[at] == UInt8(ascii: "-") { at += 1 }
                guard digits(&self) > 0 else { throw error("expected exponent digits in number") }
            }
            return String(decoding: bytes[start..<at], as: UTF8.self)
        }

        mutating func hex4() throws(ParseError) -> UInt32 {
            guard at + 4 <= bytes.count else { throw error("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[at]
                let d: UInt32
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
                default: throw error("invalid \\u escape")
                }
                v = v << 4 | d
                at += 1
            }
            return v
        }

        mutating func string() throws(ParseError) -> String {
            at += 1  // opening quote
            var out: [UInt8] = []
            while true {
                guard at < bytes.count else { throw error("unterminated string") }
                let c = bytes[at]
                if c == UInt8(ascii: "\"") { at += 1; break }
                if c < 0x20 { throw error("control character in string") }
                if c != UInt8(ascii: "\\") { out.append(c); at += 1; continue }
                at += 1
                guard at < bytes.count else { throw error("unterminated escape") }
                let e = bytes[at]
                at += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5c)
                case UInt8(ascii: "/"): out.append(0x2f)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0c)
                case UInt8(ascii: "n"): out.append(0x0a)
                case UInt8(ascii: "r"): out.append(0x0d)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var v = try hex4()
                    if (0xd800...0xdbff).contains(v) {
                        // A high surrogate must be followed by an escaped low one.
                        guard at + 6 <= bytes.count, bytes[at] == UInt8(ascii: "\\"), bytes[at + 1] == UInt8(ascii: "u") else {
                            throw error("unpaired surrogate")
                        }
                        at += 2
                        let low = try hex4()
                        guard (0xdc00...0xdfff).contains(low) else { throw error("invalid surrogate pair") }
                        v = 0x10000 + ((v - 0xd800) << 10) + (low - 0xdc00)
                    } else if (0xdc00...0xdfff).contains(v) {
                        throw error("unpaired surrogate")
                    }
                    guard let scalar = Unicode.Scalar(v) else { throw error("invalid \\u escape") }
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default:
                    throw error("invalid escape")
                }
            }
            guard let s = String(validating: out, as: UTF8.self) else { throw error("invalid UTF-8 in string") }
            return s
        }
    }

    // MARK: secret fields

    /// Finds the string value of `"field": "..."` in raw JSON bytes without building Swift strings, so a secret
    /// value (a base64 plaintext) can be decoded straight into a secure buffer. Returns the byte range of the
    /// value. Meant for flat, known responses; values holding escapes other than `\/` are rejected.
    public static func stringFieldRange(_ json: UnsafeRawBufferPointer, field: String) -> Range<Int>? {
        let needle = Array("\"\(field)\"".utf8)
        guard json.count >= needle.count else { return nil }
        var i = 0
        outer: while i + needle.count <= json.count {
            for j in 0..<needle.count where json[i + j] != needle[j] { i += 1; continue outer }
            var k = i + needle.count
            while k < json.count && isWhitespace(json[k]) { k += 1 }
            guard k < json.count, json[k] == UInt8(ascii: ":") else { i += 1; continue }
            k += 1
            while k < json.count && isWhitespace(json[k]) { k += 1 }
            guard k < json.count, json[k] == UInt8(ascii: "\"") else { return nil }
            let start = k + 1
            var end = start
            while end < json.count && json[end] != UInt8(ascii: "\"") {
                if json[end] == UInt8(ascii: "\\") { return nil }
                end += 1
            }
            guard end < json.count else { return nil }
            return start..<end
        }
        return nil
    }
}

private func isWhitespace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0a || b == 0x0d }
