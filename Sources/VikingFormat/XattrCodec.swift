import VikingCrypto

/// Extended attributes are sealed like content: a `user.NAME` attribute seen through the mount is stored on the
/// backing file as `user.vikingfs.NAME` with value nonce(12) ‖ AES-256-GCM(account key, nonce, value,
/// AAD = "vikingfs-xattr-v1:" + "user.NAME") ‖ tag(16). Names stay visible, as file names do.
/// Other namespaces (`security.`, `system.`, `trusted.`) are not supported through the mount (ENOTSUP).
public enum XattrCodec {
    public static let backingPrefix = "user.vikingfs."
    public static let visiblePrefix = "user."
    public static let overhead = 28

    /// The backing attribute name for a visible one, or nil when the namespace is unsupported.
    public static func backingName(for visible: String) -> String? {
        guard visible.hasPrefix(visiblePrefix), visible.count > visiblePrefix.count else { return nil }
        return backingPrefix + visible.dropFirst(visiblePrefix.count)
    }

    /// The visible name of a backing attribute, or nil for attributes vikingfs did not seal (hidden).
    public static func visibleName(fromBacking name: String) -> String? {
        guard name.hasPrefix(backingPrefix), name.count > backingPrefix.count else { return nil }
        return visiblePrefix + name.dropFirst(backingPrefix.count)
    }

    public static func seal(value: [UInt8], visibleName: String, accountKey: SecureBytes) throws(CryptoError) -> [UInt8] {
        let nonce = try SecureRandom.bytes(12)
        let aad = Array("vikingfs-xattr-v1:\(visibleName)".utf8)
        let sealed: Result<[UInt8], CryptoError> = value.withUnsafeBytes { v in
            Result { () throws(CryptoError) in try AESGCM.seal(key: accountKey, nonce: nonce, aad: aad, plaintext: v) }
        }
        return nonce + (try sealed.get())
    }

    public static func open(sealed: [UInt8], visibleName: String, accountKey: SecureBytes) throws(CryptoError) -> [UInt8] {
        guard sealed.count >= overhead else { throw .authenticationFailed }
        let nonce = Array(sealed[0..<12])
        let body = Array(sealed[12...])
        let aad = Array("vikingfs-xattr-v1:\(visibleName)".utf8)
        var out = [UInt8](repeating: 0, count: body.count - 16)
        let result: Result<Void, CryptoError> = nonce.withUnsafeBytes { n in
            aad.withUnsafeBytes { a in
                body.withUnsafeBytes { b in
                    out.withUnsafeMutableBytes { o in
                        Result { () throws(CryptoError) in try AESGCM.open(key: accountKey, nonce: n, aad: a, sealed: b, output: o) }
                    }
                }
            }
        }
        try result.get()
        return out
    }
}
