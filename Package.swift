// swift-tools-version:6.0
import PackageDescription

// One module per concern. The FUSE binding (FuseKit) knows nothing about encryption;
// the crypto (VikingCrypto) knows nothing about FUSE; VikingFS joins them.
let package = Package(
    name: "vikingfs",
    products: [
        .executable(name: "vikingfs-mount", targets: ["vikingfs-mount"]),
        .executable(name: "vikingfs", targets: ["vikingfs"]),
        .executable(name: "fuse-passthrough", targets: ["fuse-passthrough"]),
        .library(name: "FuseKit", targets: ["FuseKit"]),
    ],
    targets: [
        .systemLibrary(name: "CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // Header-only: the GNU libc calls SwiftGlibc does not declare (xattrs, renameat2, fallocate, syncfs, prctl).
        .systemLibrary(name: "CSystem"),
        .systemLibrary(name: "CArgon2", pkgConfig: "libargon2", providers: [.apt(["libargon2-dev"])]),

        .target(name: "VikingJSON"),
        // C, not a module map: per-thread request facts need one definition (libfuse 3.14's missing INIT flags).
        .target(name: "CFuseWire", dependencies: ["CFuse"]),
        .target(name: "FuseKit", dependencies: ["CFuse", "CFuseWire", "CSystem"]),
        .target(name: "VikingCrypto", dependencies: ["COpenSSL"]),
        .target(name: "VikingFormat", dependencies: ["VikingCrypto", "VikingKeys"]),
        .target(name: "VikingKeys", dependencies: ["COpenSSL", "VikingCrypto", "VikingJSON"]),
        .target(name: "VikingAPIKeys", dependencies: ["CArgon2", "VikingCrypto"]),
        .target(name: "VikingFS", dependencies: ["FuseKit", "VikingFormat", "VikingKeys"]),
        .target(name: "VikingAdmin", dependencies: ["CSystem", "VikingJSON", "VikingFormat", "VikingKeys", "VikingAPIKeys"]),

        .executableTarget(name: "vikingfs-mount", dependencies: ["VikingFS", "VikingKeys", "FuseKit"]),
        .executableTarget(name: "vikingfs", dependencies: ["VikingAdmin", "VikingKeys", "VikingFormat", "VikingAPIKeys"]),
        .executableTarget(name: "fuse-passthrough", dependencies: ["FuseKit"]),

        .testTarget(name: "VikingJSONTests", dependencies: ["VikingJSON"]),
        .testTarget(name: "FuseKitTests", dependencies: ["FuseKit"]),
        .testTarget(name: "VikingCryptoTests", dependencies: ["VikingCrypto"]),
        .testTarget(name: "VikingFormatTests", dependencies: ["VikingFormat", "VikingKeys", "VikingCrypto"], exclude: ["vectors"]),
        .testTarget(name: "VikingKeysTests", dependencies: ["VikingKeys", "VikingCrypto", "VikingJSON"]),
        .testTarget(name: "VikingAPIKeysTests", dependencies: ["VikingAPIKeys"], exclude: ["crosscheck.py", "vikingfs-made-hashes.json"]),
        .testTarget(name: "VikingAdminTests", dependencies: ["VikingAdmin", "VikingFormat", "VikingKeys", "VikingCrypto", "VikingJSON", "CSystem"]),
    ],
    // Swift 5 language mode: the C globals this package lives on (stderr, errno, FUSE callbacks) are not
    // Sendable, and strict concurrency checking would only add unchecked annotations around them.
    swiftLanguageModes: [.v5]
)
