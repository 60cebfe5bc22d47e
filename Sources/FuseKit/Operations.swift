import CFuse
import CFuseWire
#if canImport(Glibc)
import Glibc
#endif

final class FileSystemBox {
    let fileSystem: FuseFileSystem
    var settings = FuseInitSettings()
    /// Set once the session exists, before any request: for notifications to the kernel.
    var session: OpaquePointer?
    init(_ fileSystem: FuseFileSystem) { self.fileSystem = fileSystem }
}

/// The box behind a request: the session's user data, so no callback needs a global.
@inline(__always)
private func box(_ req: fuse_req_t?) -> FileSystemBox {
    Unmanaged<FileSystemBox>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

@inline(__always)
private func fs(_ req: fuse_req_t?) -> FuseFileSystem { box(req).fileSystem }

@inline(__always)
private func replyError(_ req: fuse_req_t?, _ body: () throws(Errno) -> Void) {
    do { try body(); fuse_reply_err(req, 0) } catch { fuse_reply_err(req, error.rawValue) }
}

@inline(__always)
private func replyEntry(_ req: fuse_req_t?, _ body: () throws(Errno) -> FuseEntry) {
    do {
        var parameters = try body().parameters(box(req).settings)
        fuse_reply_entry(req, &parameters)
    } catch {
        fuse_reply_err(req, error.rawValue)
    }
}

@inline(__always)
private func replyAttributes(_ req: fuse_req_t?, _ body: () throws(Errno) -> stat) {
    do {
        var st = try body()
        fuse_reply_attr(req, &st, box(req).settings.attributeTimeout)
    } catch {
        fuse_reply_err(req, error.rawValue)
    }
}

@inline(__always)
private func handle(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> UInt64? { fi?.pointee.fh }

private func apply(_ result: OpenResult, to fi: UnsafeMutablePointer<fuse_file_info>) {
    fi.pointee.fh = result.handle
    fi.pointee.direct_io = result.directIO ? 1 : 0
    fi.pointee.keep_cache = result.keepCache ? 1 : 0
}

/// The kernel's FUSE_HANDLE_KILLPRIV_V2 contract, for a request whose caller lacks CAP_FSETID (the kernel marks it;
/// `CFuseWire` reads the mark): set-user-ID goes; set-group-ID goes when the file is group-executable or the caller
/// is not in the file's group (the VFS's rule, `setattr_should_drop_sgid`). Done with the file system's own
/// getattr/setattr, so every file system on FuseKit keeps the promise without code of its own; a marked request on
/// a file without those bits costs one getattr.
enum SetIDDrop {
    static let setUserID: mode_t = 0o4000
    static let setGroupID: mode_t = 0o2000
    static let groupExecute: mode_t = 0o0010

    static var requested: Bool { cfusewire_request_drops_setid() != 0 }

    /// The mode without the bits the request's caller may not keep.
    static func mode(_ mode: mode_t, group: gid_t, callerIsMember: (gid_t) -> Bool) -> mode_t {
        guard mode & S_IFMT == S_IFREG, mode & (setUserID | setGroupID) != 0 else { return mode }
        var kept = mode & ~setUserID
        if kept & setGroupID != 0 && (kept & groupExecute != 0 || !callerIsMember(group)) { kept &= ~setGroupID }
        return kept
    }

    /// The mode `st` should change to for this request, or nil.
    static func change(for st: stat, request: fuse_req_t?) -> mode_t? {
        let kept = mode(st.st_mode, group: st.st_gid) { callerBelongs(to: $0, request: request) }
        return kept == st.st_mode ? nil : kept & 0o7777
    }

    /// Drops the bits if the request asks and the file has them. A reply without attributes (WRITE, OPEN) leaves
    /// the kernel showing the old mode until its cache expires, so the kernel is told to forget the attributes;
    /// attributes only (offset < 0), which waits on no page and is safe inside the request.
    static func apply(_ fileSystem: FuseFileSystem, _ inode: FuseInode, handle: UInt64?, request: fuse_req_t?) throws(Errno) {
        guard requested else { return }
        guard let mode = change(for: try fileSystem.getattr(inode, handle: handle), request: request) else { return }
        var changes = AttributeChanges()
        changes.mode = mode
        _ = try fileSystem.setattr(inode, changes, handle: handle)
        if let session = box(request).session { _ = fuse_lowlevel_notify_inval_inode(session, fuse_ino_t(inode), -1, 0) }
    }

    private static func callerBelongs(to group: gid_t, request: fuse_req_t?) -> Bool {
        let caller = FuseCaller(request)
        if caller.gid == group { return true }
        // Rare (a set-group-ID file without group execute): libfuse reads the caller's /proc status.
        var groups = [gid_t](repeating: 0, count: 256)
        let count = fuse_req_getgroups(request, Int32(groups.count), &groups)
        return count > 0 && groups.prefix(Int(min(count, Int32(groups.count)))).contains(group)
    }
}

/// Replies to size-probing calls (getxattr, listxattr): an empty request gets the size, otherwise the bytes.
private func replySized(_ req: fuse_req_t?, size: Int, _ body: (UnsafeMutableRawBufferPointer) throws(Errno) -> Int) {
    do {
        if size == 0 {
            fuse_reply_xattr(req, try body(UnsafeMutableRawBufferPointer(start: nil, count: 0)))
            return
        }
        let buffer = ReplyBuffer.current.buffer(size)
        let n = try body(buffer)
        fuse_reply_buf(req, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), n)
    } catch {
        fuse_reply_err(req, error.rawValue)
    }
}

private func readDirectory(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t,
                           _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
    let raw = ReplyBuffer.current.buffer(size)
    let base = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
    var buffer = DirectoryBuffer(request: req, base: base, capacity: size, wantsAttributes: plus)
    do throws(Errno) {
        try fs(req).readdir(FuseInode(ino), handle: fi!.pointee.fh, offset: Int64(offset), into: &buffer)
        fuse_reply_buf(req, base, buffer.used)
    } catch {
        // Entries already added (and, with READDIRPLUS, looked up) must reach the kernel.
        if buffer.used > 0 { fuse_reply_buf(req, base, buffer.used) } else { fuse_reply_err(req, error.rawValue) }
    }
}

/// The C operation table. Each entry captures nothing and reaches the file system through the request.
/// The table is built before `initialize` runs, so operations the file system turned off answer ENOSYS themselves.
func makeOperations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()
    ops.`init` = { userdata, conn in
        guard let userdata, let conn else { return }
        let box = Unmanaged<FileSystemBox>.fromOpaque(userdata).takeUnretainedValue()
        var settings = box.settings
        box.fileSystem.initialize(settings: &settings)
        func want(_ capability: Int32, _ on: Bool) {
            let bit = UInt32(capability)
            if on && conn.pointee.capable & bit != 0 { conn.pointee.want |= bit } else { conn.pointee.want &= ~bit }
        }
        want(FUSE_CAP_WRITEBACK_CACHE, settings.writebackCache)
        want(FUSE_CAP_PARALLEL_DIROPS, settings.parallelDirOps)
        want(FUSE_CAP_READDIRPLUS, settings.readdirPlus)
        want(FUSE_CAP_READDIRPLUS_AUTO, settings.readdirPlus)
        // Flags libfuse 3.14 cannot send; added to its INIT reply where the kernel offered them (CFuseWire).
        var extra: UInt32 = 0
        if settings.parallelDirOps { extra |= UInt32(CFUSEWIRE_PARALLEL_DIROPS) }
        if settings.cacheSymlinks { extra |= UInt32(CFUSEWIRE_CACHE_SYMLINKS) }
        if settings.handleKillPrivileges { extra |= UInt32(CFUSEWIRE_HANDLE_KILLPRIV_V2) }
        cfusewire_request_init_flags(extra)
        conn.pointee.max_write = settings.maxWrite
        conn.pointee.max_readahead = settings.maxReadahead
        box.settings = settings
    }
    ops.destroy = { userdata in
        guard let userdata else { return }
        Unmanaged<FileSystemBox>.fromOpaque(userdata).takeUnretainedValue().fileSystem.destroy()
    }
    ops.lookup = { req, parent, name in
        let box = box(req)
        do throws(Errno) {
            var parameters = try box.fileSystem.lookup(parent: FuseInode(parent), name: name!).parameters(box.settings)
            fuse_reply_entry(req, &parameters)
        } catch {
            if error == .noEntry && box.settings.negativeTimeout > 0 {
                var negative = fuse_entry_param()
                negative.entry_timeout = box.settings.negativeTimeout
                fuse_reply_entry(req, &negative)
            } else {
                fuse_reply_err(req, error.rawValue)
            }
        }
    }
    ops.forget = { req, ino, nlookup in
        fs(req).forget(FuseInode(ino), lookups: nlookup)
        fuse_reply_none(req)
    }
    ops.forget_multi = { req, count, forgets in
        let fileSystem = fs(req)
        if let forgets {
            for i in 0..<count { fileSystem.forget(FuseInode(forgets[i].ino), lookups: forgets[i].nlookup) }
        }
        fuse_reply_none(req)
    }
    ops.getattr = { req, ino, fi in
        replyAttributes(req) { () throws(Errno) in try fs(req).getattr(FuseInode(ino), handle: handle(fi)) }
    }
    ops.setattr = { req, ino, attr, valid, fi in
        replyAttributes(req) { () throws(Errno) in
            let fileSystem = fs(req)
            var changes = AttributeChanges(attr!.pointee, valid: valid)
            // Truncate or chown by a caller without CAP_FSETID (KILLPRIV_V2): the bits go in the same change.
            if SetIDDrop.requested && changes.mode == nil {
                changes.mode = SetIDDrop.change(for: try fileSystem.getattr(FuseInode(ino), handle: handle(fi)), request: req)
            }
            return try fileSystem.setattr(FuseInode(ino), changes, handle: handle(fi))
        }
    }
    ops.readlink = { req, ino in
        let buffer = ReplyBuffer.current.buffer(Int(PATH_MAX) + 1).bindMemory(to: CChar.self)
        do throws(Errno) {
            try fs(req).readlink(FuseInode(ino), into: buffer)
            fuse_reply_readlink(req, buffer.baseAddress)
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }
    ops.mknod = { req, parent, name, mode, device in
        replyEntry(req) { () throws(Errno) in
            try fs(req).mknod(parent: FuseInode(parent), name: name!, mode: mode, device: device, caller: FuseCaller(req))
        }
    }
    ops.mkdir = { req, parent, name, mode in
        replyEntry(req) { () throws(Errno) in
            try fs(req).mkdir(parent: FuseInode(parent), name: name!, mode: mode, caller: FuseCaller(req))
        }
    }
    ops.unlink = { req, parent, name in
        replyError(req) { () throws(Errno) in try fs(req).unlink(parent: FuseInode(parent), name: name!) }
    }
    ops.rmdir = { req, parent, name in
        replyError(req) { () throws(Errno) in try fs(req).rmdir(parent: FuseInode(parent), name: name!) }
    }
    ops.symlink = { req, target, parent, name in
        replyEntry(req) { () throws(Errno) in
            try fs(req).symlink(target: target!, parent: FuseInode(parent), name: name!, caller: FuseCaller(req))
        }
    }
    ops.rename = { req, parent, name, newParent, newName, flags in
        replyError(req) { () throws(Errno) in
            try fs(req).rename(parent: FuseInode(parent), name: name!, newParent: FuseInode(newParent), newName: newName!, flags: UInt32(flags))
        }
    }
    ops.link = { req, ino, newParent, newName in
        replyEntry(req) { () throws(Errno) in
            try fs(req).link(FuseInode(ino), newParent: FuseInode(newParent), newName: newName!)
        }
    }
    ops.open = { req, ino, fi in
        do throws(Errno) {
            let result = try fs(req).open(FuseInode(ino), flags: fi!.pointee.flags)
            do throws(Errno) {
                // open(O_TRUNC) by a caller without CAP_FSETID (KILLPRIV_V2).
                try SetIDDrop.apply(fs(req), FuseInode(ino), handle: result.handle, request: req)
            } catch {
                fs(req).release(FuseInode(ino), handle: result.handle)
                throw error
            }
            apply(result, to: fi!)
            if fuse_reply_open(req, fi) == -ENOENT {
                // The opener was interrupted: nobody will release this handle.
                fs(req).release(FuseInode(ino), handle: result.handle)
            }
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }
    ops.create = { req, parent, name, mode, fi in
        let box = box(req)
        do throws(Errno) {
            var (entry, result) = try box.fileSystem.create(parent: FuseInode(parent), name: name!, mode: mode,
                                                             flags: fi!.pointee.flags, caller: FuseCaller(req))
            // O_CREAT|O_TRUNC that met an existing file (its set-ID bits are not the ones asked for) by a caller
            // without CAP_FSETID (KILLPRIV_V2). A new file keeps the mode it was created with.
            if SetIDDrop.requested && entry.attributes.st_mode & (SetIDDrop.setUserID | SetIDDrop.setGroupID) & ~mode != 0 {
                do throws(Errno) {
                    try SetIDDrop.apply(box.fileSystem, entry.inode, handle: result.handle, request: req)
                    entry.attributes = try box.fileSystem.getattr(entry.inode, handle: result.handle)
                } catch {
                    box.fileSystem.release(entry.inode, handle: result.handle)
                    box.fileSystem.forget(entry.inode, lookups: 1)
                    throw error
                }
            }
            apply(result, to: fi!)
            var parameters = entry.parameters(box.settings)
            if fuse_reply_create(req, &parameters, fi) == -ENOENT {
                box.fileSystem.release(entry.inode, handle: result.handle)
                box.fileSystem.forget(entry.inode, lookups: 1)
            }
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }
    ops.read = { req, ino, size, offset, fi in
        // Over io_uring the data goes straight into the ring entry (a READ has no payload to overwrite).
        let buffer = cfusewire_reply_buffer(size).map { UnsafeMutableRawBufferPointer(start: $0, count: size) }
            ?? ReplyBuffer.current.buffer(size)
        do throws(Errno) {
            let n = try fs(req).read(FuseInode(ino), handle: fi!.pointee.fh, into: buffer, offset: Int64(offset))
            fuse_reply_buf(req, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), n)
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }
    ops.write = { req, ino, buf, size, offset, fi in
        do throws(Errno) {
            // Before the data, as the VFS does (KILLPRIV_V2; only writes of callers without CAP_FSETID are marked).
            try SetIDDrop.apply(fs(req), FuseInode(ino), handle: fi!.pointee.fh, request: req)
            let n = try fs(req).write(FuseInode(ino), handle: fi!.pointee.fh,
                                      from: UnsafeRawBufferPointer(start: buf, count: size), offset: Int64(offset))
            fuse_reply_write(req, n)
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }
    ops.flush = { req, ino, fi in
        replyError(req) { () throws(Errno) in try fs(req).flush(FuseInode(ino), handle: fi!.pointee.fh) }
    }
    ops.release = { req, ino, fi in
        fs(req).release(FuseInode(ino), handle: fi!.pointee.fh)
        fuse_reply_err(req, 0)
    }
    ops.fsync = { req, ino, datasync, fi in
        replyError(req) { () throws(Errno) in try fs(req).fsync(FuseInode(ino), handle: fi!.pointee.fh, dataOnly: datasync != 0) }
    }
    ops.opendir = { req, ino, fi in
        do throws(Errno) {
            fi!.pointee.fh = try fs(req).opendir(FuseInode(ino))
            if fuse_reply_open(req, fi) == -ENOENT { fs(req).releasedir(FuseInode(ino), handle: fi!.pointee.fh) }
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }
    ops.readdir = { req, ino, size, offset, fi in readDirectory(req, ino, size, offset, fi, plus: false) }
    ops.readdirplus = { req, ino, size, offset, fi in readDirectory(req, ino, size, offset, fi, plus: true) }
    ops.releasedir = { req, ino, fi in
        fs(req).releasedir(FuseInode(ino), handle: fi!.pointee.fh)
        fuse_reply_err(req, 0)
    }
    ops.fsyncdir = { req, ino, datasync, fi in
        replyError(req) { () throws(Errno) in try fs(req).fsyncdir(FuseInode(ino), handle: fi!.pointee.fh, dataOnly: datasync != 0) }
    }
    ops.statfs = { req, ino in
        do throws(Errno) {
            var st = try fs(req).statfs(FuseInode(ino))
            fuse_reply_statfs(req, &st)
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }
    ops.setxattr = { req, ino, name, value, size, flags in
        guard box(req).settings.extendedAttributes else { fuse_reply_err(req, ENOSYS); return }
        replyError(req) { () throws(Errno) in
            try fs(req).setxattr(FuseInode(ino), name: name!, value: UnsafeRawBufferPointer(start: value, count: size), flags: flags)
        }
    }
    ops.getxattr = { req, ino, name, size in
        guard box(req).settings.extendedAttributes else { fuse_reply_err(req, ENOSYS); return }
        replySized(req, size: size) { buffer throws(Errno) in try fs(req).getxattr(FuseInode(ino), name: name!, into: buffer) }
    }
    ops.listxattr = { req, ino, size in
        guard box(req).settings.extendedAttributes else { fuse_reply_err(req, ENOSYS); return }
        replySized(req, size: size) { buffer throws(Errno) in try fs(req).listxattr(FuseInode(ino), into: buffer) }
    }
    ops.removexattr = { req, ino, name in
        guard box(req).settings.extendedAttributes else { fuse_reply_err(req, ENOSYS); return }
        replyError(req) { () throws(Errno) in try fs(req).removexattr(FuseInode(ino), name: name!) }
    }
    ops.access = { req, ino, mask in
        replyError(req) { () throws(Errno) in try fs(req).access(FuseInode(ino), mask: mask) }
    }
    ops.fallocate = { req, ino, mode, offset, length, fi in
        replyError(req) { () throws(Errno) in
            try fs(req).fallocate(FuseInode(ino), handle: fi!.pointee.fh, mode: mode, offset: Int64(offset), length: Int64(length))
        }
    }
    return ops
}

/// Per-thread memory for replies (read data, directory listings, attribute values): one allocation per worker
/// thread, grown on demand, wiped when it grows or the thread ends (read replies carry plaintext).
public final class PerThreadBuffer {
    private let key: pthread_key_t

    private final class Storage {
        var base: UnsafeMutableRawPointer
        var capacity: Int
        init(capacity: Int) {
            self.capacity = capacity
            base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        }
        deinit {
            memset(base, 0, capacity)
            base.deallocate()
        }
    }

    public init() {
        var key = pthread_key_t()
        pthread_key_create(&key) { pointer in
            guard let pointer else { return }
            Unmanaged<Storage>.fromOpaque(pointer).release()
        }
        self.key = key
    }

    /// At least `count` bytes for the calling thread; contents are unspecified.
    @inline(__always)
    public func buffer(_ count: Int) -> UnsafeMutableRawBufferPointer {
        let storage: Storage
        if let existing = pthread_getspecific(key) {
            storage = Unmanaged<Storage>.fromOpaque(existing).takeUnretainedValue()
        } else {
            storage = Storage(capacity: max(count, 64 * 1024))
            pthread_setspecific(key, Unmanaged.passRetained(storage).toOpaque())
        }
        if count > storage.capacity {
            memset(storage.base, 0, storage.capacity)
            storage.base.deallocate()
            storage.capacity = max(count, storage.capacity * 2)
            storage.base = UnsafeMutableRawPointer.allocate(byteCount: storage.capacity, alignment: 64)
        }
        return UnsafeMutableRawBufferPointer(start: storage.base, count: count)
    }
}

enum ReplyBuffer {
    static let current = PerThreadBuffer()
}
