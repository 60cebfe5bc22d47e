import FuseKit
import VikingCrypto
import VikingFormat
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// The state of one open backing inode, shared by every handle open on it.
///
/// Content is guarded by `lock`: reads share it, writes and truncates hold it alone. Different files never
/// share a lock, so writers of different files never wait on each other.
final class FileNode {
    /// The backing file, opened read-write unless the mount or the file forbids it.
    private(set) var fd: Int32
    let writableFD: Bool
    /// The account whose key seals this file (from its path when first opened).
    let account: String
    /// The backing root, to name the file in log lines.
    private let backingRoot: String
    private(set) var kind: FileKind
    private(set) var cipher: NativeFileCipher?
    /// Plaintext size, authoritative while the node is open (nobody else writes the backing dir meanwhile).
    private(set) var size: Int64
    /// The backing file may have unallocated ranges inside it (holes): a write there needs new space too, so it is
    /// reserved like a write at the end. False for files written front to back, which then skip the reservation.
    /// nil until a write inside the file first asks (SEEK_HOLE): most opens only read and never pay for it.
    private var mayHaveHoles: Bool?
    /// OVE1 content, opened and authenticated once per load; written back whole on flush/fsync/release.
    private var ove1Plaintext: [UInt8] = []
    private(set) var ove1Dirty = false
    let lock = ReadWriteLock()

    init(fd: Int32, writableFD: Bool, account: String, backingRoot: String, kind: FileKind,
         cipher: NativeFileCipher?, size: Int64, ove1Plaintext: [UInt8]) {
        self.fd = fd
        self.writableFD = writableFD
        self.account = account
        self.backingRoot = backingRoot
        self.kind = kind
        self.cipher = cipher
        self.size = size
        self.ove1Plaintext = ove1Plaintext
    }

    deinit {
        close(fd)
        if !ove1Plaintext.isEmpty { wipe(&ove1Plaintext) }
    }

    /// Loads a node for an opened backing fd: classifies the file and opens its header (native) or its whole
    /// envelope (OVE1). A file that starts with a magic but does not open is tampered (or under another key).
    static func load(fd: Int32, st: stat, writableFD: Bool, account: String,
                     context: FileSystemContext) throws(Errno) -> FileNode {
        let root = context.backingPath
        var displayPath: String { FileNode.relativePath(of: fd, backingRoot: root) ?? "(unlinked file)" }
        let prefix = try preadArray(fd, count: NativeFormat.headerLength, at: 0)
        let kind = FileKind.classify(prefix: prefix, size: Int64(st.st_size))
        switch kind {
        case .legacy where context.refuseLegacy:
            Log.error("\(displayPath): not sealed (no VKFS or OVE1 magic) and no_legacy is set; refusing it (EIO)")
            throw .io
        case .empty, .legacy:
            return FileNode(fd: fd, writableFD: writableFD, account: account, backingRoot: root,
                            kind: kind, cipher: nil, size: Int64(st.st_size), ove1Plaintext: [])
        case .native:
            do {
                let header = try NativeHeader.parse(prefix)
                let (cipher, _) = try SealedFile.openNative(header, account: account, keyRing: context.keyRing)
                let size = header.layout.plaintextSize(forBacking: Int64(st.st_size))
                return FileNode(fd: fd, writableFD: writableFD, account: account, backingRoot: root,
                                kind: .native, cipher: cipher, size: size, ove1Plaintext: [])
            } catch {
                Log.error("\(displayPath): \(error); refusing to open it (EIO)")
                throw .io
            }
        case .ove1:
            guard Int64(st.st_size) - Int64(OVE1.overhead) <= Int64(context.ove1MemoryLimit) else {
                Log.error("\(displayPath): OVE1 file of \(st.st_size) bytes exceeds ove1_max_size=\(context.ove1MemoryLimit) (EFBIG)")
                throw .fileTooLarge
            }
            let bytes = try preadArray(fd, count: Int(st.st_size), at: 0)
            do {
                let opened = try SealedFile.openWhole(bytes, account: account, keyRing: context.keyRing)
                return FileNode(fd: fd, writableFD: writableFD, account: account, backingRoot: root,
                                kind: .ove1, cipher: nil, size: Int64(opened.plaintext.count), ove1Plaintext: opened.plaintext)
            } catch {
                Log.error("\(displayPath): \(error); refusing to open it (EIO)")
                throw .io
            }
        }
    }

