import ArgumentParser
import MacvtapdConfig

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check the desired-state configuration without touching anything.",
        discussion: """
            Reports every problem with its file, line and column.

            Exit status: 0 valid, 1 invalid, 2 usage error.
            """
    )

    @OptionGroup var config: ConfigOptions

    func run() throws {
        try config.checkPermissions(.warn)
        let result = config.load()
        guard let desired = result.desired else {
            printError("\(config.path): invalid (\(result.diagnostics.count) error(s))")
            throw ExitCode(1)
        }
        let bindings = desired.bindings.count
        print("\(config.path): valid, \(desired.vms.count) VM(s), \(bindings) binding(s)")
    }
}
