/// An Argon2id hash in PHC string format, as written by argon2-cffi (and libargon2's encoder):
///
///     $argon2id$v=19$m=65536,t=3,p=2$<salt, base64 without padding>$<hash, base64 without padding>
///
/// Parsing is strict and bounded: only argon2id version 19 with exactly the parameters `m`, `t`, `p` in that
/// order, plain decimal numbers without leading zeros, canonical base64, and parameters inside `Limits` — so a
/// hostile or corrupted users.json cannot make the verifier allocate more than 1 GiB or run for minutes.
/// Parsing itself allocates nothing beyond the (length-capped) input.
public struct PHCString: Equatable, Sendable, CustomStringConvertible {
    /// The only variant accepted: `argon2id`.
    public static let supportedVariant = "argon2id"
    /// The only version accepted: 19 (0x13), the one libargon2's `argon2id_hash_raw` computes.
    public static let supportedVersion = 19

    /// Accepted ranges. Generous against OpenViking's m=65536 (64 MiB), t=3, p=2, 16-byte salt, 32-byte hash.
    public enum Limits {
        /// Memory in KiB: libargon2's minimum of 8 up to 1 GiB (16x OpenViking's). Also `m >= 8 * p` must hold.
        public static let memoryKiB: ClosedRange<Int> = 8...(1 << 20)
        /// Passes over the memory: at 1 GiB and t=32 one verification still takes tens of seconds, not hours.
        public static let iterations: ClosedRange<Int> = 1...32
        public static let parallelism: ClosedRange<Int> = 1...64
        /// Salt bytes: libargon2's minimum of 8 up to 64.
        public static let saltLength: ClosedRange<Int> = 8...64
        /// Hash bytes: libargon2's minimum of 4 up to 64.
        public static let hashLength: ClosedRange<Int> = 4...64
        /// Longest PHC string looked at (the above at their maxima are well under 200 characters).
        public static let encodedLength = 512
    }

    /// The algorithm name, always `argon2id`.
    public let variant: String
    /// The Argon2 version, always 19 (0x13).
    public let version: Int
    /// Memory cost in KiB.
    public let m: Int
    /// Time cost (iterations).
    public let t: Int
    /// Parallelism (lanes).
    public let p: Int
    public let salt: [UInt8]
    public let hash: [UInt8]

    /// Builds a PHC value from its parts, checking them as `init(parsing:)` does.
    public init(variant: String = PHCString.supportedVariant, version: Int = PHCString.supportedVersion,
                m: Int, t: Int, p: Int, salt: [UInt8], hash: [UInt8]) throws {
        guard variant == Self.supportedVariant else { throw APIKeyError.unsupportedVariant(variant) }
        guard version == Self.supportedVersion else { throw APIKeyError.unsupportedVersion(String(version)) }
        try Self.check("memory m (KiB)", m, Limits.memoryKiB)
        try Self.check("iterations t", t, Limits.iterations)
        try Self.check("parallelism p", p, Limits.parallelism)
        // libargon2 needs at least 8 KiB (two blocks per sync point) per lane.
        try Self.check("memory m (KiB; at least 8 per lane with p=\(p))", m, (8 * p)...Limits.memoryKiB.upperBound)
        try Self.check("salt length (bytes)", salt.count, Limits.saltLength)
        try Self.check("hash length (bytes)", hash.count, Limits.hashLength)
        self.variant = variant
        self.version = version
        self.m = m
        self.t = t
        self.p = p
        self.salt = salt
        self.hash = hash
    }

