import FuseKit
import VikingCrypto
import VikingFormat
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// The format new files are sealed in (`-o format=`).
public enum NewFileFormat: String, Sendable {
    case native
    case ove1
}

/// Everything the overlay needs to serve a backing directory.
public struct VikingFSConfiguration {
    public var backingPath: String
    public var keyRing: KeyRing
    public var newFileFormat: NewFileFormat = .native
    public var blockShift: UInt8 = NativeFormat.defaultBlockShift
    public var readOnly = false
    /// Largest OVE1 plaintext held in memory per open file (`-o ove1_max_size=`); beyond it, EFBIG.
    public var ove1MemoryLimit = 64 << 20
    /// The kernel writeback cache (on unless `-o no_writeback`): small writes gathered into page-sized and larger
    /// requests. Correct with the inode table: deleted inodes stay reachable until the kernel forgets them.
    public var writebackCache = true
    /// Directory listings carry attributes (READDIRPLUS), sparing a LOOKUP per listed name.
    public var readdirPlus = true
    /// Refuse legacy plaintext (`-o no_legacy`): once a tree is sealed, any unsealed file is damage or a plant.
    public var refuseLegacy = false
    public var attributeTimeout: Double = 1.0
    public var entryTimeout: Double = 1.0
    /// The mount has `default_permissions`: the kernel checks modes. Otherwise `access` asks the backing file
    /// system (the daemon runs as the only user who can enter).
    public var kernelChecksPermissions = true
    /// Offer extended attributes (`-o noxattr` turns them off: the kernel then stops its per-write
    /// `security.capability` lookup).
    public var extendedAttributes = true

    public init(backingPath: String, keyRing: KeyRing) {
        self.backingPath = backingPath
        self.keyRing = keyRing
    }
}

/// Shared, read-mostly state reached from every operation.
final class FileSystemContext {
    let rootFD: Int32
    let backingPath: String
    let keyRing: KeyRing
    let newFileFormat: NewFileFormat
    let blockShift: UInt8
    let readOnly: Bool
    let ove1MemoryLimit: Int
    let refuseLegacy: Bool
    let kernelChecksPermissions: Bool
    /// Keeps offsets well inside Int64 after the per-block overhead is added.
    let maxFileSize: Int64 = 1 << 50
    let startTime: time_t = time(nil)

    init(rootFD: Int32, configuration: VikingFSConfiguration) {
        self.rootFD = rootFD
        backingPath = configuration.backingPath
        keyRing = configuration.keyRing
        newFileFormat = configuration.newFileFormat
        blockShift = configuration.blockShift
        readOnly = configuration.readOnly
        ove1MemoryLimit = configuration.ove1MemoryLimit
        refuseLegacy = configuration.refuseLegacy
        kernelChecksPermissions = configuration.kernelChecksPermissions
    }

    func createNativeCipher(account: String) throws(Errno) -> NativeFileCipher {
        do {
            let accountKey = try keyRing.accountKey(account)
            return try NativeFileCipher.create(accountKey: accountKey, account: account, rootKeyID: keyRing.primary.keyID,
                                               blockShift: blockShift)
        } catch {
            Log.error("cannot create a file key for account \(account): \(error)")
            throw .io
        }
    }

    func accountKey(_ account: String) throws(Errno) -> SecureBytes {
        do { return try keyRing.accountKey(account) } catch {
            Log.error("cannot derive the key of account \(account): \(error)")
            throw .io
        }
    }
}
