import ArgumentParser

struct QMPBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qmp", abstract: "QMP round trip and attach sequence latency against a real QEMU.")
    func run() async throws { throw ExitCode(2) }
}
