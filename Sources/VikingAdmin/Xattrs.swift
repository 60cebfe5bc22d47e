import VikingCrypto
import VikingFormat
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// Sealing plaintext `user.*` extended attributes where they are (directories, and files `seal` does not
/// rewrite). Each attribute is set under its sealed name first and its plaintext removed second: a crash in
/// between leaves both, and a rerun, finding the sealed value equal to the plaintext, just removes the plaintext.
/// A sealed value that differs (set through the mount) is never overwritten: that is reported as a conflict.
enum XattrsInPlace {
    struct Report {
        var sealed = 0
        var problems: [FileProblem] = []
    }

    /// Seals under the ring's primary key; an existing sealed value is compared under any ring key.
    static func seal(fd: Int32, path: RelativePath, account: String, ring: KeyRing?, dryRun: Bool) -> Report {
        var result = Report()
        let names: [[UInt8]]
        switch Posix.listXattrs(fd) {
        case .failure(let e):
            result.problems.append(.io(path, "listing extended attributes", e))
            return result
        case .success(let n): names = n
        }
        let plaintextNames = names.filter {
            $0.starts(with: XattrCodec.visiblePrefixBytes) && !$0.starts(with: XattrCodec.backingPrefixBytes)
        }
        for name in plaintextNames {
            if dryRun { result.sealed += 1; continue }
            guard let ring else { continue }
            let accountKey: SecureBytes
            do { accountKey = try ring.accountKey(account) } catch {
                result.problems.append(FileProblem(path, .key, "deriving the key of account '\(account)': \(error)"))
                return result
            }
            let visible = String(decoding: name, as: UTF8.self)
            guard Array(visible.utf8) == name, let backing = XattrCodec.backingName(for: visible) else {
                result.problems.append(FileProblem(path, .io, "extended attribute \(escapeForDisplay(name)) has a name that is not UTF-8; it cannot be sealed"))
                continue
            }
            let backingBytes = Array(backing.utf8)
            var value: [UInt8]
            switch Posix.getXattr(fd, name) {
            case .failure(let e) where e.code == ENODATA: continue
            case .failure(let e):
                result.problems.append(.io(path, "reading extended attribute \(visible)", e))
                continue
            case .success(let v): value = v
            }
            defer { wipe(&value) }
            if case .success(let existing) = Posix.getXattr(fd, backingBytes) {
                let authenticator = FileAuthenticator(ring: ring, accounts: [])
                guard var opened = authenticator.openXattr(existing, visibleName: visible, account: account)?.value,
                      ConstantTime.equals(opened, value) else {
                    result.problems.append(FileProblem(path, .io, "extended attribute \(visible) is held both in plaintext and sealed (\(backing)) with different values; left as it is: remove the one that is wrong"))
                    continue
                }
                wipe(&opened)
            } else {
                let sealed: [UInt8]
                do { sealed = try XattrCodec.seal(value: value, visibleName: visible, accountKey: accountKey) } catch {
                    result.problems.append(FileProblem(path, .io, "sealing extended attribute \(visible): \(error)"))
                    continue
                }
                if case .failure(let e) = Posix.setXattr(fd, backingBytes, sealed) {
                    result.problems.append(.io(path, "writing sealed extended attribute \(backing)", e))
                    continue
                }
            }
            if case .failure(let e) = Posix.removeXattr(fd, name), e.code != ENODATA {
                result.problems.append(.io(path, "removing the plaintext extended attribute \(visible)", e))
                continue
            }
            result.sealed += 1
        }
        return result
    }
}
