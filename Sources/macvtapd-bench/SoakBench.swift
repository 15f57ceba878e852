import ArgumentParser
import Foundation
import MacvtapdTestSupport

struct SoakBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "A randomized fault soak of `macvtapd run` with invariants checked after every round.",
        discussion: """
            In a network namespace with three veth host interfaces and two QEMU VMs (two NICs each, on \
            hubs with probes), the daemon is run while faults land at random short intervals: host \
            interfaces deleted, re-added, renamed away and back, swapped, carrier down and up; the \
            config rewritten (atomically or in place, sometimes invalid) and SIGHUP; QEMU killed -9 and \
            restarted, paused and continued; the daemon killed -9, stopped with SIGTERM and started \
            again; link bursts while the daemon is stopped (its rtnetlink socket overflows: ENOBUFS); \
            foreign macvtaps on the same lowers; a notify socket read promptly, late or never. Every \
            round ends in quiescence and the invariants: converged (timed), one macvtap and one backend \
            per binding and no orphans, frames reach every hub, no QEMU spinning, no descriptor growth \
            across resyncs or against a fresh daemon, the foreign macvtaps untouched, the daemon never \
            exited on its own, the status file and systemd's STATUS= match the host. Exits 1 when an \
            invariant failed; the seed replays the same events.
            """)

    @Option(help: "How long to run, in minutes.") var minutes: Double = 10
    @Option(help: "The seed of the events (default: a fresh one, printed).") var seed: UInt64?
    @Option(help: "Seconds of faults per round before the checks.") var roundSeconds: Double = 25

    func run() async throws {
        let options = Soak.Options(
            seed: seed ?? SoakRandom.freshSeed(), duration: .milliseconds(Int(minutes * 60_000)),
            chaos: .milliseconds(Int(roundSeconds * 1000)),
            // Progress lines as they happen, also when the output is a file (a 10-minute run).
            log: { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) })
        let report = try await Soak.run(options)
        print(report)
        if !report.failures.isEmpty { throw ExitCode(1) }
    }
}
