import VikingFormat
import VikingJSON
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// The admin command's exit codes (documented in vikingfs(8)).
public enum ExitStatus: Int32, Sendable, CustomStringConvertible {
    /// Everything worked; for `fsck`, the tree is clean; for `apikey verify`, the key matches.
    case ok = 0
    /// Damage was found (`fsck`, `inspect`, `decrypt`, files that fail to authenticate), or `apikey verify` mismatched.
    case damage = 1
    /// Usage or configuration error: bad arguments, unknown option, a refused precondition (mounted tree, lock).
    case usage = 2
    /// Key error: a key could not be loaded, or it is not the key the tree was sealed with.
    case keyError = 3
    /// I/O error: a file or directory could not be read or written.
    case ioError = 4

    public var description: String {
        switch self {
        case .ok: return "ok"
        case .damage: return "damage found"
        case .usage: return "usage or configuration error"
        case .keyError: return "key error"
        case .ioError: return "I/O error"
        }
    }
}

/// A failure that ends a command, with the exit status it maps to and a message for the operator.
public struct AdminError: Error, CustomStringConvertible, Sendable {
    public let status: ExitStatus
    public let message: String

    public init(_ status: ExitStatus, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }

    static func usage(_ message: String) -> AdminError { AdminError(.usage, message) }

    /// A key-loading failure: configuration mistakes are usage errors, everything else is a key error.
    static func key(_ error: KeyError) -> AdminError {
        switch error {
        case .unsupportedConfig, .alreadyExists: return AdminError(.usage, error.description)
        default: return AdminError(.keyError, error.description)
        }
    }
}

/// What went wrong with one file of a tree; collected and reported per file, never fatal to the whole run.
public struct FileProblem: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// The file is damaged: bad header, a block or the content fails authentication, wrong account, truncated.
        case damaged
        /// The file could not be read or written.
        case io
        /// The file is sealed under a root key the command was not given.
        case key
    }

    public let path: RelativePath
    public let kind: Kind
    public let message: String

    public init(_ path: RelativePath, _ kind: Kind, _ message: String) {
        self.path = path
        self.kind = kind
        self.message = message
    }

    public var description: String { "\(path.display): \(message)" }

    var json: JSON {
        .object([.init("path", .string(path.string)), .init("problem", .string(kind.rawValue)), .init("message", .string(message))])
    }

    static func io(_ path: RelativePath, _ what: String, _ error: SystemError) -> FileProblem {
        FileProblem(path, .io, "\(what): \(error.description)")
    }
}

extension ExitStatus {
    /// The status for a set of per-file problems: damage first, then key, then I/O.
    static func worst(of problems: [FileProblem]) -> ExitStatus {
        if problems.contains(where: { $0.kind == .damaged }) { return .damage }
        if problems.contains(where: { $0.kind == .key }) { return .damage }
        if problems.contains(where: { $0.kind == .io }) { return .ioError }
        return .ok
    }
}
