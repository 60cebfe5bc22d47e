/// What a backing file holds, judged from its first bytes (DESIGN 4.3).
public enum FileKind: Sendable, Equatable, CustomStringConvertible {
    /// 0 bytes: holds no secret; an empty, writable file.
    case empty
    case native
    case ove1
    /// Non-empty and starting with neither magic: readable, never writable.
    case legacy

    public var description: String {
        switch self {
        case .empty: return "empty"
        case .native: return "native (VKFS)"
        case .ove1: return "OVE1"
        case .legacy: return "legacy plaintext"
        }
    }

    /// The smallest prefix `classify` needs.
    public static let probeLength = 4

    /// `prefix` holds the file's first bytes (up to `probeLength`); `size` is the file's full size.
    public static func classify(prefix: UnsafeRawBufferPointer, size: Int64) -> FileKind {
        if size == 0 { return .empty }
        guard prefix.count >= 4 else { return .legacy }
        if prefix.starts(with: NativeFormat.magic) { return .native }
        if prefix.starts(with: OVE1.magic) { return .ove1 }
        return .legacy
    }

    public static func classify(prefix: [UInt8], size: Int64) -> FileKind {
        prefix.withUnsafeBytes { classify(prefix: $0, size: size) }
    }
}
