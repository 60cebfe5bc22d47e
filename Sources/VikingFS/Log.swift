import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where messages go: the terminal while in the foreground, syslog/journal once detached.
/// Messages name files and causes; they never carry key material.
public enum Log {
    public enum Level: Int, Comparable, Sendable {
        case error = 3, warning = 4, info = 6, debug = 7
        public static func < (a: Level, b: Level) -> Bool { a.rawValue > b.rawValue }
        var label: String {
            switch self { case .error: return "error"; case .warning: return "warning"; case .info: return "info"; case .debug: return "debug" }
        }
    }

    nonisolated(unsafe) private static var useSyslog = false
    nonisolated(unsafe) private static var threshold: Level = .info
    nonisolated(unsafe) private static var program = "vikingfs"

    /// Call once before any worker thread starts.
    public static func configure(program: String, syslog: Bool, verbose: Bool) {
        Log.program = program
        useSyslog = syslog
        threshold = verbose ? .debug : .info
        if syslog { openlog(strdup(program), LOG_PID | LOG_CONS, LOG_DAEMON) }
    }

    public static func error(_ message: @autoclosure () -> String) { emit(.error, message()) }
    public static func warning(_ message: @autoclosure () -> String) { emit(.warning, message()) }
    public static func info(_ message: @autoclosure () -> String) { emit(.info, message()) }
    public static func debug(_ message: @autoclosure () -> String) {
        if threshold >= .debug { emit(.debug, message()) }
    }

    private static func emit(_ level: Level, _ message: String) {
        if useSyslog {
            withVaList([message]) { vsyslog(Int32(level.rawValue), "%s", $0) }
        } else {
            fputs("\(program): \(level.label): \(message)\n", stderr)
        }
    }
}
