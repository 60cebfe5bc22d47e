import FuseKit
#if canImport(Glibc)
import Glibc
#endif

/// A reader-writer lock around pthread_rwlock_t, heap-allocated so its address never moves.
final class ReadWriteLock {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>
    init() {
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(lock, nil)
    }
    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }
    @inline(__always) func withReadLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
    @inline(__always) func withWriteLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}

/// Per-thread scratch memory for the data path: one allocation per worker thread, grown on demand, so sealing
/// and opening blocks allocates nothing per request.
final class ThreadScratch {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int

    private init(capacity: Int) {
        self.capacity = capacity
        base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
    }

    deinit {
        memset(base, 0, capacity)
        base.deallocate()
    }

    /// At least `count` bytes; contents are unspecified.
    func buffer(_ count: Int) -> UnsafeMutableRawBufferPointer {
        if count > capacity {
            memset(base, 0, capacity)
            base.deallocate()
            capacity = max(count, capacity * 2)
            base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        }
        return UnsafeMutableRawBufferPointer(start: base, count: count)
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { pointer in
            guard let pointer else { return }
            Unmanaged<ThreadScratch>.fromOpaque(pointer).release()
        }
        return key
    }()

    static var current: ThreadScratch {
        if let existing = pthread_getspecific(key) {
            return Unmanaged<ThreadScratch>.fromOpaque(existing).takeUnretainedValue()
        }
        let created = ThreadScratch(capacity: 256 * 1024)
        pthread_setspecific(key, Unmanaged.passRetained(created).toOpaque())
        return created
    }
}

/// pread/pwrite until done or EOF, retrying EINTR.
func preadFully(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno) -> Int {
    var done = 0
    while done < buffer.count {
        let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + Int64(done)))
        if n < 0 {
            if errno == EINTR { continue }
            throw Errno.current
        }
        if n == 0 { break }
        done += n
    }
    return done
}

func pwriteFully(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(Errno) {
    var done = 0
    while done < buffer.count {
        let n = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + Int64(done)))
        if n < 0 {
            if errno == EINTR { continue }
            throw Errno.current
        }
        done += n
    }
}

/// Identifies a backing inode.
struct NodeKey: Hashable {
    let device: UInt64
    let inode: UInt64
    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}

/// Reads up to `count` bytes at `offset` into a new array (shorter at EOF).
func preadArray(_ fd: Int32, count: Int, at offset: Int64) throws(Errno) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    let result: Result<Int, Errno> = bytes.withUnsafeMutableBytes { p in
        Result { () throws(Errno) in try preadFully(fd, p, at: offset) }
    }
    let got = try result.get()
    if got < count { bytes.removeLast(count - got) }
    return bytes
}

func pwriteArray(_ fd: Int32, _ bytes: [UInt8], at offset: Int64) throws(Errno) {
    let result: Result<Void, Errno> = bytes.withUnsafeBytes { p in
        Result { () throws(Errno) in try pwriteFully(fd, p, at: offset) }
    }
    try result.get()
}
