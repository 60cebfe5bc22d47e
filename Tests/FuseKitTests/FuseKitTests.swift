import Testing
@testable import FuseKit
import CFuse
#if canImport(Glibc)
import Glibc
#endif

/// A scratch directory, removed (with everything in it) at the end.
private final class ScratchDirectory {
    let path: String
    init() {
        var template = Array("/tmp/fusekit-test.XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }
    deinit { _ = system("rm -rf '\(path)'") }

    func create(_ name: String, contents: String = "") {
        let fd = open(path + "/" + name, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = contents.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    func rootTable() throws -> InodeTable<BackingInode> {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        var st = stat()
        #expect(fstat(fd, &st) == 0)
        return InodeTable(root: BackingInode(fd: fd, st: st))
    }
}

private func lookup(_ table: InodeTable<BackingInode>, _ name: String, in parent: BackingInode? = nil) throws -> BackingInode {
    try name.withCString { cName in
        try table.lookup(in: parent ?? table.root, name: cName) { fd, st in BackingInode(fd: fd, st: st) }.0
    }
}

@Suite struct ProcPathTests {
    @Test func spellsTheDescriptor() {
        for fd: Int32 in [0, 7, 10, 12345, Int32.max] {
            let spelled = withProcPath(fd) { String(cString: $0) }
            #expect(spelled == "/proc/self/fd/\(fd)")
        }
    }
}

@Suite struct AttributeChangesTests {
    @Test func mapsTheSetattrBits() {
        var attr = stat()
        attr.st_mode = 0o100640
        attr.st_size = 4096
        attr.st_mtim = timespec(tv_sec: 1_000_000, tv_nsec: 5)
        let modeAndSize = AttributeChanges(attr, valid: FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_SIZE)
        #expect(modeAndSize.mode == 0o100640)
        #expect(modeAndSize.size == 4096)
        #expect(modeAndSize.uid == nil && modeAndSize.gid == nil && modeAndSize.times == nil)

        let times = AttributeChanges(attr, valid: FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME)
        #expect(times.times?.access.tv_nsec == AttributeChanges.utimeNow)
        #expect(times.times?.modification.tv_sec == 1_000_000 && times.times?.modification.tv_nsec == 5)
        #expect(times.mode == nil && times.size == nil)

        let onlyMtime = AttributeChanges(attr, valid: FUSE_SET_ATTR_MTIME)
        #expect(onlyMtime.times?.access.tv_nsec == AttributeChanges.utimeOmit)
        // ctime alone (the kernel's writeback cache flushing times) asks for nothing we can do.
        let ctimeOnly = AttributeChanges(attr, valid: FUSE_SET_ATTR_CTIME)
        #expect(ctimeOnly.mode == nil && ctimeOnly.size == nil && ctimeOnly.times == nil && ctimeOnly.uid == nil)
    }
}

@Suite struct InodeTableTests {
    @Test func oneObjectPerBackingInodeCountedByLookups() throws {
        let scratch = ScratchDirectory()
        scratch.create("a", contents: "x")
        #expect(link(scratch.path + "/a", scratch.path + "/b") == 0)
        let table = try scratch.rootTable()
        let first = try lookup(table, "a")
        let again = try lookup(table, "a")
        let hardLink = try lookup(table, "b")
        #expect(first === again && first === hardLink)
        #expect(table.count == 1)
        #expect(table.node(table.fuseInode(first)) === first)
        #expect(table.node(FuseInode.root) === table.root)
        table.forget(table.fuseInode(first), lookups: 2)
        #expect(table.count == 1)
        table.forget(table.fuseInode(first), lookups: 1)
        #expect(table.count == 0)
    }

    @Test func missingNamesAreENOENT() throws {
        let scratch = ScratchDirectory()
        let table = try scratch.rootTable()
        #expect(throws: Errno.noEntry) { _ = try lookup(table, "nothing") }
    }

    @Test func anInodeFollowsItsFileThroughRenameAndUnlink() throws {
        let scratch = ScratchDirectory()
        scratch.create("old", contents: "payload")
        let table = try scratch.rootTable()
        let inode = try lookup(table, "old")
        #expect(rename(scratch.path + "/old", scratch.path + "/new") == 0)
        #expect(try inode.attributes().st_size == 7)
        #expect(unlink(scratch.path + "/new") == 0)
        // Still reachable through its descriptor; a new file under the old name is a different inode.
        #expect(try inode.attributes().st_nlink == 0)
        scratch.create("old", contents: "other")
        let newcomer = try lookup(table, "old")
        #expect(newcomer !== inode)
    }
}

@Suite struct DirectoryStreamTests {
    @Test func resumesFromTheOffsetItHandedOut() throws {
        let scratch = ScratchDirectory()
        let names = (0..<500).map { "entry-\($0)" }
        for name in names { scratch.create(name) }
        let table = try scratch.rootTable()
        let stream = try DirectoryStream(table.root)
        var seen: [String] = []
        var offset: Int64 = 0
        var calls = 0
        // Take 7 entries per call, refusing the 8th, as a full kernel buffer would.
        while true {
            var taken = 0
            var lastOffset = offset
            try stream.list(from: offset) { name, _, _, next throws(Errno) -> Bool in
                if taken == 7 { return false }
                taken += 1
                seen.append(String(cString: name))
                lastOffset = next
                return true
            }
            calls += 1
            if taken == 0 { break }
            offset = lastOffset
        }
        #expect(calls > 70)
        #expect(seen.filter { $0 != "." && $0 != ".." }.sorted() == names.sorted())
        #expect(Set(seen).count == seen.count)
    }
}

/// The VFS's rule for the set-ID bits of a file written, truncated or chowned by a caller without CAP_FSETID.
@Suite("Set-ID bits (KILLPRIV_V2)")
struct SetIDDropTests {
    let regular: mode_t = 0o100000

    @Test func setUserIDAlwaysGoes() {
        #expect(SetIDDrop.mode(regular | 0o4755, group: 10) { _ in true } == regular | 0o755)
    }

    @Test func setGroupIDGoesWhenGroupExecutable() {
        #expect(SetIDDrop.mode(regular | 0o2775, group: 10) { _ in true } == regular | 0o775)
    }

    @Test func setGroupIDWithoutGroupExecuteStaysForMembersOnly() {
        #expect(SetIDDrop.mode(regular | 0o2764, group: 10) { $0 == 10 } == regular | 0o2764)
        #expect(SetIDDrop.mode(regular | 0o2764, group: 10) { _ in false } == regular | 0o764)
    }

    @Test func directoriesAndPlainFilesAreLeftAlone() {
        #expect(SetIDDrop.mode(0o040000 | 0o2775, group: 10) { _ in false } == 0o040000 | 0o2775)
        #expect(SetIDDrop.mode(regular | 0o644, group: 10) { _ in false } == regular | 0o644)
    }
}
