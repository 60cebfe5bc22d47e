// The vikingfs admin command: init-key, seal, fsck, rotate-root-key, inspect, decrypt, apikey. See vikingfs(8).
import VikingAdmin
#if canImport(Glibc)
import Glibc
#endif

// A closed stdout (`vikingfs decrypt F | head`) must end the command with an error, not kill it.
signal(SIGPIPE, SIG_IGN)
exit(Admin.run(Array(CommandLine.arguments.dropFirst())))
