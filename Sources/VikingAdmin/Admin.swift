import VikingFormat
import VikingJSON
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// The subcommands' specs and implementations (extensions in one file per command).
enum AdminCommands {
    static let initKeySpec = CommandSpec(
        name: "init-key",
        synopsis: "vikingfs init-key --key-file PATH | --provider vault|volcengine_kms [provider options] [--json]",
        summary: "Create a fresh root key.",
        details: """
        With --key-file: 32 random bytes written as 64 hex characters and a newline, mode 0600; an existing file
        is never overwritten. With --provider vault or volcengine_kms: the provider creates and stores the key
        (an explicit admin action: a mount never creates keys). Prints the new key's ID, never the key.
        """,
        options: [.json],
        keys: .required, positionals: 0...0)

    static func initKey(_ inv: Invocation, console: any Console) throws(AdminError) -> ExitStatus {
        guard !inv.keyOptions.isEmpty else { throw .usage("say where the key goes: --key-file PATH or --provider vault|volcengine_kms") }
        if inv.keyOptions["old_root_key_file"] != nil { throw .usage("--old-key-file makes no sense when creating a key") }
        let provider: any RootKeyProvider
        let key: RootKey
        do {
            provider = try KeySource.parse(inv.keyOptions).provider
            key = try provider.createRootKey()
        } catch {
            throw AdminError.key(error)
        }
        if inv.json {
            console.out(JSON.object([.init("command", .string("init-key")), .init("key_id", .string(key.keyIDHex)),
                                     .init("provider", .string(provider.kind.description)), .init("location", .string(provider.summary))])
                .serialized() + "\n")
        } else {
            console.out("created root key \(key.keyIDHex) (key ID) in \(provider.summary)\n")
        }
        return .ok
    }
}

/// The `vikingfs` admin command.
public enum Admin {
    private typealias Handler = (Invocation, any Console, SecretInput) throws(AdminError) -> ExitStatus

    private static let commands: [(spec: CommandSpec, run: Handler)] = [
        (AdminCommands.initKeySpec, { inv, c, _ throws(AdminError) in try AdminCommands.initKey(inv, console: c) }),
        (AdminCommands.sealSpec, { inv, c, _ throws(AdminError) in try AdminCommands.seal(inv, console: c) }),
        (AdminCommands.fsckSpec, { inv, c, _ throws(AdminError) in try AdminCommands.fsck(inv, console: c) }),
        (AdminCommands.rotateSpec, { inv, c, _ throws(AdminError) in try AdminCommands.rotate(inv, console: c) }),
        (AdminCommands.inspectSpec, { inv, c, _ throws(AdminError) in try AdminCommands.inspect(inv, console: c) }),
        (AdminCommands.decryptSpec, { inv, c, _ throws(AdminError) in try AdminCommands.decrypt(inv, console: c) }),
        (AdminCommands.apikeyHashSpec, { inv, c, i throws(AdminError) in try AdminCommands.apikeyHash(inv, console: c, input: i) }),
        (AdminCommands.apikeyVerifySpec, { inv, c, i throws(AdminError) in try AdminCommands.apikeyVerify(inv, console: c, input: i) }),
        (AdminCommands.apikeyMigrateSpec, { inv, c, _ throws(AdminError) in try AdminCommands.apikeyMigrate(inv, console: c) }),
    ]

    static var usage: String {
        var text = "usage: vikingfs COMMAND [options]\n\nAdministration of vikingfs backing directories.\n\ncommands:\n"
        for (spec, _) in commands { text += "  " + spec.name.padding(17) + " " + spec.summary + "\n" }
        text += """

            Key sources are given as for the mount: --key-file PATH (root_key_file=), --provider NAME (key_provider=),
            --config ov.conf (config=), --old-key-file PATH (old_root_key_file=), and --NAME-WITH-DASHES for any other
            key-source option. Secrets are never taken from the command line.

            vikingfs COMMAND --help shows a command's options. See vikingfs(8).
            exit status: 0 ok, 1 damage found or mismatch, 2 usage or configuration error, 3 key error, 4 I/O error

            """
        return text
    }

    /// Runs the command line (without the program name); returns the exit status.
    public static func run(_ arguments: [String], console: any Console = StandardConsole(), input: SecretInput = .standardInput) -> Int32 {
        guard let first = arguments.first else {
            console.err(usage)
            return ExitStatus.usage.rawValue
        }
        if first == "-h" || first == "--help" || first == "help" {
            if arguments.count > 1, let (spec, _) = find(Array(arguments.dropFirst())) {
                console.out(ArgumentParser.help(spec))
            } else {
                console.out(usage)
            }
            return ExitStatus.ok.rawValue
        }
        guard let (spec, handler) = find(arguments) else {
            if first == "apikey" {
                console.err("vikingfs apikey: say hash, verify or migrate\n\n" + usage)
            } else {
                console.err("vikingfs: unknown command '\(first)'\n\n" + usage)
            }
            return ExitStatus.usage.rawValue
        }
        let rest = Array(arguments.dropFirst(spec.name.split(separator: " ").count))
        var json = false
        do {
            let inv = try ArgumentParser.parse(rest, spec: spec)
            if inv.help {
                console.out(ArgumentParser.help(spec))
                return ExitStatus.ok.rawValue
            }
            json = inv.json
            return try handler(inv, console, input).rawValue
        } catch {
            console.err("vikingfs \(spec.name): \(error.message)\n")
            if json {
                console.out(JSON.object([.init("command", .string(spec.name)), .init("error", .string(error.message)),
                                         .init("exit", .int(error.status.rawValue))]).serialized() + "\n")
            }
            return error.status.rawValue
        }
    }

    private static func find(_ arguments: [String]) -> (CommandSpec, Handler)? {
        for (spec, handler) in commands {
            let words = spec.name.split(separator: " ").map(String.init)
            if arguments.count >= words.count, Array(arguments.prefix(words.count)) == words { return (spec, handler) }
        }
        return nil
    }
}