    // MARK: Reading

    func read(into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try lock.withReadLock { () throws(Errno) -> Int in
            switch kind {
            case .empty:
                return 0
            case .legacy:
                return try syscallRetrying { pread(fd, buffer.baseAddress, buffer.count, off_t(offset)) }
            case .ove1:
                guard offset < size else { return 0 }
                let n = Int(min(Int64(buffer.count), size - offset))
                ove1Plaintext.withUnsafeBytes { p in
                    buffer.baseAddress!.copyMemory(from: p.baseAddress! + Int(offset), byteCount: n)
                }
                return n
            case .native:
                return try readNative(into: buffer, offset: offset)
            }
        }
    }

    /// Requests are worked through in pieces of this many plaintext bytes (at least one block): the per-thread
    /// scratch then stays near 130 KiB instead of growing to FUSE's 1 MiB requests in every worker thread.
    static let pieceBytes = 128 * 1024

    private func readNative(into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        guard let cipher, offset < size, buffer.count > 0 else { return 0 }
        let blockSize = Int64(cipher.layout.blockSize)
        let end = min(offset + Int64(buffer.count), size)
        let blocksPerPiece = max(1, Int64(FileNode.pieceBytes) / blockSize)
        var pieceStart = offset
        while pieceStart < end {
            let pieceEnd = min(end, (pieceStart / blockSize + blocksPerPiece) * blockSize)
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(pieceStart - offset)..<Int(pieceEnd - offset)])
            try readNativePiece(cipher, into: target, offset: pieceStart, end: pieceEnd)
            pieceStart = pieceEnd
        }
        return Int(end - offset)
    }

    /// Opens the blocks holding [offset, end) (end within the file) into `buffer`, with one pread.
    private func readNativePiece(_ cipher: NativeFileCipher, into buffer: UnsafeMutableRawBufferPointer,
                                 offset: Int64, end: Int64) throws(Errno) {
        let layout = cipher.layout
        let blockSize = Int64(layout.blockSize)
        let storedBlock = layout.storedBlockSize
        let first = offset / blockSize
        let last = (end - 1) / blockSize
        let storedStart = layout.storedOffset(ofBlock: first)
        let storedEnd = min(layout.storedOffset(ofBlock: last) + Int64(storedBlock), layout.backingSize(forPlaintext: size))
        let storedCount = Int(storedEnd - storedStart)
        let scratch = ThreadScratch.current.buffer(storedCount + layout.blockSize)
        let stored = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<storedCount])
        let blockBuffer = UnsafeMutableRawBufferPointer(rebasing: scratch[storedCount...])
        let got = try preadFully(fd, stored, at: storedStart)
        var index = first
        while index <= last {
            let blockStart = index * blockSize
            let plainLength = Int(min(blockSize, size - blockStart))
            let at = Int(index - first) * storedBlock
            let available = min(plainLength + NativeFormat.blockOverhead, got - at)
            let from = Int(max(offset, blockStart) - blockStart)
            let to = Int(min(end, blockStart + Int64(plainLength)) - blockStart)
            do {
                guard available == plainLength + NativeFormat.blockOverhead else {
                    throw FormatError.truncatedBlock(index: UInt64(index), storedBytes: max(0, available))
                }
                let slot = UnsafeRawBufferPointer(rebasing: stored[at..<(at + available)])
                if from == 0 && to == plainLength {
                    let destination = Int(blockStart - offset)
                    _ = try cipher.openBlock(index: UInt64(index), stored: slot,
                                             output: UnsafeMutableRawBufferPointer(rebasing: buffer[destination..<(destination + plainLength)]))
                } else {
                    _ = try cipher.openBlock(index: UInt64(index), stored: slot, output: blockBuffer)
                    let destination = Int(blockStart + Int64(from) - offset)
                    (buffer.baseAddress! + destination).copyMemory(from: blockBuffer.baseAddress! + from, byteCount: to - from)
                }
            } catch {
                Log.error("\(displayPath): \(error) (EIO)")
                throw .io
            }
            index += 1
        }
    }

    // MARK: Writing

    /// Writes at any offset. Partial blocks are read, merged and re-sealed; whole blocks are sealed straight
    /// from the caller's buffer; each 128 KiB piece of sealed blocks goes to the backing file in one pwrite.
    func write(_ data: UnsafeRawBufferPointer, offset: Int64, context: FileSystemContext) throws(Errno) -> Int {
        guard kind != .legacy else { throw .readOnlyFileSystem }
        guard writableFD else { throw .badFile }
        let end = offset + Int64(data.count)
        guard offset >= 0, end >= offset, end <= context.maxFileSize else { throw .fileTooLarge }
        return try lock.withWriteLock { () throws(Errno) -> Int in
            try ensureSealedForm(context: context)
            if kind == .ove1 {
                guard end <= Int64(context.ove1MemoryLimit) else {
                    Log.error("\(displayPath): OVE1 file would grow past ove1_max_size=\(context.ove1MemoryLimit) (EFBIG)")
                    throw .fileTooLarge
                }
                if Int64(ove1Plaintext.count) < end {
                    ove1Plaintext.append(contentsOf: repeatElement(0, count: Int(end) - ove1Plaintext.count))
                }
                ove1Plaintext.withUnsafeMutableBytes { p in
                    (p.baseAddress! + Int(offset)).copyMemory(from: data.baseAddress!, byteCount: data.count)
                }
                size = Int64(ove1Plaintext.count)
                ove1Dirty = true
                return data.count
            }
            // In pieces (see `pieceBytes`), split at block boundaries so each piece seals whole blocks.
            guard let blockSize = cipher.map({ Int64($0.layout.blockSize) }) else { return data.count }
            let blocksPerPiece = max(1, Int64(FileNode.pieceBytes) / blockSize)
            let end = offset + Int64(data.count)
            // The whole request's space first: a full disk fails it before any piece is written.
            if let layout = cipher?.layout {
                let lastBlockEnd = layout.storedOffset(ofBlock: (end - 1) / blockSize) + Int64(layout.storedBlockSize)
                try reserveSpace(from: layout.storedOffset(ofBlock: offset / blockSize),
                                 to: min(layout.backingSize(forPlaintext: max(size, end)), lastBlockEnd))
            }
            var pieceStart = offset
            while pieceStart < end {
                let pieceEnd = min(end, (pieceStart / blockSize + blocksPerPiece) * blockSize)
                try writeNative(UnsafeRawBufferPointer(rebasing: data[Int(pieceStart - offset)..<Int(pieceEnd - offset)]), offset: pieceStart)
                pieceStart = pieceEnd
            }
            return data.count
        }
    }

    private func writeNative(_ data: UnsafeRawBufferPointer, offset: Int64) throws(Errno) {
        guard let cipher, data.count > 0 else { return }
        let layout = cipher.layout
        let blockSize = Int64(layout.blockSize)
        let storedBlock = layout.storedBlockSize
        let end = offset + Int64(data.count)
        // A write that starts beyond the current last block first completes that partial block with zeros;
        // the blocks in between stay holes.
        // A write past the end leaves the blocks in between as holes.
        if offset / blockSize > (size + blockSize - 1) / blockSize { mayHaveHoles = true }
        if offset > size && size % blockSize != 0 && offset / blockSize > size / blockSize {
            try resizeBlock(size / blockSize, to: Int(blockSize))
            size = (size / blockSize + 1) * blockSize
        }
        let first = offset / blockSize
        let last = (end - 1) / blockSize
        let blockCount = Int(last - first + 1)
        // Scratch layout: sealed blocks | one plaintext block | one stored block (for merges) | nonces.
        let sealedArea = blockCount * storedBlock
        let mergeArea = sealedArea + layout.blockSize
        let noncesArea = mergeArea + storedBlock
        let scratch = ThreadScratch.current.buffer(noncesArea + blockCount * NativeFormat.nonceLength)
        let blockBuffer = UnsafeMutableRawBufferPointer(rebasing: scratch[sealedArea..<mergeArea])
        let storedBuffer = UnsafeMutableRawBufferPointer(rebasing: scratch[mergeArea..<noncesArea])
        // One call to the random generator for every nonce of this write, not one per block.
        let nonces = UnsafeMutableRawBufferPointer(rebasing: scratch[noncesArea...])
        do { try freshNonces(nonces) } catch {
            Log.error("\(displayPath): random generator failed: \(error)")
            throw .io
        }
        var written = 0
        var index = first
        while index <= last {
            let blockStart = index * blockSize
            let oldLength = blockStart < size ? Int(min(blockSize, size - blockStart)) : 0
            let from = Int(max(offset, blockStart) - blockStart)
            let to = Int(min(end, blockStart + blockSize) - blockStart)
            let newLength = max(oldLength, to)
            let slot = UnsafeMutableRawBufferPointer(rebasing: scratch[written..<(written + newLength + NativeFormat.blockOverhead)])
            do {
                if from == 0 && to >= oldLength {
                    let source = UnsafeRawBufferPointer(rebasing: data[Int(blockStart - offset)..<(Int(blockStart - offset) + to)])
                    try cipher.sealBlock(index: UInt64(index), nonce: nonce(nonces, Int(index - first)), plaintext: source, output: slot)
                } else {
                    let plain = UnsafeMutableRawBufferPointer(rebasing: blockBuffer[0..<newLength])
                    if oldLength > 0 { try readBlock(index, length: oldLength, into: plain, using: storedBuffer) }
                    if from > oldLength { memset(plain.baseAddress! + oldLength, 0, from - oldLength) }
                    (plain.baseAddress! + from).copyMemory(from: data.baseAddress! + Int(blockStart + Int64(from) - offset), byteCount: to - from)
                    try cipher.sealBlock(index: UInt64(index), nonce: nonce(nonces, Int(index - first)), plaintext: UnsafeRawBufferPointer(plain), output: slot)
                }
            } catch let e as Errno {
                throw e
            } catch {
                Log.error("\(displayPath): cannot seal block \(index): \(error)")
                throw .io
            }
            written += newLength + NativeFormat.blockOverhead
            index += 1
        }
        let storedStart = layout.storedOffset(ofBlock: first)
        try pwriteFully(fd, UnsafeRawBufferPointer(rebasing: scratch[0..<written]), at: storedStart)
        size = max(size, end)
    }

    /// Before a write that grows the backing file, reserve the space it needs: a full disk then fails the write
    /// with ENOSPC before any byte changes, instead of leaving a torn block at the end of the file.
    /// The backing size follows from the plaintext size this node keeps, so no fstat is needed.
    private func reserveSpace(from start: Int64, to end: Int64) throws(Errno) {
        guard let layout = cipher?.layout else { return }
        let current = layout.backingSize(forPlaintext: size)
        let from = start >= current || backingMayHaveHoles(below: current) ? start : current
        guard end > from else { return }
        if GNU.fallocate(fd, mode: GNU.fallocKeepSize, offset: from, length: end - from) != 0 {
            let error = Errno.current
            // Filesystems without fallocate simply do not get the guarantee.
            if error == Errno(EOPNOTSUPP) || error == Errno(ENOSYS) { return }
            if error == .noSpace { Log.warning("\(displayPath): no space left on the backing file system (ENOSPC)") }
            throw error
        }
    }

    /// Allocation counts (st_blocks) can hide holes (metadata blocks, preallocation), so this asks for one.
    private func backingMayHaveHoles(below backingSize: Int64) -> Bool {
        if let known = mayHaveHoles { return known }
        var found = false
        if backingSize > Int64(NativeFormat.headerLength) {
            let hole = lseek(fd, off_t(NativeFormat.headerLength), GNU.seekHole)
            found = hole < 0 || Int64(hole) < backingSize
        }
        mayHaveHoles = found
        return found
    }

    /// Random nonces for a batch of blocks; an all-zero nonce is reserved for holes and never used.
    private func freshNonces(_ area: UnsafeMutableRawBufferPointer) throws {
        try SecureRandom.fillPublic(area)
        var at = 0
        while at + NativeFormat.nonceLength <= area.count {
            let one = UnsafeMutableRawBufferPointer(rebasing: area[at..<(at + NativeFormat.nonceLength)])
            while one.allSatisfy({ $0 == 0 }) { try SecureRandom.fillPublic(one) }
            at += NativeFormat.nonceLength
        }
    }

    @inline(__always)
    private func nonce(_ area: UnsafeMutableRawBufferPointer, _ k: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: area[(k * NativeFormat.nonceLength)..<((k + 1) * NativeFormat.nonceLength)])
    }

    /// Opens the first `length` plaintext bytes of block `index` into `output`, reading the stored block into
    /// `scratch` (at least one stored block long); refuses a damaged block.
    private func readBlock(_ index: Int64, length: Int, into output: UnsafeMutableRawBufferPointer,
                           using scratch: UnsafeMutableRawBufferPointer) throws(Errno) {
        guard let cipher else { throw .io }
        let storedCount = length + NativeFormat.blockOverhead
        let stored = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<storedCount])
        let got = try preadFully(fd, stored, at: cipher.layout.storedOffset(ofBlock: index))
        do {
            guard got == storedCount else { throw FormatError.truncatedBlock(index: UInt64(index), storedBytes: got) }
            _ = try cipher.openBlock(index: UInt64(index), stored: UnsafeRawBufferPointer(stored), output: output)
        } catch {
            Log.error("\(displayPath): \(error); refusing to write over it (EIO)")
            throw .io
        }
    }

    /// Re-seals block `index` with a new plaintext length (zero-extended or cut).
    private func resizeBlock(_ index: Int64, to newLength: Int) throws(Errno) {
        guard let cipher else { throw .io }
        let blockSize = Int64(cipher.layout.blockSize)
        let oldLength = Int(max(0, min(blockSize, size - index * blockSize)))
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: max(oldLength, newLength), alignment: 16)
        // Holds the old stored block while it is read, then the re-sealed one.
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(oldLength, newLength) + NativeFormat.blockOverhead, alignment: 16)
        let sealed = UnsafeMutableRawBufferPointer(rebasing: storage[0..<(newLength + NativeFormat.blockOverhead)])
        defer {
            memset(plain.baseAddress!, 0, plain.count)
            plain.deallocate()
            storage.deallocate()
        }
        if oldLength > 0 {
            try readBlock(index, length: oldLength, into: UnsafeMutableRawBufferPointer(rebasing: plain[0..<oldLength]), using: storage)
        }
        if newLength > oldLength { memset(plain.baseAddress! + oldLength, 0, newLength - oldLength) }
        do {
            try cipher.sealBlock(index: UInt64(index), plaintext: UnsafeRawBufferPointer(rebasing: plain[0..<newLength]), output: sealed)
        } catch {
            Log.error("\(displayPath): cannot seal block \(index): \(error)")
            throw .io
        }
        let at = cipher.layout.storedOffset(ofBlock: index)
        try reserveSpace(from: at, to: at + Int64(sealed.count))
        try pwriteFully(fd, UnsafeRawBufferPointer(sealed), at: at)
    }

    /// Gives an empty backing file its sealed form (the mount's format) before the first byte lands.
    private func ensureSealedForm(context: FileSystemContext) throws(Errno) {
        guard kind == .empty else { return }
        switch context.newFileFormat {
        case .ove1:
            kind = .ove1
            ove1Plaintext = []
            ove1Dirty = true
        default:
            let created = try context.createNativeCipher(account: account)
            try pwriteArray(fd, created.header.serialized(), at: 0)
            cipher = created
            kind = .native
        }
    }

    // MARK: Size changes

    func truncate(to newSize: Int64, context: FileSystemContext) throws(Errno) {
        guard kind != .legacy else { throw .readOnlyFileSystem }
        guard writableFD else { throw .badFile }
        guard newSize >= 0, newSize <= context.maxFileSize else { throw .fileTooLarge }
        try lock.withWriteLock { () throws(Errno) in try truncateLocked(to: newSize, context: context) }
    }

    private func truncateLocked(to newSize: Int64, context: FileSystemContext) throws(Errno) {
        if kind == .empty && newSize == 0 { return }
        try ensureSealedForm(context: context)
        if kind == .ove1 {
            guard newSize <= Int64(context.ove1MemoryLimit) else { throw .fileTooLarge }
            if Int64(ove1Plaintext.count) > newSize {
                ove1Plaintext.removeLast(ove1Plaintext.count - Int(newSize))
            } else {
                ove1Plaintext.append(contentsOf: repeatElement(0, count: Int(newSize) - ove1Plaintext.count))
            }
            size = newSize
            ove1Dirty = true
            return
        }
        guard let cipher, newSize != size else { return }
        let layout = cipher.layout
        let blockSize = Int64(layout.blockSize)
        if newSize < size {
            if newSize % blockSize != 0 { try resizeBlock(newSize / blockSize, to: Int(newSize % blockSize)) }
        } else if size % blockSize != 0 {
            let index = size / blockSize
            let newLength = newSize / blockSize == index ? Int(newSize - index * blockSize) : Int(blockSize)
            try resizeBlock(index, to: newLength)
        }
        _ = try syscallRetrying { ftruncate(fd, off_t(layout.backingSize(forPlaintext: newSize))) }
        if newSize > size { mayHaveHoles = true }
        size = newSize
    }

    /// fallocate mode 0: the size grows to cover the range (as holes) and the backing space is reserved.
    /// A range that covers all the growth leaves the file as free of holes as it was: writes into it (fio's
    /// layout, databases preallocating) then skip the per-write reservation.
    func allocate(offset: Int64, length: Int64, context: FileSystemContext) throws(Errno) {
        guard kind != .legacy else { throw .readOnlyFileSystem }
        guard writableFD else { throw .badFile }
        let end = offset + length
        guard end <= context.maxFileSize else { throw .fileTooLarge }
        try lock.withWriteLock { () throws(Errno) in
            let oldSize = size
            // Asked before the growth: SEEK_HOLE cannot tell reserved space from a hole afterwards.
            let hadHoles = oldSize == 0 ? false : cipher.map { backingMayHaveHoles(below: $0.layout.backingSize(forPlaintext: oldSize)) }
            if end > oldSize { try truncateLocked(to: end, context: context) }
            guard kind == .native, let cipher else { return }
            let from = cipher.layout.storedOffset(ofBlock: offset / Int64(cipher.layout.blockSize))
            let to = cipher.layout.backingSize(forPlaintext: end)
            guard to > from else { return }
            _ = try syscallRetrying { GNU.fallocate(fd, mode: GNU.fallocKeepSize, offset: from, length: to - from) }
            if end > oldSize && from <= cipher.layout.backingSize(forPlaintext: oldSize), let hadHoles { mayHaveHoles = hadHoles }
        }
    }

    // MARK: Durability

    /// Seals dirty OVE1 content to a hidden temporary file beside the file and renames it into place: a crash
    /// leaves the old envelope or the new one. `relativePath` is the file's current backing path.
    /// Returns the attributes of the new backing file, which replaced the old one (now `fd`), or nil when nothing
    /// was written.
    /// `replaced` runs under this node's lock once the new file is in place, so concurrent commits hand the inode
    /// table their new backing inodes in the order they happened.
    func commitOVE1(context: FileSystemContext, replaced onReplaced: (stat) -> Void) throws(Errno) {
        try lock.withWriteLock { () throws(Errno) in
            guard kind == .ove1, ove1Dirty else { return }
            guard let relativePath = FileNode.relativePath(of: fd, backingRoot: backingRoot) else {
                // Unlinked while open: nothing to write back.
                ove1Dirty = false
                return
            }
            let envelope: [UInt8]
            do {
                envelope = try SealedFile.sealWhole(ove1Plaintext, kind: .ove1, account: account, keyRing: context.keyRing)
            } catch {
                Log.error("\(displayPath): cannot seal OVE1 envelope: \(error)")
                throw .io
            }
            let slash = relativePath.lastIndex(of: "/")
            let directory = slash.map { String(relativePath[..<$0]) } ?? "."
            let base = slash.map { String(relativePath[relativePath.index(after: $0)...]) } ?? relativePath
            let temp = directory + "/" + TemporaryName.prefix + base + "." + Hex.encode((try? SecureRandom.bytes(6)) ?? [0])
            var original = stat()
            _ = try syscallRetrying { fstat(fd, &original) }
            let tempFD = try syscallRetrying { openat(context.rootFD, temp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, original.st_mode & 0o7777) }
            do throws(Errno) {
                try pwriteArray(tempFD, envelope, at: 0)
                _ = fchown(tempFD, original.st_uid, original.st_gid)
                _ = fchmod(tempFD, original.st_mode & 0o7777)
                copyExtendedAttributes(from: fd, to: tempFD)
                _ = try syscallRetrying { Glibc.fsync(tempFD) }
                // The name must still lead to this file (a rename since the path was read would otherwise make the
                // write-back replace another file).
                var current = stat()
                guard fstatat(context.rootFD, relativePath, &current, AT_SYMLINK_NOFOLLOW) == 0,
                      current.st_dev == original.st_dev, current.st_ino == original.st_ino else {
                    throw Errno(EAGAIN)
                }
                _ = try syscallRetrying { renameat(context.rootFD, temp, context.rootFD, relativePath) }
            } catch {
                close(tempFD)
                unlinkat(context.rootFD, temp, 0)
                Log.error("\(displayPath): cannot write back OVE1 envelope: \(error)")
                throw error
            }
            syncDirectory(context.rootFD, directory)
            var replaced = stat()
            fstat(tempFD, &replaced)
            // Same descriptor number, new file, in one step: readers of `fd` outside this lock (fstat, fchmod,
            // fsync) never meet a closed or reused number.
            _ = GNU.dup3(tempFD, fd, flags: O_CLOEXEC)
            close(tempFD)
            ove1Dirty = false
            onReplaced(replaced)
        }
    }

    /// The file's name in log lines: where it lives now, relative to the backing root.
    var displayPath: String { FileNode.relativePath(of: fd, backingRoot: backingRoot) ?? "(unlinked file)" }

    /// Where an open backing file lives now, relative to the backing root; the kernel's view of the descriptor
    /// follows renames. Nil when the file has been unlinked (or is outside the root).
    static func relativePath(of fd: Int32, backingRoot: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = withProcPath(fd) { readlink($0, &buffer, buffer.count - 1) }
        guard n > 0 else { return nil }
        let absolute = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if absolute.hasSuffix(" (deleted)") { return nil }
        let root = backingRoot.hasSuffix("/") ? backingRoot : backingRoot + "/"
        guard absolute.hasPrefix(root) else { return nil }
        return String(absolute.dropFirst(root.count))
    }

    func sync(dataOnly: Bool) throws(Errno) {
        _ = try syscallRetrying { dataOnly ? fdatasync(fd) : Glibc.fsync(fd) }
    }

    /// The backing attributes with the plaintext size and, for legacy files, no write bits.
    func presentedAttributes(_ st: stat) -> stat {
        var result = st
        lock.withReadLock {
            result.st_size = off_t(size)
            if kind == .legacy { result.st_mode &= ~mode_t(0o222) }
        }
        return result
    }
}

private func copyExtendedAttributes(from source: Int32, to destination: Int32) {
    let listSize = ExtendedAttributes.list(fd: source, into: nil, size: 0)
    guard listSize > 0 else { return }
    var names = [CChar](repeating: 0, count: listSize)
    let got = ExtendedAttributes.list(fd: source, into: &names, size: listSize)
    guard got > 0 else { return }
    var start = 0
    while start < got {
        let name = names.withUnsafeBufferPointer { String(cString: $0.baseAddress! + start) }
        start += name.utf8.count + 1
        let valueSize = ExtendedAttributes.get(fd: source, name: name, into: nil, size: 0)
        guard valueSize >= 0 else { continue }
        var value = [UInt8](repeating: 0, count: valueSize)
        if ExtendedAttributes.get(fd: source, name: name, into: &value, size: valueSize) == valueSize {
            _ = ExtendedAttributes.set(fd: destination, name: name, value: value, size: valueSize, flags: 0)
        }
    }
}

func syncDirectory(_ rootFD: Int32, _ directory: String) {
    let dfd = openat(rootFD, directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dfd >= 0 {
        _ = Glibc.fsync(dfd)
        close(dfd)
    }
}

