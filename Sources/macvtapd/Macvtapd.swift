import ArgumentParser

#if canImport(Glibc)
    import Glibc
#endif

@main
struct Macvtapd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "macvtapd",
        abstract: "Keeps QEMU VM NICs connected to host interfaces through macvtap, declaratively.",
        discussion: """
            macvtapd reads a desired-state YAML file (or a conf.d directory of them) that binds each VM \
            NIC to a host interface, observes the host over rtnetlink and each VM over QMP, and creates, \
            replaces and tears down macvtap backends so that the two agree.
            """,
        version: BuildInfo.version,
        subcommands: [Validate.self, PlanCommand.self, Apply.self, Run.self, Status.self, PrintCommand.self]
    )

    /// ArgumentParser's own `main`, except that usage errors exit 2 as the commands document
    /// (ArgumentParser's default is EX_USAGE, 64), so scripts tell "invalid config" (1) from "wrong call" (2).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure {
                printError(fullMessage(for: error))
                Glibc.exit(2)
            }
            exit(withError: error)
        }
    }
}
