import VikingKeys

/// How a subcommand uses key-source options.
enum KeyUse {
    case none
    /// Used when given (inspect: whether the file authenticates).
    case optional
    case required
}

/// One `--option` a subcommand accepts (besides the key-source options).
struct OptionSpec {
    let name: String
    /// nil for a flag.
    let valueName: String?
    let help: String

    static func flag(_ name: String, _ help: String) -> OptionSpec { OptionSpec(name: name, valueName: nil, help: help) }
    static func value(_ name: String, _ valueName: String, _ help: String) -> OptionSpec {
        OptionSpec(name: name, valueName: valueName, help: help)
    }

    static let json = flag("json", "print the result as one JSON object on stdout")
    static let quiet = flag("quiet", "no progress output (problems are still printed on stderr)")
    static let force = flag("force", "run even though a vikingfs mount is serving the backing directory")
    static let jobs = value("jobs", "N", "worker threads (default: the number of CPUs)")
    static let dryRun = flag("dry-run", "show what would change, change nothing")
}

struct CommandSpec {
    let name: String
    let synopsis: String
    let summary: String
    let details: String
    let options: [OptionSpec]
    let keys: KeyUse
    /// `--new-...` key-source options (rotate-root-key).
    let newKeys: Bool
    let positionals: ClosedRange<Int>

    init(name: String, synopsis: String, summary: String, details: String = "", options: [OptionSpec],
         keys: KeyUse, newKeys: Bool = false, positionals: ClosedRange<Int>) {
        self.name = name
        self.synopsis = synopsis
        self.summary = summary
        self.details = details
        self.options = options
        self.keys = keys
        self.newKeys = newKeys
        self.positionals = positionals
    }
}

/// A parsed command line for one subcommand.
struct Invocation {
    var positionals: [String] = []
    var values: [String: String] = [:]
    var flags: Set<String> = []
    /// Key-source options, already in the mount's `-o` names (`root_key_file`, `key_provider`, ...).
    var keyOptions: [String: String] = [:]
    var newKeyOptions: [String: String] = [:]
    var help = false

    func flag(_ name: String) -> Bool { flags.contains(name) }
    var json: Bool { flag("json") }
    var quiet: Bool { flag("quiet") }

    func jobs() throws(AdminError) -> Int {
        guard let text = values["jobs"] else { return defaultJobs() }
        guard let n = Int(text), (1...256).contains(n) else { throw .usage("--jobs wants a number from 1 to 256, got '\(text)'") }
        return n
    }
}

/// The admin command spells key sources as the mount does: `--key-file P` is `root_key_file=P`, `--provider X`
/// is `key_provider=X`, `--config P` is `config=P`, `--old-key-file P` is `old_root_key_file=P`, and any other
/// name the key-source parser knows is accepted with dashes: `--vault-addr` for `vault_addr`.
enum KeyOptionNames {
    static let aliases: [String: String] = [
        "key-file": "root_key_file",
        "old-key-file": "old_root_key_file",
        "provider": "key_provider",
        "config": "config",
    ]

    /// The `-o` name for an admin flag name (without `--` or `--new-`), or nil if it is not a key-source option.
    static func optionName(forFlag flag: String) -> String? {
        if let alias = aliases[flag] { return alias }
        let underscored = flag.replacingDashes()
        return KeySource.optionNames.contains(underscored) && !flag.contains("_") ? underscored : nil
    }

    /// Flag spellings for help texts.
    static var helpLines: [String] {
        let width = 40
        var lines = [
            "--key-file PATH".padding(width) + " root key file (64 hex characters, mode 0600): root_key_file=",
            "--old-key-file PATH".padding(width) + " an older key that may still open files (rotation): old_root_key_file=",
            "--provider NAME".padding(width) + " file (default), vault or volcengine_kms: key_provider=",
            "--config PATH".padding(width) + " an OpenViking ov.conf (its encryption section): config=",
        ]
        let covered = Set(aliases.values)
        for name in KeySource.optionNames.sorted() where !covered.contains(name) {
            lines.append("--\(name.replacingUnderscores()) VALUE".padding(width) + " \(name)=")
        }
        return lines
    }
}

