// vikingfs-mount BACKING MOUNTPOINT [-f] [-d] [-o opt,...]
//
// Validates everything (options, key, key check) while still attached to the terminal, mounts, and only then
// detaches: a failure is a message on the terminal and a non-zero exit code, never a silent background death.
import FuseKit
import VikingFS
import VikingFormat
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

let version = "0.1.0"

/// Exit codes (documented in vikingfs-mount(8)).
enum ExitCode: Int32 {
    case success = 0
    case mountFailed = 1
    case usage = 2
    case key = 3
    case backing = 4
}

func fail(_ code: ExitCode, _ message: String) -> Never {
    fputs("vikingfs-mount: \(message)\n", stderr)
    exit(code.rawValue)
}

let usage = """
usage: vikingfs-mount BACKING MOUNTPOINT [-f] [-d] [-o option[,option...]]

Mounts an encrypted, per-account view of the AGFS directory BACKING at MOUNTPOINT.

  -f             stay in the foreground (log to the terminal)
  -d             debug: foreground, and libfuse traces every request
  -o OPTIONS     comma-separated mount options:
     root_key_file=PATH      root key: 64 hex characters, mode 0600 (key_provider=file, the default)
     key_provider=NAME       file | vault | volcengine_kms (see vikingfs-mount(8) for their options)
     config=PATH             take the key source from an OpenViking ov.conf "encryption" section
     old_root_key_file=PATH  a second key that may still open files during a root key rotation
     format=native|ove1      format of new files (default native; ove1 = OpenViking's envelope)
     block_size=BYTES        native block size, a power of two from 4096 to 1048576 (default 4096)
     ove1_max_size=BYTES     largest OVE1 file held in memory while open (default 67108864)
     no_legacy               refuse unsealed (legacy plaintext) files with EIO, for fully sealed trees
     no_writeback            no kernel writeback cache (default: on; see vikingfs-mount(8))
     no_readdirplus          plain directory listings (default: listings carry attributes, READDIRPLUS)
     noxattr                 no extended attributes (ENOTSUP); spares the kernel one lookup per file
     no_io_uring             requests over /dev/fuse only (default: over io_uring where the kernel offers it)
     io_uring_poll_us=N      how long an io_uring queue polls for the next request before sleeping (default 50)
     attr_timeout=S, entry_timeout=S   kernel attribute/entry cache lifetimes (default 1)
     verbose                 log debug messages
     ro, allow_other, allow_root, auto_unmount, fsname=NAME, subtype=NAME, default_permissions,
     nosuid, nodev, noexec, suid, dev, exec, atime, noatime, sync, async, dirsync, max_read=N
                             passed to FUSE
  -h, --help     this text
  -V, --version  the version

Exit codes: 0 mounted, 1 mount failed, 2 usage or option error, 3 key error (cannot load the key, or it is
not the key this tree was sealed with), 4 backing directory problem.
"""

// MARK: Arguments

var foreground = false
var debug = false
var positional: [String] = []
var rawOptions: [String] = []
var arguments = Array(CommandLine.arguments.dropFirst())
while !arguments.isEmpty {
    let argument = arguments.removeFirst()
    switch argument {
    case "-h", "--help": print(usage); exit(0)
    case "-V", "--version": print("vikingfs-mount \(version)"); exit(0)
    case "-f": foreground = true
    case "-d": debug = true; foreground = true
    case "-o":
        guard !arguments.isEmpty else { fail(.usage, "-o needs an argument") }
        rawOptions += splitOptions(arguments.removeFirst())
    case "-n", "-s", "-v": continue  // from mount(8) as a mount helper
    case "-t":
        if !arguments.isEmpty { arguments.removeFirst() }
    default:
        if argument.hasPrefix("-o") && argument.count > 2 {
            rawOptions += splitOptions(String(argument.dropFirst(2)))
        } else if argument.hasPrefix("-") {
            fail(.usage, "unknown argument \(argument)\n\(usage)")
        } else {
            positional.append(argument)
        }
    }
}

/// Splits on commas not escaped with a backslash (paths may contain commas).
func splitOptions(_ text: String) -> [String] {
    var out: [String] = []
    var current = ""
    var escaped = false
    for c in text {
        if escaped { current.append(c); escaped = false; continue }
        if c == "\\" { escaped = true; continue }
        if c == "," { if !current.isEmpty { out.append(current) }; current = ""; continue }
        current.append(c)
    }
    if !current.isEmpty { out.append(current) }
    return out
}

