/// Why a sealed file could not be opened. Each case says what a person would need to know to act on it.
public enum FormatError: Error, Equatable, CustomStringConvertible {
    case truncatedHeader(format: String, have: Int, need: Int)
    case unsupportedVersion(format: String, version: UInt8)
    case malformedHeader(String)
    /// The file key did not unwrap: the root key is wrong, the header was altered, or it belongs to another account.
    case keyUnwrapFailed(account: String)
    case blockAuthenticationFailed(index: UInt64)
    case truncatedBlock(index: UInt64, storedBytes: Int)
    case contentAuthenticationFailed
    case unknownRootKey(keyID: String)

    public var description: String {
        switch self {
        case .truncatedHeader(let f, let have, let need): return "\(f) header truncated: \(have) of \(need) bytes"
        case .unsupportedVersion(let f, let v): return "\(f) version \(v) is not supported"
        case .malformedHeader(let why): return "malformed header: \(why)"
        case .keyUnwrapFailed(let account):
            return "file key does not unwrap under account '\(account)' (wrong root key, altered header, or a header from another account)"
        case .blockAuthenticationFailed(let i): return "block \(i) fails authentication (tampered, swapped or rolled back)"
        case .truncatedBlock(let i, let n): return "block \(i) is truncated (\(n) stored bytes)"
        case .contentAuthenticationFailed: return "content fails authentication (tampered or wrong key)"
        case .unknownRootKey(let id): return "sealed under root key \(id), which this key ring does not hold"
        }
    }
}