extension String {
    func replacingDashes() -> String { String(map { $0 == "-" ? "_" : $0 }) }
    func replacingUnderscores() -> String { String(map { $0 == "_" ? "-" : $0 }) }
}

enum ArgumentParser {
    /// Parses `arguments` (after the subcommand name) against `spec`.
    static func parse(_ arguments: [String], spec: CommandSpec) throws(AdminError) -> Invocation {
        var result = Invocation()
        let byName = Dictionary(spec.options.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var i = 0
        var onlyPositionals = false
        func fail(_ message: String) -> AdminError {
            .usage("\(message)\nusage: \(spec.synopsis)\n(vikingfs \(spec.name) --help for more)")
        }
        while i < arguments.count {
            let arg = arguments[i]
            i += 1
            if onlyPositionals || !arg.hasPrefix("-") || arg == "-" {
                result.positionals.append(arg)
                continue
            }
            if arg == "--" { onlyPositionals = true; continue }
            if arg == "-h" || arg == "--help" { result.help = true; continue }
            if arg == "-q" { result.flags.insert("quiet"); continue }
            guard arg.hasPrefix("--") else { throw fail("unknown option \(arg)") }
            var name = String(arg.dropFirst(2))
            var inlineValue: String? = nil
            if let eq = name.firstIndex(of: "=") {
                inlineValue = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            func takeValue() throws(AdminError) -> String {
                if let inlineValue { return inlineValue }
                guard i < arguments.count else { throw fail("--\(name) needs a value") }
                i += 1
                return arguments[i - 1]
            }
            if let option = byName[name] {
                if option.valueName == nil {
                    guard inlineValue == nil else { throw fail("--\(name) takes no value") }
                    result.flags.insert(name)
                } else {
                    guard result.values[name] == nil else { throw fail("--\(name) given twice") }
                    result.values[name] = try takeValue()
                }
                continue
            }
            if spec.keys != .none, let key = KeyOptionNames.optionName(forFlag: name) {
                guard result.keyOptions[key] == nil else { throw fail("--\(name) given twice") }
                result.keyOptions[key] = try takeValue()
                continue
            }
            if spec.newKeys, name.hasPrefix("new-"), let key = KeyOptionNames.optionName(forFlag: String(name.dropFirst(4))),
               key != "old_root_key_file" {
                guard result.newKeyOptions[key] == nil else { throw fail("--\(name) given twice") }
                result.newKeyOptions[key] = try takeValue()
                continue
            }
            throw fail("unknown option --\(name)")
        }
        if result.help { return result }
        guard spec.positionals.contains(result.positionals.count) else {
            if result.positionals.count < spec.positionals.lowerBound { throw fail("missing argument") }
            throw fail("unexpected argument '\(result.positionals[spec.positionals.upperBound])'")
        }
        return result
    }

    /// The per-subcommand `--help` text.
    static func help(_ spec: CommandSpec) -> String {
        var text = "usage: \(spec.synopsis)\n\n\(spec.summary)\n"
        if !spec.details.isEmpty { text += "\n\(spec.details)\n" }
        if !spec.options.isEmpty {
            text += "\noptions:\n"
            for o in spec.options {
                let head = "--\(o.name)" + (o.valueName.map { " \($0)" } ?? "")
                text += "  " + head.padding(22) + " " + o.help + "\n"
            }
            text += "  " + "--help".padding(22) + " this text\n"
        }
        if spec.keys != .none {
            text += "\nkey source (\(spec.keys == .required ? "required" : "optional"); the same settings as the mount's -o options):\n"
            for line in KeyOptionNames.helpLines { text += "  \(line)\n" }
        }
        if spec.newKeys {
            text += "\nnew key source: the same options prefixed with --new- (--new-key-file PATH, --new-provider NAME,\n"
            text += "--new-config PATH, ...)\n"
        }
        text += "\nexit status: 0 ok, 1 damage found or mismatch, 2 usage or configuration error, 3 key error, 4 I/O error\n"
        return text
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
