import VikingFormat
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// A vikingfs mount found in `/proc/self/mountinfo`.
public struct ServingMount: Equatable, Sendable {
    public let mountPoint: String
    public let source: String
}

public enum MountTable {
    /// The vikingfs mounts (type `fuse.vikingfs`) whose source is `backingRoot` (an absolute, resolved path).
    public static func mounts(serving backingRoot: String, mountinfo: String? = nil) -> [ServingMount] {
        let text: String
        if let mountinfo {
            text = mountinfo
        } else {
            // procfs reports a size of 0: read to the end rather than trusting st_size.
            guard case .success(let fd) = Posix.open(Array("/proc/self/mountinfo".utf8CString), O_RDONLY) else { return [] }
            defer { close(fd) }
            guard case .success(let bytes) = Posix.readToEnd(fd, sizeHint: 1 << 16) else { return [] }
            text = String(decoding: bytes, as: UTF8.self)
        }
        var found: [ServingMount] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, dash + 2 < fields.count else { continue }
            let type = String(fields[dash + 1])
            let source = unescape(fields[dash + 2])
            guard type == "fuse.vikingfs" || type == "fuseblk.vikingfs" else { continue }
            if source == backingRoot || (source.hasSuffix("/") && String(source.dropLast()) == backingRoot)
                || (mountinfo == nil && resolved(source) == backingRoot) {
                found.append(ServingMount(mountPoint: unescape(fields[4]), source: source))
            }
        }
        return found
    }

    /// The mount's source with symlinks and relative parts resolved (a mount given a path that is not canonical).
    private static func resolved(_ path: String) -> String? {
        guard path.hasPrefix("/"), let r = realpath(path, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    /// mountinfo escapes space, tab, newline and backslash as `\ooo`.
    static func unescape(_ field: Substring) -> String {
        var out: [UInt8] = []
        let bytes = Array(field.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count {
                let digits = bytes[(i + 1)...(i + 3)]
                if digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "7")).contains($0) }) {
                    let v = digits.reduce(0) { $0 * 8 + Int($1 - UInt8(ascii: "0")) }
                    if v < 256 { out.append(UInt8(v)); i += 4; continue }
                }
            }
            out.append(bytes[i])
            i += 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// An exclusive lock on the backing root (flock on the directory), so two admin commands never rewrite one
/// tree at the same time. Released when the process exits, even on kill -9.
final class TreeLock {
    private let fd: Int32

    init(tree: BackingTree, command: String) throws(AdminError) {
        switch Posix.open(tree.cPath(RelativePath(bytes: [])), O_RDONLY | O_DIRECTORY) {
        case .failure(let e): throw AdminError(.ioError, "\(tree.root): \(e)")
        case .success(let fd):
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                let code = errno
                close(fd)
                if code == EWOULDBLOCK {
                    throw AdminError(.usage, "another vikingfs admin command is working on \(tree.root); wait for it to finish")
                }
                throw AdminError(.ioError, "locking \(tree.root) for \(command): \(SystemError(code))")
            }
            self.fd = fd
        }
    }

    deinit { close(fd) }
}

enum Preconditions {
    /// Refuses a tree a vikingfs mount is serving, unless forced; says why either way.
    static func checkNotMounted(_ tree: BackingTree, command: String, force: Bool, console: any Console) throws(AdminError) {
        let mounts = MountTable.mounts(serving: tree.root)
        guard let first = mounts.first else { return }
        if force {
            console.err("vikingfs \(command): warning: \(tree.root) is served by the vikingfs mount at \(first.mountPoint); continuing because of --force\n")
            return
        }
        throw AdminError(.usage, """
            \(tree.root) is being served by the vikingfs mount at \(first.mountPoint).
            \(command) rewrites backing files behind the mount's back, which can race with writes through it.
            Unmount it first (fusermount3 -u \(first.mountPoint)), or pass --force if nothing writes through the mount.
            """)
    }

    /// Loads the key ring from the parsed key-source options.
    static func keyRing(_ options: [String: String], required: Bool) throws(AdminError) -> KeyRing? {
        if options.isEmpty && !required { return nil }
        if options.isEmpty {
            throw AdminError.usage("no root key given: use --key-file PATH, --provider vault|volcengine_kms, or --config ov.conf")
        }
        do {
            return try KeySource.parse(options).loadKeyRing()
        } catch {
            throw AdminError.key(error)
        }
    }

    /// Checks `backend_meta.json` against the ring; returns what was found. A key that does not open it is fatal.
    static func verifyKeyCheck(_ tree: BackingTree, ring: KeyRing) throws(AdminError) -> KeyCheck.Status {
        do {
            return try KeyCheck.verify(backingRoot: tree.root, keyRing: ring)
        } catch {
            switch error {
            case .wrongKey:
                throw AdminError(.keyError, "\(error) (key ID \(ring.primary.keyIDHex))")
            case .damaged:
                throw AdminError(.keyError, "\(error); the key cannot be verified")
            case .io:
                throw AdminError(.ioError, error.description)
            }
        }
    }
}
