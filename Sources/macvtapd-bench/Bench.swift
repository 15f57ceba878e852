import ArgumentParser

@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "macvtapd-bench",
        abstract: "macvtapd's benchmarks: real kernel, real QEMU, each beside a baseline run in the same invocation.",
        subcommands: [
            NetlinkBench.self, QMPBench.self, ReconnectBench.self, ScaleBench.self, GuestBench.self,
            MigrationBench.self, SoakBench.self, LibvirtBench.self,
        ]
    )
}
