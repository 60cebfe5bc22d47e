import FuseKit
#if canImport(Glibc)
import Glibc
#endif

/// Per-thread scratch memory for the data path (ciphertext of a request's blocks, nonces): one allocation per
/// worker thread, grown on demand, so sealing and opening blocks allocates nothing per request.
enum ThreadScratch {
    static let current = PerThreadBuffer()
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
