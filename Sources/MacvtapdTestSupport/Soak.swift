import Foundation
import MacvtapdCore
import MacvtapdQMP
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A randomized fault soak against the real daemon (`macvtapd run`), the real kernel (a network
/// namespace whose veth pairs are the host interfaces) and real QEMU (no guest OS; probes on the
/// NICs' hubs). It runs in rounds: faults at random short intervals, then quiescence (every lower
/// back with carrier, every VM running, the daemon up, a valid config on disk) and the invariants,
/// then the next round from where the last one left the world.
///
/// Everything random comes from one seed: the same seed replays the same events (their timing
/// against the daemon's differs from run to run, which is the point of running many seeds).
public final class Soak {
    public struct Options: Sendable {
        public var seed: UInt64
        /// The soak stops starting rounds once this much time has gone by.
        public var duration: Duration
        /// Faults per round, before the quiescence and the checks.
        public var chaos: Duration
        /// At most this many rounds, whatever the duration.
        public var maxRounds: Int?
        /// Pause between two faults: uniform in 0...maxInterval.
        public var maxInterval: Duration
        /// A round fails when the host has not converged this long after quiescence.
        public var convergenceBound: Duration
        /// What the issue asks for; reported, and a round slower than it is counted.
        public var convergenceTarget: Duration
        /// Where progress lines go.
        public var log: @Sendable (String) -> Void

        public init(
            seed: UInt64, duration: Duration, chaos: Duration = .seconds(20), maxRounds: Int? = nil,
            maxInterval: Duration = .milliseconds(200),
            convergenceBound: Duration = .seconds(10), convergenceTarget: Duration = .seconds(2),
            log: @escaping @Sendable (String) -> Void = { print($0) }
        ) {
            self.seed = seed
            self.duration = duration
            self.chaos = chaos
            self.maxRounds = maxRounds
            self.maxInterval = maxInterval
            self.convergenceBound = convergenceBound
            self.convergenceTarget = convergenceTarget
            self.log = log
        }
    }

    /// What a soak did and found.
    public struct Report: Sendable, CustomStringConvertible {
        public var seed: UInt64
        public var rounds = 0
        public var events: [SoakEventKind: Int] = [:]
        public var notifyModes: [SoakNotifyMode: Int] = [:]
        /// Time spent injecting faults (the events/s denominator).
        public var chaosTime: Duration = .zero
        public var elapsed: Duration = .zero
        /// Quiescence → converged, one per round.
        public var convergence: [Duration] = []
        /// Forced resyncs (link bursts, SIGHUP) → converged, one per round.
        public var resyncConvergence: [Duration] = []
        /// SIGTERM and a fresh daemon → converged, one per round.
        public var restartConvergence: [Duration] = []
        /// Resyncs the daemon logged for lost link notifications.
        public var enobufsResyncs = 0
        /// The worst lateness of a 50 ms sleep in this process while the soak ran: how long the
        /// cooperative pool was held or starved (a figure for triage, not an invariant).
        public var poolLag: Duration = .zero
        public var checks: [String] = []
        public var failures: [String] = []

        public var eventCount: Int { events.values.reduce(0, +) }

        public var description: String {
            var lines = ["soak: seed \(seed), \(rounds) round(s), \(eventCount) events in \(format(chaosTime))"]
            lines[0] += String(format: " (%.1f events/s)", Double(eventCount) / max(chaosTime.soakSeconds, 0.001))
            lines.append("events by kind:")
            for kind in events.keys.sorted() { lines.append("  \(events[kind]!)\t\(kind.rawValue)") }
            lines.append(
                "daemon starts by notify socket reader: "
                    + SoakNotifyMode.allCases.map { "\($0.rawValue) \(notifyModes[$0] ?? 0)" }.joined(separator: ", "))
            lines.append("resyncs the daemon logged for lost link notifications (ENOBUFS): \(enobufsResyncs)")
            lines.append(
                "worst lateness of a 50 ms sleep in the soak's process: \(LatencySummary.milliseconds(poolLag))")
            for (title, samples) in [
                ("quiescence → converged", convergence), ("forced resyncs → converged", resyncConvergence),
                ("SIGTERM + fresh daemon → converged", restartConvergence),
            ] where !samples.isEmpty {
                lines.append("\(title): \(LatencySummary(samples))")
            }
            lines.append(failures.isEmpty ? "invariants: all held" : "FAILED:\n" + failures.joined(separator: "\n"))
            lines.append("replay: --seed \(seed)")
            return lines.joined(separator: "\n")
        }

        func format(_ duration: Duration) -> String { String(format: "%.1f s", duration.soakSeconds) }
    }

    public static let lowerNames = ["up0", "up1", "up2"]
    /// A veth that only link bursts touch.
    static let noise = "noise0"

    let options: Options
    let sandbox: Sandbox
    let vms: [SoakVM]
    let nics: [SoakNIC]
    let notify: SoakNotifyReader
    var random: SoakRandom
    var model: SoakModel
    var daemon: BackgroundProcess?
    /// Where the running daemon's lines begin in the log, and whether it said it handles signals.
    var logOffsetAtStart = 0
    var daemonReady = false
    /// How the running daemon's notify socket is read; none: started without NOTIFY_SOCKET.
    var daemonNotifyMode = SoakNotifyMode.none
    /// When the running daemon started (seconds since the epoch, as the status file counts).
    var daemonStartedAt: Double = 0
    var report: Report
    /// Recent events, for the failure report.
    var history: [String] = []
    let started = ContinuousClock.now

    /// Runs a whole soak in a fresh sandbox; cleans up whatever happens.
    public static func run(_ options: Options) async throws -> Report {
        let sandbox = try await Sandbox.start(nics: [], lowers: lowerNames + [noise])
        var vms: [SoakVM] = []
        do {
            let soak = try await Soak(options: options, sandbox: sandbox) { vms = $0 }
            let report = try await soak.run()
            await soak.cleanup()
            await sandbox.cleanup()
            return report
        } catch {
            for vm in vms { await vm.terminate() }
            await sandbox.cleanup()
            throw error
        }
    }

    init(options: Options, sandbox: Sandbox, created: ([SoakVM]) -> Void) async throws {
        self.options = options
        self.sandbox = sandbox
        random = SoakRandom(seed: options.seed)
        report = Report(seed: options.seed)
        // No option ROM: a guestless QEMU would run the NIC's iPXE for seconds at a full core.
        let model = "virtio-net-pci,romfile="
        let layout: [(vm: String, octet: Int)] = [("web1", 0), ("db1", 1)]
        var vms: [SoakVM] = []
        var nics: [SoakNIC] = []
        for (vm, octet) in layout {
            let qemuNICs = (0..<2).map { index in
                QEMUNIC(
                    id: "nic\(index)", mac: String(format: "52:54:00:50:%02x:%02x", octet, index + 1),
                    hubID: 10 + index, model: model)
            }
            vms.append(try SoakVM(name: vm, nics: qemuNICs, directory: sandbox.directory.path))
            created(vms)
            nics += qemuNICs.enumerated().map { index, nic in
                SoakNIC(
                    vm: vm, id: nic.id, mac: MACAddress(nic.mac)!,
                    alternateMAC: MACAddress(String(format: "02:00:00:50:%02x:%02x", octet, index + 1))!, hub: nic.hubID
                )
            }
        }
        self.vms = vms
        self.nics = nics
        notify = try SoakNotifyReader(path: sandbox.directory.path + "/notify.sock")
        var random = self.random
        let config = SoakModel.randomConfig(nics: nics, lowers: Self.lowerNames, using: &random)
        self.random = random
        self.model = SoakModel(lowerNames: Self.lowerNames, vms: layout.map(\.vm), nics: nics, config: config)
        for vm in vms { try await vm.launch() }
    }

    func cleanup() async {
        if let daemon { await daemon.stop() }
        notify.close()
        for vm in vms { await vm.terminate() }
    }

    func vm(_ name: String) -> SoakVM { vms.first { $0.name == name }! }

    func elapsed() -> Duration { ContinuousClock.now - started }

    // MARK: - Rounds

    func run() async throws -> Report {
        let lag = Mutex<Duration>(.zero)
        let lagMonitor = Task {
            while !Task.isCancelled {
                let start = ContinuousClock.now
                try? await Task.sleep(for: .milliseconds(50))
                let late = ContinuousClock.now - start - .milliseconds(50)
                lag.withLock { $0 = max($0, late) }
            }
        }
        defer { lagMonitor.cancel() }
        var report = try await rounds()
        report.poolLag = lag.withLock { $0 }
        return report
    }

    func rounds() async throws -> Report {
        options.log("soak: seed \(options.seed) (replay with --seed \(options.seed)); \(sandbox.namespace.name)")
        try writeConfig(model.config, atomic: true)
        try startDaemon()
        repeat {
            report.rounds += 1
            let round = report.rounds
            let chaosStart = ContinuousClock.now
            var count = 0
            while ContinuousClock.now - chaosStart < options.chaos {
                try await step()
                count += 1
                let pause = Double.random(in: 0...options.maxInterval.soakSeconds, using: &random)
                try await Task.sleep(for: .milliseconds(Int(pause * 1000)))
            }
            report.chaosTime += ContinuousClock.now - chaosStart
            options.log(
                "round \(round): \(count) events in \(String(format: "%.1f", (ContinuousClock.now - chaosStart).soakSeconds)) s"
            )
            let failuresBefore = report.failures.count
            try await quiesceAndCheck(round: round)
            if report.failures.count > failuresBefore {
                report.failures.append(
                    "last events of round \(round):\n  " + history.suffix(40).joined(separator: "\n  "))
                report.failures.append("daemon log (tail):\n" + daemonLogTail())
                break
            }
        } while elapsed() < options.duration && report.rounds < options.maxRounds ?? Int.max
        report.elapsed = elapsed()
        report.enobufsResyncs = enobufsLogged()
        return report
    }

    func daemonLogTail(lines: Int = 60) -> String {
        let log = (try? String(contentsOfFile: sandbox.directory.path + "/daemon.log", encoding: .utf8)) ?? ""
        return log.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    func enobufsLogged() -> Int {
        let log = (try? String(contentsOfFile: sandbox.directory.path + "/daemon.log", encoding: .utf8)) ?? ""
        return log.components(separatedBy: "link notifications were lost").count - 1
    }

    func record(_ kind: SoakEventKind, _ detail: String = "") {
        report.events[kind, default: 0] += 1
        let stamp = String(format: "%7.3f", elapsed().soakSeconds)
        history.append("\(stamp) \(kind.rawValue)\(detail.isEmpty ? "" : ": " + detail)")
        if history.count > 200 { history.removeFirst(history.count - 200) }
    }

    func fail(_ message: String) {
        report.failures.append(message)
        options.log("FAILED: \(message)")
    }
}
