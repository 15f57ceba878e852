import ArgumentParser

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon: reconcile on link and QMP events, config changes and periodically.")

    @OptionGroup var options: WorldOptions

    func run() async throws {
        printError("macvtapd run: not implemented yet")
        throw ExitCode(2)
    }
}
