import ArgumentParser
import MacvtapdConfig

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the desired-state configuration without touching anything.",
        discussion: """
            Reports every problem with its file, line and column.
            Exit status: 0 valid, 1 invalid, 2 usage error.
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() throws {
        let result = ConfigLoader.load(path: options.config)
        for diagnostic in result.diagnostics {
            printError(diagnostic.description)
        }
        guard let desired = result.desired else {
            printError("\(options.config): invalid (\(result.diagnostics.count) error(s))")
            throw ExitCode(1)
        }
        let bindings = desired.bindings.count
        print("\(options.config): valid, \(desired.vms.count) VM(s), \(bindings) binding(s)")
    }
}
