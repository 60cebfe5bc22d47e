import CFuse
#if canImport(Glibc)
import Glibc
#endif

/// An errno value as a Swift error. FUSE callbacks return `-rawValue`.
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(cfuse_errno()) }

    public var description: String { String(cString: strerror(rawValue)) }

    public static let permissionDenied = Errno(EPERM)
    public static let noEntry = Errno(ENOENT)
    public static let io = Errno(EIO)
    public static let badFile = Errno(EBADF)
    public static let accessDenied = Errno(EACCES)
    public static let exists = Errno(EEXIST)
    public static let crossDevice = Errno(EXDEV)
    public static let notDirectory = Errno(ENOTDIR)
    public static let isDirectory = Errno(EISDIR)
    public static let invalid = Errno(EINVAL)
    public static let fileTooLarge = Errno(EFBIG)
    public static let noSpace = Errno(ENOSPC)
    public static let readOnlyFileSystem = Errno(EROFS)
    public static let notSupported = Errno(EOPNOTSUPP)
    public static let notImplemented = Errno(ENOSYS)
    public static let noData = Errno(ENODATA)
    public static let range = Errno(ERANGE)
    public static let nameTooLong = Errno(ENAMETOOLONG)
    public static let noMemory = Errno(ENOMEM)
}

/// Runs a system call that returns -1 and sets errno, retrying on EINTR.
@inline(__always)
public func syscallRetrying<T: BinaryInteger>(_ body: () -> T) throws(Errno) -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = cfuse_errno()
        if e == EINTR { continue }
        throw Errno(e)
    }
}
