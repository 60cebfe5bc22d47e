import VikingFormat
#if canImport(Glibc)
import Glibc
#endif

/// One entry found by `TreeWalker`.
struct TreeEntry: Sendable {
    enum Kind: Sendable { case regular, directory, symlink, other }
    let path: RelativePath
    let kind: Kind

    /// The account whose key seals this entry's content and extended attributes (a directory directly in the
    /// root is its own account's, a file there is `_system`'s), as the mount decides it.
    var account: String { kind == .directory ? Account.of(path: path.string) : path.account }

    /// `backend_meta.json` in the root: the key check, handled by each command on its own.
    var isKeyCheck: Bool { path.isInRoot && path.bytes == Array(KeyCheck.fileName.utf8) }
    /// A hidden temporary file (the mount's or the admin command's).
    var isTemporary: Bool { TemporaryName.isTemporary(String(decoding: path.name, as: UTF8.self)) }
    /// The rotation journal, which is never a stale temporary.
    var isJournal: Bool { path.isInRoot && path.bytes == Array(AdminTemporary.journalName.utf8) }
    /// A temporary file this command may remove: any, when no mount can be writing; only the admin command's
    /// own otherwise.
    func isStaleTemporary(mountMayBeLive: Bool) -> Bool {
        guard isTemporary, !isJournal, kind == .regular else { return false }
        return !mountMayBeLive || path.name.starts(with: Array(AdminTemporary.prefix.utf8))
    }
}

extension BackingTree {
    /// Opens an entry the walk found, read-only and never through a symlink; `.success(nil)` when it has gone or
    /// is no longer the kind of entry the walk saw.
    func open(_ entry: TreeEntry) -> Result<Int32?, SystemError> {
        let isDirectory = entry.kind == .directory
        switch Posix.open(cPath(entry.path), O_RDONLY | O_NOFOLLOW | (isDirectory ? O_DIRECTORY : O_NONBLOCK)) {
        case .failure(let e) where e.code == ENOENT || e.code == ELOOP || e.code == ENOTDIR: return .success(nil)
        case .failure(let e): return .failure(e)
        case .success(let fd):
            if !isDirectory, case .success(let st) = Posix.fstat(fd), (st.st_mode & S_IFMT) != S_IFREG {
                close(fd)
                return .success(nil)
            }
            return .success(fd)
        }
    }
}

/// Walks a backing tree depth first without holding it in memory: one directory's names at a time (read fully
/// before any is processed, so files renamed into place while we work are not seen twice), plus the list of
/// directories still to visit. Symlinks are reported, never followed.
struct TreeWalker {
    let tree: BackingTree

    /// Calls `visit` for every entry, directories (the root first, with an empty path) before what they hold;
    /// `directoryFailed` for a directory that cannot be read. `visit` returns false to stop the walk.
    func walk(visit: (TreeEntry) -> Bool, directoryFailed: (RelativePath, SystemError) -> Void) {
        var pending: [RelativePath] = [RelativePath(bytes: [])]
        while let dir = pending.popLast() {
            if !visit(TreeEntry(path: dir, kind: .directory)) { return }
            guard let d = opendir(tree.cPath(dir)) else {
                directoryFailed(dir, SystemError(errno))
                continue
            }
            var entries: [(name: [UInt8], type: UInt8)] = []
            while true {
                errno = 0
                guard let entry = readdir(d) else {
                    if errno != 0 { directoryFailed(dir, SystemError(errno)) }
                    break
                }
                let name = entryName(entry)
                if name == [UInt8(ascii: ".")] || name == [UInt8(ascii: "."), UInt8(ascii: ".")] { continue }
                entries.append((name, entry.pointee.d_type))
            }
            closedir(d)
            var subdirectories: [RelativePath] = []
            for (name, type) in entries {
                let path = dir.appending(name)
                var kind = Int(type)
                if kind == DT_UNKNOWN {
                    guard case .success(let st) = Posix.lstat(tree.cPath(path)) else { continue }
                    switch st.st_mode & S_IFMT {
                    case S_IFDIR: kind = DT_DIR
                    case S_IFREG: kind = DT_REG
                    case S_IFLNK: kind = DT_LNK
                    default: kind = DT_UNKNOWN
                    }
                }
                switch kind {
                case DT_DIR: subdirectories.append(path)
                case DT_REG: if !visit(TreeEntry(path: path, kind: .regular)) { return }
                case DT_LNK: if !visit(TreeEntry(path: path, kind: .symlink)) { return }
                default: if !visit(TreeEntry(path: path, kind: .other)) { return }
                }
            }
            // Reverse so the first subdirectory is visited next (a stable, name-ordered-per-readdir walk).
            pending.append(contentsOf: subdirectories.reversed())
        }
    }

