import VikingCrypto
#if canImport(Glibc)
import Glibc
#endif

/// The root keys a mount or an admin command holds, and the account keys derived from them.
///
/// Account keys are derived once per (root key, account) and cached: derivation is cheap (~2.4 µs) but it
/// happens on every file open otherwise. The cache is bounded only by the number of accounts, which is small.
public final class KeyRing: @unchecked Sendable {
    /// The key new files are sealed with.
    public let primary: RootKey
    /// Keys that may still open files during a rotation (`old_root_key_file=`); never used to seal.
    public let previous: [RootKey]
    /// The OVE1 provider byte for envelopes sealed through this ring.
    public let providerKind: ProviderKind

    private var cache: [CacheKey: SecureBytes] = [:]
    private var lock = pthread_rwlock_t()

    private struct CacheKey: Hashable { let keyIndex: Int; let account: String }

    public init(primary: RootKey, previous: [RootKey] = [], providerKind: ProviderKind) {
        self.primary = primary
        self.previous = previous
        self.providerKind = providerKind
        pthread_rwlock_init(&lock, nil)
    }

    deinit { pthread_rwlock_destroy(&lock) }

    /// Every root key, primary first.
    public var allKeys: [RootKey] { [primary] + previous }

    public func accountKey(_ account: String) throws(KeyError) -> SecureBytes {
        try accountKey(account, keyIndex: 0)
    }

    /// The account key under root key `keyIndex` of `allKeys`.
    public func accountKey(_ account: String, keyIndex: Int) throws(KeyError) -> SecureBytes {
        let cacheKey = CacheKey(keyIndex: keyIndex, account: account)
        pthread_rwlock_rdlock(&lock)
        let cached = cache[cacheKey]
        pthread_rwlock_unlock(&lock)
        if let cached { return cached }
        let root = keyIndex == 0 ? primary : previous[keyIndex - 1]
        let derived = try root.deriveAccountKey(account)
        pthread_rwlock_wrlock(&lock)
        defer { pthread_rwlock_unlock(&lock) }
        if let raced = cache[cacheKey] { return raced }
        cache[cacheKey] = derived
        return derived
    }

    /// Index in `allKeys` of the root key with this ID, if the ring holds it.
    public func keyIndex(forKeyID id: [UInt8]) -> Int? {
        allKeys.firstIndex { ConstantTime.equals($0.keyID, id) }
    }
}
