import CFuse
import CFuseWire
#if canImport(Glibc)
import Glibc
#endif

public enum FuseSessionError: Error, CustomStringConvertible {
    case setup(String)
    case mount(String)

    public var description: String {
        switch self {
        case .setup(let why): return why
        case .mount(let why): return why
        }
    }
}

/// How to mount: the options libfuse itself understands are passed through `-o`; the rest is ours.
public struct FuseMountConfiguration {
    /// Options for libfuse's `-o` (fsname=, subtype=, allow_other, ro, default_permissions, auto_unmount, ...).
    public var options: [String] = []
    public var debug = false
    public var maxThreads: UInt32 = 16
    public var maxIdleThreads: UInt32 = 8
    /// The mount's readahead window (its backing device info's `read_ahead_kb`), set by the daemon when it may
    /// (root). The kernel's default is 128 KiB, whatever `max_readahead` the file system asked for: one READ of
    /// at most 128 KiB in flight at a time. Two of FUSE's largest requests (1 MiB each) let the daemon work on the
    /// next while the kernel copies the last (streaming reads of 1 GiB, this VM: vikingfs 1.2–1.6 → 2.1–2.3 GB/s,
    /// passthrough 2.0–2.6 → 3.3–3.6 GB/s). The kernel keeps the smaller of this and `FuseInitSettings.maxReadahead`.
    /// nil: leave the kernel's default.
    public var readaheadKiB: Int? = 2048
    /// FUSE over io_uring (Linux 6.14+): ring entries per CPU queue, used when the kernel offers it (the fuse
    /// module's `enable_uring` parameter is on); 0 keeps every request on /dev/fuse. Each queue's thread is pinned
    /// to its CPU and serves the requests made there (see CFuseWire/uring.c). Each entry holds a buffer as large
    /// as FUSE's largest request (1 MiB here), touched only as far as requests fill it.
    public var ioUringEntriesPerQueue: UInt32 = 4
    /// How long a queue's thread polls for the next request, yielding its CPU, before it sleeps (0: at once).
    /// Polling keeps a caller that waits on each request on its own CPU instead of being woken on the idle one
    /// (untar of the Linux tree over the passthrough: 14 s sleeping at once, 8 s polling 50 µs, less daemon CPU).
    public var ioUringPollMicroseconds: UInt32 = 50
    /// Where FuseKit's own messages go (io_uring set-up, failures of the transport); syslog levels (3 error, 6 info).
    public var log: ((Int32, String) -> Void)?
    public init() {}
}

/// Mounts a `FuseFileSystem` and serves it with libfuse's multithreaded loop until unmounted or signalled.
public enum FuseSession {
    /// Mounts, calls `mounted()` once the mount is live (the place to tell a waiting parent and detach),
    /// serves requests until SIGTERM/SIGINT/SIGHUP or `fusermount3 -u`, then unmounts.
    /// Returns the loop's status (0 on a clean unmount).
    public static func run(_ fileSystem: FuseFileSystem, mountpoint: String, configuration: FuseMountConfiguration,
                           mounted: () -> Void) throws(FuseSessionError) -> Int32 {
        var argv: [String] = ["vikingfs"]
        if configuration.debug { argv.append("-d") }
        if !configuration.options.isEmpty { argv += ["-o", configuration.options.joined(separator: ",")] }
        // libfuse keeps pointers into argv for the session's life; these copies are freed after teardown.
        let cStrings: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        let argvPointer = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: cStrings.count)
        argvPointer.initialize(from: cStrings, count: cStrings.count)
        defer {
            for p in cStrings { free(p) }
            argvPointer.deallocate()
        }
        var args = fuse_args(argc: Int32(argv.count), argv: argvPointer, allocated: 0)
        defer { fuse_opt_free_args(&args) }

        var ops = makeOperations()
        let box = Unmanaged.passRetained(FileSystemBox(fileSystem))
        defer { box.release() }

        raiseDescriptorLimit()
        ProcessMemory.limitMallocArenas(2)

        guard let session = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, box.toOpaque()) else {
            throw .setup("libfuse rejected the options (see the message above): \(configuration.options.joined(separator: ","))")
        }
        defer { fuse_session_destroy(session) }
        box.takeUnretainedValue().session = session
        guard fuse_set_signal_handlers(session) == 0 else { throw .setup("cannot install signal handlers") }
        defer { fuse_remove_signal_handlers(session) }
        // Resolved before mounting: afterwards, looking at the mount point would wait for this very daemon.
        var mountedPath: String?
        if let resolved = realpath(mountpoint, nil) {
            mountedPath = String(cString: resolved)
            free(resolved)
        }
        guard fuse_session_mount(session, mountpoint) == 0 else {
            throw .mount("cannot mount on \(mountpoint) (see the message above)")
        }
        defer { fuse_session_unmount(session) }
        // Before the loop reads INIT: libfuse 3.14's INIT reply lacks flags FuseKit needs (see CFuseWire.h).
        FuseKitLog.sink = configuration.log
        cfusewire_set_logger { level, message in
            if let message { FuseKitLog.sink?(level, String(cString: message)) }
        }
        cfusewire_uring_request(configuration.ioUringEntriesPerQueue, configuration.ioUringPollMicroseconds)
        let installed = cfusewire_install(session)
        guard installed == 0 else { throw .setup("cannot route the FUSE device through FuseKit: \(Errno(-installed))") }
        // After the loop, before the session goes: the queue threads dispatch through it.
        defer { cfusewire_uring_stop() }

        if let kib = configuration.readaheadKiB, let mountedPath { setReadahead(kib, forMountAt: mountedPath) }

        mounted()

        guard let loopConfig = fuse_loop_cfg_create() else { throw .setup("fuse_loop_cfg_create failed") }
        defer { fuse_loop_cfg_destroy(loopConfig) }
        fuse_loop_cfg_set_max_threads(loopConfig, configuration.maxThreads)
        fuse_loop_cfg_set_idle_threads(loopConfig, configuration.maxIdleThreads)
        fuse_loop_cfg_set_clone_fd(loopConfig, 0)
        return cfuse_session_loop_mt(session, loopConfig)
    }
}