    /// Counts regular files, for the progress bar's total (names only, no file is opened).
    func countRegularFiles() -> Int {
        var n = 0
        walk(visit: { entry in
            if entry.kind == .regular && !entry.isTemporary && !entry.isKeyCheck { n += 1 }
            return true
        }, directoryFailed: { _, _ in })
        return n
    }
}

/// A bounded queue between the walking thread and worker threads.
final class WorkQueue<Item: Sendable>: @unchecked Sendable {
    private var items: [Item?]
    private var head = 0
    private var count = 0
    private var closed = false
    private var mutex = pthread_mutex_t()
    private var notEmpty = pthread_cond_t()
    private var notFull = pthread_cond_t()

    init(capacity: Int) {
        items = Array(repeating: nil, count: max(1, capacity))
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&notEmpty, nil)
        pthread_cond_init(&notFull, nil)
    }

    deinit {
        pthread_cond_destroy(&notEmpty)
        pthread_cond_destroy(&notFull)
        pthread_mutex_destroy(&mutex)
    }

    func push(_ item: Item) {
        pthread_mutex_lock(&mutex)
        while count == items.count { pthread_cond_wait(&notFull, &mutex) }
        items[(head + count) % items.count] = item
        count += 1
        pthread_cond_signal(&notEmpty)
        pthread_mutex_unlock(&mutex)
    }

    /// The next item, or nil once the queue is closed and drained.
    func pop() -> Item? {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while count == 0 && !closed { pthread_cond_wait(&notEmpty, &mutex) }
        guard count > 0 else { return nil }
        let item = items[head]
        items[head] = nil
        head = (head + 1) % items.count
        count -= 1
        pthread_cond_signal(&notFull)
        return item
    }

    func close() {
        pthread_mutex_lock(&mutex)
        closed = true
        pthread_cond_broadcast(&notEmpty)
        pthread_mutex_unlock(&mutex)
    }
}

private final class ThreadBody: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Runs `produce` on the calling thread and `work` on `jobs` worker threads (inline when `jobs` is 1).
func withWorkers<Item: Sendable>(jobs: Int, work: @escaping @Sendable (Item) -> Void, produce: ((Item) -> Void) -> Void) {
    if jobs <= 1 {
        produce(work)
        return
    }
    let queue = WorkQueue<Item>(capacity: jobs * 64)
    var threads: [pthread_t] = []
    for _ in 0..<jobs {
        let body = ThreadBody {
            while let item = queue.pop() { work(item) }
        }
        var thread = pthread_t()
        let retained = Unmanaged.passRetained(body)
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<ThreadBody>.fromOpaque(raw).takeRetainedValue().run()
            return nil
        }, retained.toOpaque())
        if rc == 0 {
            threads.append(thread)
        } else {
            retained.release()  // the thread that would have taken it never started
        }
    }
    if threads.isEmpty {
        produce(work)
        return
    }
    produce { queue.push($0) }
    queue.close()
    for t in threads { pthread_join(t, nil) }
}

/// A lock-protected accumulator for results reported by worker threads.
final class Tally<State>: @unchecked Sendable {
    private var state: State
    private var mutex = pthread_mutex_t()
    init(_ initial: State) {
        state = initial
        pthread_mutex_init(&mutex, nil)
    }
    func update<R>(_ body: (inout State) -> R) -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body(&state)
    }
    var value: State { update { $0 } }
}

/// Default worker count: the online CPUs (sealing and checking are a mix of crypto and I/O waits).
func defaultJobs() -> Int { max(1, min(64, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))) }
