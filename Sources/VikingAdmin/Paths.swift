import VikingFormat
#if canImport(Glibc)
import Glibc
#endif

/// A path below the backing root, as raw bytes: file names on Linux need not be UTF-8, and a lossy conversion
/// would make such files impossible to open. Displayed escaped, compared and joined as bytes.
public struct RelativePath: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }
    public init(_ string: String) { self.bytes = Array(string.utf8) }

    public static func < (a: RelativePath, b: RelativePath) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }

    public var isEmpty: Bool { bytes.isEmpty }

    public func appending(_ name: [UInt8]) -> RelativePath {
        bytes.isEmpty ? RelativePath(bytes: name) : RelativePath(bytes: bytes + [UInt8(ascii: "/")] + name)
    }

    /// The last component.
    public var name: [UInt8] {
        guard let slash = bytes.lastIndex(of: UInt8(ascii: "/")) else { return bytes }
        return Array(bytes[(slash + 1)...])
    }

    /// The directory holding this path ("" for entries directly in the root).
    public var parent: RelativePath {
        guard let slash = bytes.lastIndex(of: UInt8(ascii: "/")) else { return RelativePath(bytes: []) }
        return RelativePath(bytes: Array(bytes[..<slash]))
    }

    /// True for entries directly in the backing root.
    public var isInRoot: Bool { !bytes.contains(UInt8(ascii: "/")) }

    /// The path as a string (invalid UTF-8 replaced); for JSON output and account lookup.
    public var string: String { String(decoding: bytes, as: UTF8.self) }

    /// The path for a human: control characters, backslashes and invalid UTF-8 escaped, so a name with a newline
    /// cannot forge a line of output.
    public var display: String { escapeForDisplay(bytes) }

    public var description: String { display }

    /// The account whose key seals a regular file at this path (files directly in the root are `_system`'s).
    /// Account IDs are ASCII, so a lossy conversion never turns an invalid first component into a valid one.
    public var account: String { Account.ofFile(path: string) }
}

/// Escapes bytes for one line of terminal output: printable UTF-8 stays, `\` `\n` `\t` `\r` and other control
/// characters and invalid UTF-8 bytes become escapes.
public func escapeForDisplay(_ bytes: [UInt8]) -> String {
    var out = ""
    var i = 0
    func hex(_ b: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return "\\x" + String(digits[Int(b >> 4)]) + String(digits[Int(b & 0xf)])
    }
    while i < bytes.count {
        let b = bytes[i]
        if b < 0x80 {
            switch b {
            case UInt8(ascii: "\\"): out += "\\\\"
            case 0x0a: out += "\\n"
            case 0x09: out += "\\t"
            case 0x0d: out += "\\r"
            case 0..<0x20, 0x7f: out += hex(b)
            default: out.unicodeScalars.append(Unicode.Scalar(b))
            }
            i += 1
            continue
        }
        let length: Int
        switch b {
        case 0xc2...0xdf: length = 2
        case 0xe0...0xef: length = 3
        case 0xf0...0xf4: length = 4
        default: length = 0
        }
        if length > 0, i + length <= bytes.count,
           let s = String(validating: bytes[i..<(i + length)], as: UTF8.self),
           let scalar = s.unicodeScalars.first, scalar.properties.generalCategory != .control,
           scalar.properties.generalCategory != .format || scalar.value == 0x200d {
            out += s
            i += length
        } else {
            out += hex(b)
            i += 1
        }
    }
    return out
}

/// A backing directory: its resolved absolute path, and full paths of entries below it as C strings.
public struct BackingTree: Sendable {
    public let root: String
    let rootBytes: [UInt8]

    /// Resolves `path` (which must be an existing directory).
    public init(path: String) throws(AdminError) {
        guard let resolved = realpath(path, nil) else {
            throw AdminError(errno == ENOENT ? .usage : .ioError, "backing directory \(path): \(SystemError(errno))")
        }
        defer { free(resolved) }
        let root = String(cString: resolved)
        var st = stat()
        guard stat(root, &st) == 0 else { throw AdminError(.ioError, "backing directory \(root): \(SystemError(errno))") }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw AdminError(.usage, "\(path) is not a directory") }
        self.root = root
        self.rootBytes = Array(root.utf8)
    }

    /// The NUL-terminated full path of `rel` (the root itself for an empty path).
    public func cPath(_ rel: RelativePath) -> [CChar] {
        var out = [CChar]()
        out.reserveCapacity(rootBytes.count + rel.bytes.count + 2)
        for b in rootBytes { out.append(CChar(bitPattern: b)) }
        if !rel.isEmpty {
            if rootBytes.last != UInt8(ascii: "/") { out.append(CChar(bitPattern: UInt8(ascii: "/"))) }
            for b in rel.bytes { out.append(CChar(bitPattern: b)) }
        }
        out.append(0)
        return out
    }

    /// The full path for messages.
    public func display(_ rel: RelativePath) -> String {
        rel.isEmpty ? root : (root == "/" ? "/" : root + "/") + rel.display
    }

    /// Account IDs present in the tree (directories directly in the root with a valid ID) plus `_system`, for
    /// telling "moved from another account" apart from "altered".
    public func accounts() -> [String] {
        var out = [Account.system]
        guard let d = opendir(root) else { return out }
        defer { closedir(d) }
        while let entry = readdir(d) {
            let name = entryName(entry)
            let s = String(decoding: name, as: UTF8.self)
            if Int32(entry.pointee.d_type) == DT_DIR || Int32(entry.pointee.d_type) == DT_UNKNOWN, Account.isValidID(s) {
                out.append(s)
            }
        }
        return out
    }
}

/// The raw name bytes of a directory entry.
func entryName(_ entry: UnsafeMutablePointer<dirent>) -> [UInt8] {
    withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
}
