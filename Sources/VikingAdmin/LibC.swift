#if canImport(Glibc)
import Glibc
#endif

/// glibc calls the Glibc module does not declare (`<sys/xattr.h>`, and `syncfs`, which needs `_GNU_SOURCE`),
/// looked up once by name. This target has no C shim of its own; the symbols are in every glibc since 2.14.
enum LibC {
    typealias ListXattr = @convention(c) (Int32, UnsafeMutablePointer<CChar>?, Int) -> Int
    typealias GetXattr = @convention(c) (Int32, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
    typealias SetXattr = @convention(c) (Int32, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32
    typealias RemoveXattr = @convention(c) (Int32, UnsafePointer<CChar>) -> Int32
    typealias SyncFS = @convention(c) (Int32) -> Int32

    static let flistxattr: ListXattr? = symbol("flistxattr")
    static let fgetxattr: GetXattr? = symbol("fgetxattr")
    static let fsetxattr: SetXattr? = symbol("fsetxattr")
    static let fremovexattr: RemoveXattr? = symbol("fremovexattr")
    static let syncfs: SyncFS? = symbol("syncfs")

    private static func symbol<T>(_ name: String) -> T? {
        guard let handle = dlopen(nil, RTLD_NOW), let pointer = dlsym(handle, name) else { return nil }
        return unsafeBitCast(pointer, to: T.self)
    }
}