    /// Parses a PHC string; throws `APIKeyError` saying what is wrong with it.
    public init(parsing encoded: String) throws {
        let bytes = Array(encoded.utf8)
        guard !bytes.isEmpty else { throw APIKeyError.malformed("empty string") }
        guard bytes.count <= Limits.encodedLength else {
            throw APIKeyError.malformed("\(bytes.count) bytes long, longer than the \(Limits.encodedLength) accepted")
        }
        guard bytes[0] == UInt8(ascii: "$") else { throw APIKeyError.malformed("does not start with '$'") }
        let fields = bytes.dropFirst().split(separator: UInt8(ascii: "$"), omittingEmptySubsequences: false)

        // $<variant>
        let variant = Self.text(fields[0])   // split always yields at least one field
        guard !variant.isEmpty else { throw APIKeyError.missingField("algorithm name") }
        guard variant == Self.supportedVariant else { throw APIKeyError.unsupportedVariant(variant) }

        // $v=<version>: argon2-cffi always writes it; hashes without it are Argon2 1.0 (0x10).
        guard fields.count >= 2, !fields[1].isEmpty else { throw APIKeyError.missingField("version (v=19)") }
        let versionField = fields[1]
        guard versionField.starts(with: Array("v=".utf8)) else {
            if versionField.starts(with: Array("m=".utf8)) {
                throw APIKeyError.unsupportedVersion("none (Argon2 1.0, 0x10)")
            }
            throw APIKeyError.missingField("version (v=19)")
        }
        let versionText = versionField.dropFirst(2)
        guard let version = Self.decimal(versionText) else {
            throw APIKeyError.invalidParameter(name: "v", value: Self.text(versionText))
        }
        guard version == Self.supportedVersion else { throw APIKeyError.unsupportedVersion(Self.text(versionText)) }

        // $m=<m>,t=<t>,p=<p>
        guard fields.count >= 3, !fields[2].isEmpty else { throw APIKeyError.missingField("parameters (m=,t=,p=)") }
        let parameters = fields[2].split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        var values = [Int]()
        for (index, name) in ["m", "t", "p"].enumerated() {
            guard index < parameters.count else { throw APIKeyError.missingField("parameter \(name)") }
            let pair = parameters[index]
            let prefix = Array("\(name)=".utf8)
            guard pair.starts(with: prefix) else {
                throw APIKeyError.malformed("expected parameter \(name)= at position \(index + 1) of m=,t=,p=, found '\(Self.text(pair))'")
            }
            let valueText = pair.dropFirst(prefix.count)
            guard let value = Self.decimal(valueText) else {
                throw APIKeyError.invalidParameter(name: name, value: Self.text(valueText))
            }
            guard value <= UInt32.max else {
                let (label, range) = [("memory m (KiB)", Limits.memoryKiB), ("iterations t", Limits.iterations),
                                      ("parallelism p", Limits.parallelism)][index]
                throw APIKeyError.parameterOutOfRange(name: label, value: Self.text(valueText), allowed: range)
            }
            values.append(value)
        }
        guard parameters.count == 3 else {
            throw APIKeyError.malformed("unsupported extra parameter '\(Self.text(parameters[3]))' (only m, t, p are accepted)")
        }

        // $<salt>$<hash>
        guard fields.count >= 4, !fields[3].isEmpty else { throw APIKeyError.missingField("salt") }
        guard fields.count >= 5, !fields[4].isEmpty else { throw APIKeyError.missingField("hash") }
        guard fields.count == 5 else { throw APIKeyError.malformed("unexpected '$' after the hash") }
        guard let salt = PHCBase64.decode(fields[3]) else { throw APIKeyError.invalidBase64(field: "salt") }
        guard let hash = PHCBase64.decode(fields[4]) else { throw APIKeyError.invalidBase64(field: "hash") }

        try self.init(variant: variant, version: version, m: values[0], t: values[1], p: values[2], salt: salt, hash: hash)
    }

    /// The PHC string, in the exact form argon2-cffi writes.
    public var encoded: String {
        "$\(variant)$v=\(version)$m=\(m),t=\(t),p=\(p)$\(PHCBase64.encode(salt))$\(PHCBase64.encode(hash))"
    }

    public var description: String { encoded }

    // MARK: helpers

    private static func check(_ name: String, _ value: Int, _ allowed: ClosedRange<Int>) throws {
        guard allowed.contains(value) else {
            throw APIKeyError.parameterOutOfRange(name: name, value: String(value), allowed: allowed)
        }
    }

    /// A non-negative decimal without sign or leading zeros; nil if it is not one. Values too large for any
    /// Argon2 parameter saturate to `Int(UInt32.max) + 1` so the caller reports them as out of range.
    private static func decimal<C: Collection>(_ digits: C) -> Int? where C.Element == UInt8 {
        guard !digits.isEmpty else { return nil }
        guard digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        if digits.count > 1, digits.first == UInt8(ascii: "0") { return nil }
        let saturated = Int(UInt32.max) + 1
        var value = 0
        for d in digits {
            value = value * 10 + Int(d - UInt8(ascii: "0"))
            if value >= saturated { return saturated }
        }
        return value
    }

    /// Bytes from the input, for error messages (lossy for invalid UTF-8, at most 64 bytes).
    private static func text<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let shown = String(decoding: bytes.prefix(64), as: UTF8.self)
        return bytes.count > 64 ? shown + "..." : shown
    }
}