/// Set once per mount, before the first request; read by the io_uring transport's threads.
enum FuseKitLog {
    nonisolated(unsafe) static var sink: ((Int32, String) -> Void)?
}

/// Writes the readahead window of the FUSE mount at `path` (found in /proc/self/mountinfo, which asks nothing of
/// the mount itself) to its backing device info. Best effort: without root the file is not writable.
private func setReadahead(_ kib: Int, forMountAt path: String) {
    guard let mountinfo = readWholeFile("/proc/self/mountinfo") else { return }
    // Mount points are written with space, tab, newline and backslash as octal escapes.
    var escaped: [UInt8] = []
    for byte in path.utf8 {
        switch byte {
        case 0x20, 0x09, 0x0a, 0x5c: escaped += Array("\\0\(String(byte, radix: 8))".utf8)
        default: escaped.append(byte)
        }
    }
    var device: [UInt8]?
    for line in mountinfo.split(separator: 0x0a) {
        let fields = line.split(separator: 0x20)
        guard fields.count > 4, Array(fields[4]) == escaped, let dash = fields.firstIndex(where: { Array($0) == [0x2d] }),
              dash + 1 < fields.count, fields[dash + 1].starts(with: Array("fuse".utf8)) else { continue }
        device = Array(fields[2])  // the last match: the mount on top
    }
    guard let device else { return }
    let fd = open("/sys/class/bdi/\(String(decoding: device, as: UTF8.self))/read_ahead_kb", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let text = Array("\(kib)\n".utf8)
    _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

private func readWholeFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return n == 0 ? bytes : nil }
        bytes += chunk[0..<n]
    }
}

/// File systems over an `InodeTable` keep one descriptor per inode the kernel caches (as libfuse's
/// passthrough_hp does): allow as many as the kernel allows (`fs.nr_open`) when privileged, else the hard limit.
private func raiseDescriptorLimit() {
    let resource = Int32(RLIMIT_NOFILE.rawValue)
    var limit = rlimit()
    guard getrlimit(resource, &limit) == 0 else { return }
    var ceiling = limit.rlim_max
    let fd = open("/proc/sys/fs/nr_open", O_RDONLY | O_CLOEXEC)
    if fd >= 0 {
        var text = [CChar](repeating: 0, count: 32)
        if read(fd, &text, 31) > 0 { ceiling = max(ceiling, rlim_t(strtoul(text, nil, 10))) }
        close(fd)
    }
    var wanted = rlimit(rlim_cur: ceiling, rlim_max: ceiling)
    if setrlimit(resource, &wanted) != 0 {
        wanted = rlimit(rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max)
        _ = setrlimit(resource, &wanted)
    }
}

/// Detaching from the terminal the way an operator expects: the parent stays until the mount is live, so errors
/// reach the terminal with a non-zero exit code; only then does it exit 0 and the child carry on alone.
public enum Daemon {
    public struct Readiness {
        let writeEnd: Int32

        /// Tells the waiting parent the mount is live, then detaches: new session, cwd /, stdio to /dev/null.
        public func signalReady() {
            var byte: UInt8 = 1
            _ = write(writeEnd, &byte, 1)
            close(writeEnd)
            _ = setsid()
            _ = chdir("/")
            let null = open("/dev/null", O_RDWR)
            if null >= 0 {
                dup2(null, 0); dup2(null, 1); dup2(null, 2)
                if null > 2 { close(null) }
            }
        }
    }

    /// Forks. Returns in the child; the parent never returns: it exits 0 when the child signals readiness, or
    /// with the child's exit status when the child exits first.
    public static func detach() -> Readiness {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            perror("pipe")
            exit(1)
        }
        let pid = fork()
        if pid < 0 { perror("fork"); exit(1) }
        if pid == 0 {
            close(fds[0])
            return Readiness(writeEnd: fds[1])
        }
        close(fds[1])
        var byte: UInt8 = 0
        var n: Int
        repeat { n = read(fds[0], &byte, 1) } while n < 0 && cfuse_errno() == EINTR
        if n == 1 { exit(0) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && cfuse_errno() == EINTR {}
        // WIFEXITED / WEXITSTATUS, spelled out: the macros do not import.
        if status & 0x7f == 0 { exit((status >> 8) & 0xff) }
        exit(1)
    }
}
