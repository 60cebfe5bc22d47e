import CFuse
#if canImport(Glibc)
import Glibc
#endif

/// The file system behind the current request. `init` returns the same `private_data` it was given, so every
/// callback reaches the Swift object through `fuse_get_context()` without any global.
@inline(__always)
private func fs() -> FuseFileSystem {
    let box = Unmanaged<FileSystemBox>.fromOpaque(fuse_get_context()!.pointee.private_data).takeUnretainedValue()
    return box.fileSystem
}

final class FileSystemBox {
    let fileSystem: FuseFileSystem
    var settings = FuseInitSettings()
    init(_ fileSystem: FuseFileSystem) { self.fileSystem = fileSystem }
}

@inline(__always)
private func path(_ p: UnsafePointer<CChar>?) -> FusePath? { p.map(FusePath.init(cString:)) }

@inline(__always)
private func call(_ body: () throws(Errno) -> Void) -> Int32 {
    do { try body(); return 0 } catch { return -error.rawValue }
}

@inline(__always)
private func handle(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> UInt64? { fi?.pointee.fh }

/// The C operation table. Each entry captures nothing and reaches the file system through the FUSE context.
func makeOperations() -> fuse_operations {
    var ops = fuse_operations()
    ops.`init` = { conn, cfg in
        let context = fuse_get_context()!.pointee
        let box = Unmanaged<FileSystemBox>.fromOpaque(context.private_data).takeUnretainedValue()
        var settings = box.settings
        box.fileSystem.initialize(settings: &settings)
        if let cfg {
            cfg.pointee.use_ino = settings.useInodeNumbers ? 1 : 0
            cfg.pointee.readdir_ino = settings.useInodeNumbers ? 1 : 0
            cfg.pointee.hard_remove = settings.hardRemove ? 1 : 0
            cfg.pointee.nullpath_ok = settings.nullPathOK ? 1 : 0
            cfg.pointee.attr_timeout = settings.attributeTimeout
            cfg.pointee.entry_timeout = settings.entryTimeout
            cfg.pointee.negative_timeout = settings.negativeTimeout
        }
        if let conn {
            if settings.writebackCache && (conn.pointee.capable & UInt32(FUSE_CAP_WRITEBACK_CACHE)) != 0 {
                conn.pointee.want |= UInt32(FUSE_CAP_WRITEBACK_CACHE)
            }
            if settings.parallelDirOps && (conn.pointee.capable & UInt32(FUSE_CAP_PARALLEL_DIROPS)) != 0 {
                conn.pointee.want |= UInt32(FUSE_CAP_PARALLEL_DIROPS)
            }
            conn.pointee.max_write = settings.maxWrite
            conn.pointee.max_readahead = settings.maxReadahead
        }
        box.settings = settings
        return context.private_data
    }
    ops.destroy = { data in
        guard let data else { return }
        Unmanaged<FileSystemBox>.fromOpaque(data).takeUnretainedValue().fileSystem.destroy()
    }
    ops.getattr = { p, st, fi in
        call { () throws(Errno) in st!.pointee = try fs().getattr(path(p), handle: handle(fi)) }
    }
    ops.readlink = { p, buf, size in
        call { () throws(Errno) in try fs().readlink(FusePath(cString: p!), into: UnsafeMutableBufferPointer(start: buf, count: size)) }
    }
    ops.mknod = { p, mode, dev in call { () throws(Errno) in try fs().mknod(FusePath(cString: p!), mode: mode, device: dev) } }
    ops.mkdir = { p, mode in call { () throws(Errno) in try fs().mkdir(FusePath(cString: p!), mode: mode) } }
    ops.unlink = { p in call { () throws(Errno) in try fs().unlink(FusePath(cString: p!)) } }
    ops.rmdir = { p in call { () throws(Errno) in try fs().rmdir(FusePath(cString: p!)) } }
    ops.symlink = { target, p in
        call { () throws(Errno) in try fs().symlink(target: FusePath(cString: target!), at: FusePath(cString: p!)) }
    }
    ops.rename = { from, to, flags in
        call { () throws(Errno) in try fs().rename(FusePath(cString: from!), to: FusePath(cString: to!), flags: flags) }
    }
    ops.link = { from, to in call { () throws(Errno) in try fs().link(FusePath(cString: from!), to: FusePath(cString: to!)) } }
    ops.chmod = { p, mode, fi in call { () throws(Errno) in try fs().chmod(path(p), mode: mode, handle: handle(fi)) } }
    ops.chown = { p, uid, gid, fi in call { () throws(Errno) in try fs().chown(path(p), uid: uid, gid: gid, handle: handle(fi)) } }
    ops.truncate = { p, size, fi in call { () throws(Errno) in try fs().truncate(path(p), size: Int64(size), handle: handle(fi)) } }
    ops.open = { p, fi in
        call { () throws(Errno) in
            let result = try fs().open(FusePath(cString: p!), flags: fi!.pointee.flags)
            apply(result, to: fi!)
        }
    }
    ops.create = { p, mode, fi in
        call { () throws(Errno) in
            let result = try fs().create(FusePath(cString: p!), mode: mode, flags: fi!.pointee.flags)
            apply(result, to: fi!)
        }
    }
    ops.read = { p, buf, size, offset, fi in
        do throws(Errno) {
            return Int32(try fs().read(path(p), handle: fi!.pointee.fh,
                                       into: UnsafeMutableRawBufferPointer(start: buf, count: size), offset: Int64(offset)))
        } catch { return -error.rawValue }
    }
    ops.write = { p, buf, size, offset, fi in
        do throws(Errno) {
            return Int32(try fs().write(path(p), handle: fi!.pointee.fh,
                                        from: UnsafeRawBufferPointer(start: buf, count: size), offset: Int64(offset)))
        } catch { return -error.rawValue }
    }
    ops.statfs = { p, st in call { () throws(Errno) in st!.pointee = try fs().statfs(FusePath(cString: p!)) } }
    ops.flush = { p, fi in call { () throws(Errno) in try fs().flush(path(p), handle: fi!.pointee.fh) } }
    ops.release = { p, fi in fs().release(path(p), handle: fi!.pointee.fh); return 0 }
    ops.fsync = { p, datasync, fi in
        call { () throws(Errno) in try fs().fsync(path(p), handle: fi!.pointee.fh, dataOnly: datasync != 0) }
    }
    ops.setxattr = { p, name, value, size, flags in
        call { () throws(Errno) in
            try fs().setxattr(FusePath(cString: p!), name: name!, value: UnsafeRawBufferPointer(start: value, count: size), flags: flags)
        }
    }
    ops.getxattr = { p, name, value, size in
        do throws(Errno) {
            return Int32(try fs().getxattr(FusePath(cString: p!), name: name!,
                                           into: UnsafeMutableRawBufferPointer(start: value, count: size)))
        } catch { return -error.rawValue }
    }
    ops.listxattr = { p, list, size in
        do throws(Errno) {
            return Int32(try fs().listxattr(FusePath(cString: p!), into: UnsafeMutableRawBufferPointer(start: list, count: size)))
        } catch { return -error.rawValue }
    }
    ops.removexattr = { p, name in call { () throws(Errno) in try fs().removexattr(FusePath(cString: p!), name: name!) } }
    ops.opendir = { p, fi in call { () throws(Errno) in fi!.pointee.fh = try fs().opendir(FusePath(cString: p!)) } }
    ops.readdir = { p, buf, filler, _, fi, _ in
        call { () throws(Errno) in
            try fs().readdir(path(p), handle: fi!.pointee.fh, filler: DirectoryFiller(buffer: buf, filler: filler!))
        }
    }
    ops.releasedir = { p, fi in fs().releasedir(path(p), handle: fi!.pointee.fh); return 0 }
    ops.fsyncdir = { p, datasync, fi in
        call { () throws(Errno) in try fs().fsyncdir(path(p), handle: fi!.pointee.fh, dataOnly: datasync != 0) }
    }
    ops.access = { p, mask in call { () throws(Errno) in try fs().access(FusePath(cString: p!), mask: mask) } }
    ops.utimens = { p, tv, fi in call { () throws(Errno) in try fs().utimens(path(p), times: tv, handle: handle(fi)) } }
    ops.fallocate = { p, mode, offset, length, fi in
        call { () throws(Errno) in
            try fs().fallocate(path(p), mode: mode, offset: Int64(offset), length: Int64(length), handle: fi!.pointee.fh)
        }
    }
    return ops
}

private func apply(_ result: OpenResult, to fi: UnsafeMutablePointer<fuse_file_info>) {
    fi.pointee.fh = result.handle
    fi.pointee.direct_io = result.directIO ? 1 : 0
    fi.pointee.keep_cache = result.keepCache ? 1 : 0
}
