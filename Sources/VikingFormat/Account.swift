/// Which key domain a path belongs to (DESIGN 2).
public enum Account {
    /// The reserved account for everything not under a valid account directory.
    public static let system = "_system"

    /// OpenViking's account ID rule: `^[A-Za-z0-9_.@-]+$`, at most one `@`, not `.` or `..`, not starting with `_`.
    public static func isValidID<S: StringProtocol>(_ id: S) -> Bool {
        guard !id.isEmpty, id != ".", id != "..", !id.hasPrefix("_") else { return false }
        var ats = 0
        for u in id.utf8 {
            switch u {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
                continue
            case UInt8(ascii: "@"):
                ats += 1
                if ats > 1 { return false }
            default:
                return false
            }
        }
        return true
    }

    /// The account of a path relative to the backing root ("acme/resources/doc.md", "/acme/x" or "_system/y").
    /// The first component decides; a file directly in the root belongs to `_system`.
    public static func of<S: StringProtocol>(path: S) -> String {
        var rest = Substring(path)
        while rest.first == "/" { rest = rest.dropFirst() }
        guard let slash = rest.firstIndex(of: "/") else {
            // A single component: a directory in the root is its own account; a file there is _system's.
            // Callers that know they hold a file directly in the root use `ofFile(path:)`.
            return isValidID(rest) ? String(rest) : system
        }
        let first = rest[rest.startIndex..<slash]
        return isValidID(first) ? String(first) : system
    }

    /// The account whose key seals a regular file at `path`: files directly in the root are `_system`'s.
    public static func ofFile<S: StringProtocol>(path: S) -> String {
        var rest = Substring(path)
        while rest.first == "/" { rest = rest.dropFirst() }
        guard rest.contains("/") else { return system }
        return of(path: rest)
    }
}