guard positional.count == 2 else { fail(.usage, "expected BACKING and MOUNTPOINT\n\(usage)") }

// MARK: Options

let fusePassThroughFlags: Set<String> = ["ro", "rw", "allow_other", "allow_root", "auto_unmount", "default_permissions",
                                         "nosuid", "nodev", "noexec", "suid", "dev", "exec", "atime", "noatime",
                                         "sync", "async", "dirsync"]
let fusePassThroughValues: Set<String> = ["fsname", "subtype", "max_read"]
/// Options mount(8) hands to helpers that mean nothing to a FUSE file system.
let mountHelperNoise: Set<String> = ["defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner", "group"]

var keyOptions: [String: String] = [:]
var fuseOptions: [String] = []
var readOnly = false
var format = NewFileFormat.native
var blockShift = NativeFormat.defaultBlockShift
var ove1MaxSize = 64 << 20
var writeback = true
var readdirPlus = true
var extendedAttributes = true
var ioUring = true
var ioUringPollMicroseconds = FuseMountConfiguration().ioUringPollMicroseconds
var refuseLegacy = false
var verbose = false
var attrTimeout = 1.0
var entryTimeout = 1.0
var fsname: String? = nil
var subtype = "vikingfs"

for option in rawOptions {
    let name: String
    let value: String?
    if let eq = option.firstIndex(of: "=") {
        name = String(option[..<eq])
        value = String(option[option.index(after: eq)...])
    } else {
        name = option
        value = nil
    }
    if KeySource.optionNames.contains(name) {
        guard let value, !value.isEmpty else { fail(.usage, "option \(name) needs a value") }
        keyOptions[name] = value
        continue
    }
    switch name {
    case "format":
        guard let value, let parsed = NewFileFormat(rawValue: value) else { fail(.usage, "format must be native or ove1") }
        format = parsed
    case "block_size":
        guard let value, let bytes = Int(value), bytes > 0, bytes & (bytes - 1) == 0,
              let shift = Optional(UInt8(bytes.trailingZeroBitCount)), NativeFormat.blockShiftRange.contains(shift) else {
            fail(.usage, "block_size must be a power of two from 4096 to 1048576")
        }
        blockShift = shift
    case "ove1_max_size":
        guard let value, let bytes = Int(value), bytes > 0 else { fail(.usage, "ove1_max_size must be a positive number of bytes") }
        ove1MaxSize = bytes
    case "no_legacy": refuseLegacy = true
    case "writeback": writeback = true
    case "no_writeback": writeback = false
    case "readdirplus": readdirPlus = true
    case "no_readdirplus": readdirPlus = false
    case "noxattr": extendedAttributes = false
    case "io_uring": ioUring = true
    case "no_io_uring": ioUring = false
    case "io_uring_poll_us":
        guard let value, let microseconds = UInt32(value), microseconds <= 1_000_000 else {
            fail(.usage, "io_uring_poll_us must be a number of microseconds from 0 to 1000000")
        }
        ioUringPollMicroseconds = microseconds
    case "verbose": verbose = true
    case "attr_timeout", "entry_timeout":
        guard let value, let seconds = Double(value), seconds >= 0 else { fail(.usage, "\(name) must be a number of seconds") }
        if name == "attr_timeout" { attrTimeout = seconds } else { entryTimeout = seconds }
    case "ro":
        readOnly = true
        fuseOptions.append("ro")
    case "fsname":
        fsname = value
    case "subtype":
        subtype = value ?? subtype
    default:
        if mountHelperNoise.contains(name) || name.hasPrefix("x-") || name.hasPrefix("comment=") { continue }
        if value == nil && fusePassThroughFlags.contains(name) { fuseOptions.append(name); continue }
        if value != nil && fusePassThroughValues.contains(name) { fuseOptions.append(option); continue }
        fail(.usage, "unknown option '\(name)' (see vikingfs-mount --help)")
    }
}

// MARK: Paths

func realPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

