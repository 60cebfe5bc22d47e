import VikingFormat
#if canImport(Glibc)
import Glibc
#endif

/// Replacing a backing file atomically: a hidden temporary file in the same directory receives the new bytes and
/// the original's owner, mode, extended attributes and (optionally) timestamps, is fsynced, and is renamed over
/// the original. A crash at any point leaves the original or the replacement, plus at worst a hidden temporary
/// file that the next run removes.
final class FileReplacement {
    let tree: BackingTree
    let path: RelativePath
    let tempPath: RelativePath
    let fd: Int32
    private var finished = false

    private init(tree: BackingTree, path: RelativePath, tempPath: RelativePath, fd: Int32) {
        self.tree = tree
        self.path = path
        self.tempPath = tempPath
        self.fd = fd
    }

    static func begin(tree: BackingTree, replacing path: RelativePath) -> Result<FileReplacement, FileProblem> {
        let tempPath = path.parent.appending(AdminTemporary.fresh())
        switch Posix.open(tree.cPath(tempPath), O_WRONLY | O_CREAT | O_EXCL, 0o600) {
        case .failure(let e): return .failure(.io(path, "creating a temporary file beside it", e))
        case .success(let fd): return .success(FileReplacement(tree: tree, path: path, tempPath: tempPath, fd: fd))
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer) -> Result<Void, FileProblem> {
        Posix.write(fd, bytes).mapError { .io(path, "writing the temporary file", $0) }
    }

    func write(_ bytes: [UInt8]) -> Result<Void, FileProblem> { bytes.withUnsafeBytes { write($0) } }

    /// Gives the temporary file the original's owner, mode and extended attributes. `transformXattr` may rewrite
    /// an attribute (name, value) on the way (sealing plaintext `user.*` attributes).
    func copyMetadata(from original: Int32, stat st: stat,
                      transformXattr: ([UInt8], [UInt8]) -> Result<([UInt8], [UInt8]), FileProblem>) -> Result<Void, FileProblem> {
        if fchown(fd, st.st_uid, st.st_gid) != 0 {
            return .failure(.io(path, "keeping the owner (\(st.st_uid):\(st.st_gid))", SystemError(errno)))
        }
        if fchmod(fd, st.st_mode & 0o7777) != 0 {
            return .failure(.io(path, "keeping the mode", SystemError(errno)))
        }
        let names: [[UInt8]]
        switch Posix.listXattrs(original) {
        case .failure(let e): return .failure(.io(path, "listing extended attributes", e))
        case .success(let n): names = n
        }
        for name in names {
            let value: [UInt8]
            switch Posix.getXattr(original, name) {
            case .failure(let e) where e.code == ENODATA: continue  // removed meanwhile
            case .failure(let e): return .failure(.io(path, "reading extended attribute \(escapeForDisplay(name))", e))
            case .success(let v): value = v
            }
            let (newName, newValue): ([UInt8], [UInt8])
            switch transformXattr(name, value) {
            case .failure(let p): return .failure(p)
            case .success(let pair): (newName, newValue) = pair
            }
            if case .failure(let e) = Posix.setXattr(fd, newName, newValue) {
                return .failure(.io(path, "keeping extended attribute \(escapeForDisplay(name))", e))
            }
        }
        return .success(())
    }

    func keepTimes(_ st: stat) -> Result<Void, FileProblem> {
        var times = [st.st_atim, st.st_mtim]
        return futimens(fd, &times) == 0 ? .success(()) : .failure(.io(path, "keeping the timestamps", SystemError(errno)))
    }

    /// fsyncs the temporary file and renames it over the original, after checking that the original (open at
    /// `original`) is still the file at the path and unchanged since `st` was taken.
    func commit(original: Int32, stat st: stat) -> Result<Void, FileProblem> {
        defer { finished = true }
        if fsync(fd) != 0 {
            let e = SystemError(errno)
            abandon()
            return .failure(.io(path, "fsync of the temporary file", e))
        }
        close(fd)
        let now = Posix.fstat(original)
        let there = Posix.lstat(tree.cPath(path))
        guard case .success(let a) = now, case .success(let b) = there,
              a.st_size == st.st_size, a.st_mtim.tv_sec == st.st_mtim.tv_sec, a.st_mtim.tv_nsec == st.st_mtim.tv_nsec,
              b.st_ino == st.st_ino, b.st_dev == st.st_dev else {
            unlink(tree.cPath(tempPath))
            return .failure(FileProblem(path, .io, "changed while it was being rewritten; left as it was (run again)"))
        }
        if rename(tree.cPath(tempPath), tree.cPath(path)) != 0 {
            let e = SystemError(errno)
            unlink(tree.cPath(tempPath))
            return .failure(.io(path, "renaming the temporary file into place", e))
        }
        return .success(())
    }

    /// Closes and removes the temporary file.
    func abandon() {
        guard !finished else { return }
        finished = true
        close(fd)
        unlink(tree.cPath(tempPath))
    }

    deinit { abandon() }
}
