#if canImport(Glibc)
import Glibc
#endif

/// Where a command writes: results to `out` (stdout), progress and diagnostics to `err` (stderr).
/// Thread-safe, since worker threads report problems while the walker reports progress.
public protocol Console: AnyObject, Sendable {
    func out(_ text: String)
    func err(_ text: String)
    /// Raw bytes to stdout (decrypted content).
    func outBytes(_ bytes: UnsafeRawBufferPointer) -> Bool
    /// Whether stderr is a terminal (progress bar) — false for captured consoles.
    var errIsTerminal: Bool { get }
}

/// The process's stdout and stderr.
public final class StandardConsole: Console, @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    public let errIsTerminal: Bool

    public init() {
        pthread_mutex_init(&mutex, nil)
        errIsTerminal = isatty(2) == 1
    }

    public func out(_ text: String) { writeLocked(1, text) }
    public func err(_ text: String) { writeLocked(2, text) }

    public func outBytes(_ bytes: UnsafeRawBufferPointer) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return Posix.write(1, bytes).isSuccess
    }

    private func writeLocked(_ fd: Int32, _ text: String) {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        _ = Posix.write(fd, Array(text.utf8))
    }
}

/// A console that keeps what was written, for tests.
public final class CapturedConsole: Console, @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var stdoutBytes: [UInt8] = []
    private var stderrText = ""
    public let errIsTerminal = false

    public init() { pthread_mutex_init(&mutex, nil) }

    public var stdout: String { locked { String(decoding: stdoutBytes, as: UTF8.self) } }
    public var stdoutData: [UInt8] { locked { stdoutBytes } }
    public var stderr: String { locked { stderrText } }

    public func out(_ text: String) { locked { stdoutBytes += Array(text.utf8) } }
    public func err(_ text: String) { locked { stderrText += text } }
    public func outBytes(_ bytes: UnsafeRawBufferPointer) -> Bool { locked { stdoutBytes += Array(bytes) }; return true }

    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}

extension Result {
    var isSuccess: Bool { if case .success = self { return true } else { return false } }
}

/// Progress on stderr: a bar redrawn in place on a terminal, a plain line every few seconds otherwise, nothing
/// with `--quiet`. Problem lines printed through `problem(_:)` appear above the bar.
final class Progress: @unchecked Sendable {
    enum Style { case bar, lines, quiet }

    private let console: any Console
    private let label: String
    private let style: Style
    private let total: Int?
    private var done = 0
    private var failed = 0
    private var lastDraw: Double
    private var drawn = false
    private var barVisible = false
    private let start: Double
    private var mutex = pthread_mutex_t()
    private let lineInterval: Double

    init(console: any Console, label: String, quiet: Bool, total: Int? = nil) {
        self.console = console
        self.label = label
        self.style = quiet ? .quiet : (Progress.drawsBar(console: console, quiet: quiet) ? .bar : .lines)
        self.total = total
        let now = Progress.now()
        self.start = now
        self.lastDraw = now
        // Plain lines: often enough that a log shows the run is alive, rarely enough not to flood it.
        self.lineInterval = Double(getenv("VIKINGFS_PROGRESS_INTERVAL").flatMap { Double(String(cString: $0)) } ?? 5)
        pthread_mutex_init(&mutex, nil)
    }

    /// Whether a bar will be drawn, so commands only pay for counting files first when it is.
    static func drawsBar(console: any Console, quiet: Bool) -> Bool { !quiet && console.errIsTerminal }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    var elapsed: Double { Progress.now() - start }

    func advance(failed isFailure: Bool = false) {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        done += 1
        if isFailure { failed += 1 }
        guard style != .quiet else { return }
        let now = Progress.now()
        let interval = style == .bar ? 0.1 : lineInterval
        if now - lastDraw >= interval {
            lastDraw = now
            draw(final: false)
        }
    }

    /// A line for the operator (a damaged file, a failure): printed even with `--quiet`.
    func problem(_ line: String) {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if barVisible { console.err("\r\u{1B}[K"); barVisible = false }
        console.err(line + "\n")
        if style == .bar { draw(final: false) }
    }

    func finish() {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard style != .quiet else { return }
        if style == .bar || drawn { draw(final: true) }
    }

    private func draw(final: Bool) {
        drawn = true
        let seconds = Progress.now() - start
        let time = formatSeconds(seconds)
        let failures = failed > 0 ? ", \(failed) failed" : ""
        switch style {
        case .quiet:
            return
        case .bar:
            var text = "\r\u{1B}[K\(label) "
            if let total, total > 0 {
                let fraction = min(1, Double(done) / Double(total))
                let width = 30
                let filled = Int(fraction * Double(width))
                text += "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "] "
                text += "\(Int(fraction * 100))% \(done)/\(total) files\(failures) \(time)"
            } else {
                text += "\(done) files\(failures) \(time)"
            }
            if final { text += "\n" }
            console.err(text)
            barVisible = !final
        case .lines:
            var text = "\(label): \(done)"
            if let total { text += "/\(total)" }
            text += " files\(failures), \(time)\(final ? ", done" : "")\n"
            console.err(text)
        }
    }
}

func formatSeconds(_ s: Double) -> String {
    if s < 60 { return String(Int(s * 10) / 10) + "." + String(Int(s * 10) % 10) + " s" }
    let m = Int(s) / 60
    return "\(m) min \(Int(s) % 60) s"
}