guard let backing = realPath(positional[0]), isDirectory(backing) else {
    fail(.backing, "backing directory \(positional[0]) does not exist or is not a directory")
}
guard let mountpoint = realPath(positional[1]), isDirectory(positional[1]) else {
    fail(.usage, "mountpoint \(positional[1]) does not exist or is not a directory")
}
guard mountpoint != backing, !mountpoint.hasPrefix(backing + "/"), !backing.hasPrefix(mountpoint + "/") else {
    fail(.usage, "the mountpoint and the backing directory must not contain each other")
}

// MARK: Start

ProcessHardening.disableCoreDumps()
let readiness = foreground ? nil : Daemon.detach()
Log.configure(program: "vikingfs-mount", syslog: false, verbose: verbose)

let keyRing: KeyRing
do {
    keyRing = try KeySource.parse(keyOptions).loadKeyRing()
} catch {
    fail(.key, "cannot load the root key: \(error)")
}

do {
    switch try KeyCheck.verify(backingRoot: backing, keyRing: keyRing) {
    case .valid(let index):
        if index != 0 { Log.info("the key check opens with the old root key: a rotation is in progress") }
    case .missing, .unencrypted:
        if KeyCheck.treeHoldsSealedFile(root: backing) {
            fail(.key, "\(backing)/\(KeyCheck.fileName) is missing (or unencrypted) but the tree holds sealed files: "
                 + "cannot prove this is their root key; restore the key check or run 'vikingfs fsck'")
        }
        if readOnly {
            Log.warning("\(backing)/\(KeyCheck.fileName) is missing; not creating it on a read-only mount")
        } else {
            try KeyCheck.write(backingRoot: backing, keyRing: keyRing)
            Log.info("created the key check \(backing)/\(KeyCheck.fileName)")
        }
    }
} catch let failure as KeyCheck.Failure {
    if case .wrongKey = failure { fail(.key, "wrong root key: \(failure)") }
    fail(.backing, "\(failure)")
} catch {
    fail(.backing, "\(error)")
}

var configuration = VikingFSConfiguration(backingPath: backing, keyRing: keyRing)
configuration.newFileFormat = format
configuration.blockShift = blockShift
configuration.readOnly = readOnly
configuration.ove1MemoryLimit = ove1MaxSize
configuration.writebackCache = writeback
configuration.readdirPlus = readdirPlus
configuration.extendedAttributes = extendedAttributes
configuration.refuseLegacy = refuseLegacy
configuration.attributeTimeout = attrTimeout
configuration.entryTimeout = entryTimeout

configuration.kernelChecksPermissions = fuseOptions.contains("allow_other") || fuseOptions.contains("allow_root")
    || fuseOptions.contains("default_permissions")
let fileSystem: VikingFileSystem
do {
    fileSystem = try VikingFileSystem(configuration: configuration)
} catch {
    fail(.backing, "cannot open \(backing): \(error)")
}

var mountConfiguration = FuseMountConfiguration()
mountConfiguration.debug = debug
if !ioUring { mountConfiguration.ioUringEntriesPerQueue = 0 }
mountConfiguration.ioUringPollMicroseconds = ioUringPollMicroseconds
mountConfiguration.log = { level, message in
    if level <= 3 { Log.error(message) } else { Log.info(message) }
}
// Other users reach the mount only with allow_other/allow_root; then the kernel must check file modes
// (default_permissions), as gocryptfs does. Without them only the mounting user gets in, the daemon runs as that
// user, and the backing file system's own checks apply: the kernel is spared a GETATTR of the parent directory
// before nearly every create and unlink (its attributes were just invalidated by the previous one).
let othersMayEnter = fuseOptions.contains("allow_other") || fuseOptions.contains("allow_root")
if othersMayEnter && !fuseOptions.contains("default_permissions") { fuseOptions.append("default_permissions") }
mountConfiguration.options = ["fsname=\(fsname ?? backing)", "subtype=\(subtype)"] + fuseOptions

do {
    let status = try FuseSession.run(fileSystem, mountpoint: mountpoint, configuration: mountConfiguration) {
        if let readiness {
            readiness.signalReady()
            Log.configure(program: "vikingfs-mount", syslog: true, verbose: verbose)
        }
        Log.info("mounted \(backing) on \(mountpoint) (format=\(format.rawValue), \(keyRing.providerKind) key \(keyRing.primary.keyIDHex))")
    }
    Log.info("unmounted \(mountpoint)")
    exit(status == 0 ? ExitCode.success.rawValue : ExitCode.mountFailed.rawValue)
} catch {
    fail(.mountFailed, "\(error)")
}
