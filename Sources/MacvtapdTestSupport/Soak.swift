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

    // MARK: - Events

    /// One random fault among those that make sense now, weighted.
    func step() async throws {
        var choices: [(weight: Double, kind: SoakEventKind)] = []
        let present = model.lowers.filter { $0.state == .present }
        func add(_ weight: Double, _ kind: SoakEventKind, when condition: Bool = true) {
            if condition { choices.append((weight, kind)) }
        }
        add(8, .lowerDelete, when: !present.isEmpty)
        add(12, .lowerAdd, when: model.lowers.contains { $0.state == .absent })
        add(4, .lowerRenameAway, when: !present.isEmpty)
        add(8, .lowerRenameBack, when: model.lowers.contains { if case .away = $0.state { true } else { false } })
        add(6, .carrierDown, when: present.contains { $0.peerUp })
        add(8, .carrierUp, when: present.contains { !$0.peerUp })
        add(3, .lowerSwap, when: present.count >= 2)
        add(6, .configAtomic)
        add(4, .configInPlace)
        add(3, .configInvalid)
        // As systemd's ExecReload= runs only once the daemon is ready (READY=1): a SIGHUP before the
        // daemon listens for it ends it by the default action, as it would any process.
        add(3, .sighup, when: model.daemonRunning && daemonListens())
        add(1.5, .qemuKill, when: model.vmStates.values.contains { $0 != .dead })
        add(10, .qemuStart, when: model.vmStates.values.contains { $0 == .dead })
        add(2, .qemuPause, when: model.vmStates.values.contains { $0 == .running })
        add(6, .qemuContinue, when: model.vmStates.values.contains { $0 == .paused })
        add(1, .daemonKill, when: model.daemonRunning)
        add(1, .daemonTerm, when: model.daemonRunning)
        add(25, .daemonStart, when: !model.daemonRunning)
        add(1, .netlinkBurst, when: model.daemonRunning)
        add(2, .foreignAdd, when: model.foreign.count < 2 && !present.isEmpty)
        add(1, .foreignDelete, when: !model.foreign.isEmpty)
        let total = choices.reduce(0) { $0 + $1.weight }
        var roll = Double.random(in: 0..<total, using: &random)
        var kind = choices.last!.kind
        for choice in choices {
            if roll < choice.weight {
                kind = choice.kind
                break
            }
            roll -= choice.weight
        }
        try await perform(kind)
    }

    func perform(_ kind: SoakEventKind) async throws {
        let present = model.lowers.filter { $0.state == .present }.map(\.name)
        switch kind {
        case .lowerDelete:
            let name = random.pick(present)
            try await deleteLower(name)
            record(kind, name)
        case .lowerAdd:
            let name = random.pick(model.lowers.filter { $0.state == .absent }.map(\.name))
            try await addLower(name)
            record(kind, name)
        case .lowerRenameAway:
            let name = random.pick(present)
            try await sh("ip link set \(name) down && ip link set \(name) name aw\(name)")
            model.update(name) { $0.state = .away("aw\(name)") }
            record(kind, "\(name) → aw\(name)")
        case .lowerRenameBack:
            let away = model.lowers.compactMap { lower -> (String, String)? in
                if case .away(let other) = lower.state { return (lower.name, other) }
                return nil
            }
            let (name, other) = random.pick(away)
            try await renameBack(name, from: other)
            record(kind, "\(other) → \(name)")
        case .carrierDown:
            let name = random.pick(model.lowers.filter { $0.state == .present && $0.peerUp }.map(\.name))
            try await sh("ip link set \(name)p down")
            model.update(name) { $0.peerUp = false }
            record(kind, name)
        case .carrierUp:
            let name = random.pick(model.lowers.filter { $0.state == .present && !$0.peerUp }.map(\.name))
            try await sh("ip link set \(name)p up")
            model.update(name) { $0.peerUp = true }
            record(kind, name)
        case .lowerSwap:
            var names = present
            let first = names.remove(at: Int.random(in: 0..<names.count, using: &random))
            let second = random.pick(names)
            try await swap(first, second)
            record(kind, "\(first) ⇄ \(second)")
        case .configAtomic, .configInPlace:
            let next = model.mutatedConfig(using: &random)
            try writeConfig(next, atomic: kind == .configAtomic)
            record(kind, describe(next))
        case .configInvalid:
            let spoiler = random.pick(SoakInvalidConfig.allCases)
            let atomic = random.chance(0.5)
            try writeText(spoiler.spoil(yaml(model.config)), atomic: atomic)
            model.diskInvalid = true
            record(kind, "\(spoiler)\(atomic ? ", atomic" : ", in place")")
        case .sighup:
            guard let daemon else { return }
            kill(daemon.pid, SIGHUP)
            record(kind)
        case .qemuKill:
            let name = random.pick(model.vmStates.filter { $0.value != .dead }.keys.sorted())
            await vm(name).kill()
            model.vmStates[name] = .dead
            record(kind, name)
        case .qemuStart:
            let name = random.pick(model.vmStates.filter { $0.value == .dead }.keys.sorted())
            try await vm(name).launch()
            model.vmStates[name] = .running
            record(kind, name)
        case .qemuPause:
            let name = random.pick(model.vmStates.filter { $0.value == .running }.keys.sorted())
            try await vm(name).command("stop")
            model.vmStates[name] = .paused
            record(kind, name)
        case .qemuContinue:
            let name = random.pick(model.vmStates.filter { $0.value == .paused }.keys.sorted())
            try await vm(name).command("cont")
            model.vmStates[name] = .running
            record(kind, name)
        case .daemonKill:
            try await stopDaemon(signal: SIGKILL)
            record(kind)
        case .daemonTerm:
            try await stopDaemon(signal: SIGTERM)
            record(kind)
        case .daemonStart:
            try startDaemon()
        case .netlinkBurst:
            try await burst(withFault: random.chance(0.6))
        case .foreignAdd:
            try await addForeign(on: random.pick(present))
        case .foreignDelete:
            let foreign = random.pick(model.foreign)
            try await sh("ip link del \(foreign.name)")
            model.foreign.removeAll { $0.name == foreign.name }
            record(kind, foreign.name)
        }
    }

    /// A shell script inside the namespace.
    func sh(_ script: String) async throws {
        try await sandbox.namespace.exec(["sh", "-ec", script])
    }

    func deleteLower(_ name: String) async throws {
        try await sh("ip link del \(name)")
        let identity = model.lower(name).identity
        model.foreign.removeAll { $0.lowerIdentity == identity }
        model.update(name) { $0.state = .absent }
    }

    func addLower(_ name: String) async throws {
        try await sh(
            "ip link add \(name) type veth peer name \(name)p && ip link set \(name) up && ip link set \(name)p up")
        let identity = model.nextIdentity
        model.nextIdentity += 1
        model.update(name) {
            $0.state = .present
            $0.peerUp = true
            $0.identity = identity
        }
    }

    func renameBack(_ name: String, from other: String) async throws {
        try await sh("ip link set \(other) name \(name) && ip link set \(name) up")
        model.update(name) { $0.state = .present }
    }

    /// The veths behind two names trade places (a card swap, a renumbered bond), peers with them.
    func swap(_ first: String, _ second: String) async throws {
        try await sh(
            """
            ip link set \(first) down; ip link set \(second) down
            ip link set \(first)p down; ip link set \(second)p down
            ip link set \(first) name swtmp; ip link set \(second) name \(first); ip link set swtmp name \(second)
            ip link set \(first)p name swtmpp; ip link set \(second)p name \(first)p; ip link set swtmpp name \(second)p
            ip link set \(first) up; ip link set \(second) up; ip link set \(first)p up; ip link set \(second)p up
            """)
        let (one, two) = (model.lower(first).identity, model.lower(second).identity)
        model.update(first) {
            $0.identity = two
            $0.peerUp = true
        }
        model.update(second) {
            $0.identity = one
            $0.peerUp = true
        }
    }

    func addForeign(on lower: String) async throws {
        let name = ["fx0", "fx1", "fx2"].first { name in !model.foreign.contains { $0.name == name } }!
        let mode: MacvtapMode = random.pick([.bridge, .vepa, .private])
        let mac = MACAddress(
            String(
                format: "02:f0:%02x:%02x:%02x:%02x", Int.random(in: 0...255, using: &random),
                Int.random(in: 0...255, using: &random), Int.random(in: 0...255, using: &random),
                Int.random(in: 1...255, using: &random)))!
        try await sh(
            "ip link add \(name) link \(lower) address \(mac) type macvtap mode \(mode.rawValue) && ip link set \(name) up"
        )
        guard let link = try await SoakLink.all(in: sandbox.namespace).first(where: { $0.name == name }) else {
            throw ChildError("foreign macvtap \(name) vanished at once")
        }
        model.foreign.append(
            SoakForeign(
                name: name, lowerIdentity: model.lower(lower).identity, ifindex: link.ifindex, mode: mode, mac: mac))
        record(.foreignAdd, "\(name) on \(lower), \(mode.rawValue)")
    }

    /// Hundreds of link changes while the daemon cannot read (stopped, as a daemon starved of CPU
    /// is): its rtnetlink socket overflows (ENOBUFS) and it must resync. With `withFault`, a real
    /// host fault happens in the middle, so only the resync can tell the daemon about it.
    func burst(withFault: Bool) async throws {
        guard let daemon else { return }
        kill(daemon.pid, SIGSTOP)
        var detail = "400 alias changes"
        do {
            try await noiseBurst(changes: 200)
            if withFault {
                let present = model.lowers.filter { $0.state == .present }.map(\.name)
                if let name = present.isEmpty ? nil : random.pick(present) {
                    if random.chance(0.5) {
                        try await deleteLower(name)
                        try await addLower(name)
                        detail += ", \(name) deleted and re-added"
                    } else {
                        let up = !model.lower(name).peerUp
                        try await sh("ip link set \(name)p \(up ? "up" : "down")")
                        model.update(name) { $0.peerUp = up }
                        detail += ", \(name) carrier \(up ? "up" : "down")"
                    }
                }
            }
            try await noiseBurst(changes: 200)
        } catch {
            kill(daemon.pid, SIGCONT)
            throw error
        }
        kill(daemon.pid, SIGCONT)
        record(.netlinkBurst, detail)
    }

    func noiseBurst(changes: Int) async throws {
        let batch = sandbox.directory.path + "/burst.batch"
        let tag = Int.random(in: 0..<1_000_000, using: &random)
        let lines = (0..<changes).map { "link set \(Self.noise) alias soak-noise-\(tag)-\($0)" }
        try (lines.joined(separator: "\n") + "\n").write(toFile: batch, atomically: false, encoding: .utf8)
        try await sandbox.namespace.ip("-batch", batch)
    }

    // MARK: - Config

    func yaml(_ config: SoakConfig) -> String {
        config.yaml(qmp: { self.vm($0).qmpPath }, nics: nics)
    }

    func describe(_ config: SoakConfig) -> String {
        config.bindings.map {
            "\($0.key)→\($0.spec.lower)/\($0.spec.mode.rawValue)/\($0.spec.link.rawValue)/\($0.spec.mac.rawValue)"
        }
        .joined(separator: " ")
    }

    func writeConfig(_ config: SoakConfig, atomic: Bool) throws {
        try writeText(yaml(config), atomic: atomic)
        model.config = config
        model.diskInvalid = false
    }

    /// Atomically (a new file renamed over the old, as config management does) or in place (an
    /// editor's truncate and write: the daemon may read it half written, and must read it again).
    func writeText(_ text: String, atomic: Bool) throws {
        if atomic {
            try sandbox.directory.write(".macvtapd.yaml.new", text)
            guard rename(sandbox.directory.path + "/.macvtapd.yaml.new", sandbox.configPath) == 0 else {
                throw ChildError("rename over \(sandbox.configPath): \(String(cString: strerror(errno)))")
            }
        } else {
            try sandbox.writeConfig(text)
        }
    }

    // MARK: - Daemon

    /// Starts the daemon, its notify socket read as `notifyMode` (by default a random mode).
    func startDaemon(notifyMode: SoakNotifyMode? = nil) throws {
        let mode = notifyMode ?? random.pick(SoakNotifyMode.allCases)
        daemonNotifyMode = mode
        try notify.prepare(mode)
        let environment =
            mode == .none ? [:] : ["NOTIFY_SOCKET": notify.socket.path, "WATCHDOG_USEC": "1000000"]
        var info = stat()
        logOffsetAtStart = stat(sandbox.directory.path + "/daemon.log", &info) == 0 ? Int(info.st_size) : 0
        daemonReady = false
        daemonStartedAt = Date().timeIntervalSince1970
        daemon = try sandbox.startDaemon(environment: environment)
        model.daemonRunning = true
        report.notifyModes[mode, default: 0] += 1
        record(.daemonStart, "notify \(mode.rawValue)")
    }

    /// Stops the daemon with `signal`; a daemon that had already ended is a failure: it never
    /// exits on its own.
    func stopDaemon(signal: Int32) async throws {
        guard let daemon else { return }
        checkDaemonAlive()
        let status = await daemon.stop(signal: signal)
        // Before it listens for SIGTERM, the default action ends it: systemd counts that as clean too.
        if signal == SIGTERM && status != 0 && status != 128 + SIGTERM {
            fail("the daemon exited with status \(status) on SIGTERM")
        }
        self.daemon = nil
        model.daemonRunning = false
    }

    /// The running daemon's log lines so far.
    func daemonLog() -> String {
        guard let daemon, let file = fopen(daemon.logPath, "r") else { return "" }
        defer { fclose(file) }
        fseek(file, logOffsetAtStart, SEEK_SET)
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The daemon handles signals: it logs that it serves the control socket only after that.
    func daemonListens() -> Bool {
        if daemonReady { return true }
        guard let daemon, let file = fopen(daemon.logPath, "r") else { return false }
        defer { fclose(file) }
        fseek(file, logOffsetAtStart, SEEK_SET)
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            if let line, strstr(line, "serving the control socket") != nil {
                daemonReady = true
                return true
            }
        }
        return false
    }

    func checkDaemonAlive() {
        if let status = daemon?.endedStatus {
            fail("the daemon exited on its own with status \(status)")
            daemon = nil
            model.daemonRunning = false
        }
    }

    // MARK: - Quiescence and invariants

    func quiesceAndCheck(round: Int) async throws {
        checkDaemonAlive()
        // Every lower back with carrier, every VM running, a foreign macvtap present, the daemon up
        // with a valid config on disk.
        for lower in model.lowers {
            switch lower.state {
            case .absent: try await addLower(lower.name)
            case .away(let other): try await renameBack(lower.name, from: other)
            case .present: break
            }
            if !model.lower(lower.name).peerUp {
                try await sh("ip link set \(lower.name)p up")
                model.update(lower.name) { $0.peerUp = true }
            }
        }
        for (name, state) in model.vmStates.sorted(by: { $0.key < $1.key }) {
            switch state {
            case .dead: try await vm(name).launch()
            case .paused: try await vm(name).command("cont")
            case .running: break
            }
            model.vmStates[name] = .running
        }
        if model.foreign.isEmpty { try await addForeign(on: random.pick(Self.lowerNames)) }
        if model.diskInvalid { try writeConfig(model.config, atomic: true) }
        if !model.daemonRunning { try startDaemon() }
        let quiet = ContinuousClock.now

        guard let converged = await converge(since: quiet) else { return }
        report.convergence.append(converged)
        let slow = converged > options.convergenceTarget ? " (over the \(options.convergenceTarget) target)" : ""
        options.log("round \(round): converged \(LatencySummary.milliseconds(converged)) after quiescence\(slow)")

        try await checkFrames()
        try await checkCPU()
        try await checkForeign()
        await checkNotify()
        try await checkResyncsAndRestart()
        checkDaemonAlive()
    }

    /// Polls until the host matches the model; the time it took, or nil (a failure) past the bound.
    func converge(since start: ContinuousClock.Instant) async -> Duration? {
        var problems: [String] = []
        while ContinuousClock.now - start < options.convergenceBound {
            problems = await self.problems()
            if problems.isEmpty { return ContinuousClock.now - start }
            try? await Task.sleep(for: .milliseconds(20))
        }
        fail(
            "not converged \(options.convergenceBound) after quiescence:\n  " + problems.joined(separator: "\n  ")
                + "\n  config: \(describe(model.config))")
        return nil
    }

    /// How the host, the VMs and the status file differ from the desired state; empty when converged.
    func problems() async -> [String] {
        var problems: [String] = []
        let links: [SoakLink]
        do {
            links = try await SoakLink.all(in: sandbox.namespace)
        } catch {
            return ["ip link: \(error)"]
        }
        var networks: [String: NetworkInfo] = [:]
        for vm in vms {
            do {
                networks[vm.name] = try await vm.network()
            } catch {
                problems.append("info network of \(vm.name): \(error)")
            }
        }
        let status = try? StatusStore(path: sandbox.statusPath).read()
        // A fresh daemon adopting a converged host changes nothing; its first status write says it
        // has looked.
        if let updated = status?.updated, updated < daemonStartedAt {
            problems.append("status not yet written by the running daemon")
        }
        if status?.config?.valid != true {
            problems.append("status: config not valid: \(String(describing: status?.config))")
        }

        let desired = model.config.bindings
        let owned = links.filter { $0.owner != nil }
        for (key, spec) in desired {
            let nic = model.nic(key)
            let mine = owned.filter { $0.owner == key }
            guard mine.count == 1, let macvtap = mine.first else {
                problems.append("\(key): \(mine.count) owned macvtaps, want 1")
                continue
            }
            if macvtap.link != spec.lower {
                problems.append("\(key): macvtap on \(macvtap.link ?? "?"), want \(spec.lower)")
            }
            if macvtap.mode != spec.mode.rawValue {
                problems.append("\(key): mode \(macvtap.mode ?? "?"), want \(spec.mode.rawValue)")
            }
            if macvtap.mac != spec.macvtapMAC(of: nic) {
                problems.append("\(key): MAC \(macvtap.mac?.description ?? "?"), want \(spec.macvtapMAC(of: nic))")
            }
            if !macvtap.up { problems.append("\(key): macvtap \(macvtap.name) is down") }
            if let network = networks[key.vm] {
                let ids = Ownership.BackendIDs(nic: key.nic, ifindex: macvtap.ifindex)
                let ours = network.netdevIDs.filter { $0.hasPrefix("mvtd.\(key.nic).") }.sorted()
                if ours != [ids.port, ids.tap].sorted() {
                    problems.append("\(key): backends \(ours), want \([ids.port, ids.tap].sorted())")
                } else if network.hub(nic.hub)?.port(ids.port)?.peer?.id != ids.tap {
                    problems.append("\(key): \(ids.port) is not on hub \(nic.hub) with \(ids.tap)")
                }
            }
            let binding = status?.binding(key)
            if binding?.phase != .attached || binding?.lower != spec.lower || binding?.macvtap != macvtap.name
                || binding?.guestLink != true
            {
                problems.append(
                    "\(key): status \(binding.map { "\($0.phase.rawValue) lower \($0.lower ?? "-") macvtap \($0.macvtap ?? "-") link \(String(describing: $0.guestLink)): \($0.message)" } ?? "missing")"
                )
            }
        }
        let wanted = Set(desired.map(\.key))
        for orphan in owned where !wanted.contains(orphan.owner!) {
            problems.append("orphan macvtap \(orphan.name) of \(orphan.owner!)")
        }
        for (vm, network) in networks {
            for id in network.netdevIDs where id.hasPrefix("mvtd.") {
                if let parsed = Ownership.parseBackendID(id), wanted.contains(BindingKey(vm: vm, nic: parsed.ids.nic)) {
                    continue
                }
                problems.append("orphan backend \(id) in \(vm)")
            }
        }
        for binding in status?.bindings ?? [] where !wanted.contains(binding.key) {
            problems.append("status lists \(binding.key) (\(binding.phase.rawValue)), which is not desired")
        }
        return problems
    }

    /// Frames sent into each desired binding's lower (from its peer) reach the NIC's hub probe.
    func checkFrames() async throws {
        var reached = 0
        for (key, spec) in model.config.bindings {
            let nic = model.nic(key)
            let socket = try await PacketSocket.open(interface: spec.lower + "p", in: sandbox.namespace)
            defer { socket.close() }
            let marker = EthernetFrame.uniqueMarker()
            let frame = EthernetFrame.make(destination: spec.macvtapMAC(of: nic).bytes, payload: marker)
            let probe = vm(key.vm).probes[key.nic]!
            let deadline = ContinuousClock.now + .seconds(3)
            var seen = false
            while !seen && ContinuousClock.now < deadline {
                try socket.send(frame)
                seen = await probe.receive(timeout: .milliseconds(100), matching: FrameFilter(marker: marker)) != nil
            }
            if seen { reached += 1 } else { fail("\(key): no frame from \(spec.lower) reached the NIC's hub") }
        }
        note("frames reach every VM's hub through its lower: \(reached)/\(model.config.bindings.count)")
    }

    /// No QEMU spins (a backend on a dead fd costs ~90% of a core; idle under TCG is ~10%).
    func checkCPU() async throws {
        var figures: [String] = []
        for vm in vms {
            let cpu = try await vm.cpu()
            figures.append(String(format: "%@ %.0f%%", vm.name, cpu * 100))
            if cpu > 0.5 { fail("QEMU of \(vm.name) spins: \(Int(cpu * 100))% of a core over 1 s") }
        }
        note("QEMU CPU over 1 s: " + figures.joined(separator: ", "))
    }

    /// The foreign macvtaps are where they were, as they were.
    func checkForeign() async throws {
        let links = try await SoakLink.all(in: sandbox.namespace)
        for foreign in model.foreign {
            let lower = model.lowers.first { $0.identity == foreign.lowerIdentity }
            guard let link = links.first(where: { $0.name == foreign.name }) else {
                fail("foreign macvtap \(foreign.name) is gone")
                continue
            }
            if link.ifindex != foreign.ifindex || link.alias != nil || link.mode != foreign.mode.rawValue
                || link.mac != foreign.mac || link.link != lower?.name || !link.up
            {
                fail("foreign macvtap \(foreign.name) was touched: \(link), recorded \(foreign)")
            }
        }
        note("foreign macvtaps untouched: \(model.foreign.map(\.name).joined(separator: ", "))")
    }

    /// systemd, reading again, hears that the daemon is ready and its current status.
    func checkNotify() async {
        let mode = notify.mode
        guard mode != .none else { return }
        notify.catchUp()
        let count = model.config.bindings.count
        let expected = "STATUS=\(count) binding(s)" + (count == 0 ? "" : ": \(count) Attached")
        let deadline = ContinuousClock.now + .seconds(3)
        var heard: [String] = []
        while ContinuousClock.now < deadline {
            heard = notify.heard
            let status = heard.last { $0.contains("STATUS=") }?.split(separator: "\n").first { $0.hasPrefix("STATUS=") }
            if heard.contains(where: { $0.contains("READY=1") }) && status.map(String.init) == expected {
                note("notify (\(mode.rawValue) reader): READY=1 and \(expected) heard")
                return
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let status = (try? StatusStore(path: sandbox.statusPath).read())?.bindings.map {
            "\($0.key) \($0.phase.rawValue)"
        }
        fail(
            "notify (\(mode.rawValue) reader): want READY=1 and \(expected), heard \(heard.count) datagrams: "
                + "\(heard.filter { $0 != "WATCHDOG=1" }.suffix(20)); status file: \(status ?? [])")
    }

    /// No descriptor or memory growth across resyncs, and none against a fresh daemon: forced
    /// resyncs (link bursts, SIGHUP) must converge again with as many descriptors as before; then
    /// SIGTERM and a fresh start adopt everything (no netdev replaced) and hold as many.
    func checkResyncsAndRestart() async throws {
        guard let daemon else { return }
        let fdsBefore = await SoakProcess.settledFDs(daemon.pid)
        for _ in 0..<3 {
            kill(daemon.pid, SIGSTOP)
            try? await noiseBurst(changes: 300)
            kill(daemon.pid, SIGCONT)
            try await Task.sleep(for: .milliseconds(50))
        }
        kill(daemon.pid, SIGHUP)
        let forced = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(150))
        guard let resynced = await converge(since: forced) else { return }
        report.resyncConvergence.append(resynced)
        let fdsAfter = await SoakProcess.settledFDs(daemon.pid)
        let rss = SoakProcess.residentMiB(daemon.pid)
        if fdsAfter > fdsBefore { fail("the daemon's descriptors grew across resyncs: \(fdsBefore) → \(fdsAfter)") }

        let backends = try await backendIDs()
        let macvtaps = try await SoakLink.all(in: sandbox.namespace).filter { $0.owner != nil }.map(\.ifindex).sorted()
        try await stopDaemon(signal: SIGTERM)
        // The same notify mode, so both daemons hold a notify socket or neither does.
        try startDaemon(notifyMode: daemonNotifyMode)
        let restarted = ContinuousClock.now
        guard let fresh = self.daemon, let adopted = await converge(since: restarted) else { return }
        report.restartConvergence.append(adopted)
        if try await backendIDs() != backends { fail("a fresh daemon replaced backends instead of adopting them") }
        let macvtapsNow = try await SoakLink.all(in: sandbox.namespace).filter { $0.owner != nil }.map(\.ifindex)
            .sorted()
        if macvtapsNow != macvtaps { fail("a fresh daemon replaced macvtaps: \(macvtaps) → \(macvtapsNow)") }
        // Descriptors are compared once the fresh daemon holds what the soaked one does: a session
        // with every VM.
        let sessions = await waitUntil(timeout: options.convergenceBound) {
            let log = self.daemonLog()
            return self.model.config.vms.keys.allSatisfy { log.contains("QMP session with VM \($0) established") }
        }
        if sessions == nil { fail("the fresh daemon did not connect to every VM: \(daemonLog().suffix(2000))") }
        try await Task.sleep(for: .milliseconds(200))
        let freshFDs = await SoakProcess.settledFDs(fresh.pid)
        let freshRSS = SoakProcess.residentMiB(fresh.pid)
        // One more is the monitor-socket watch (inotify), made only by a daemon that waited for a
        // VM's socket to appear.
        if fdsAfter > freshFDs + 1 {
            fail("the soaked daemon held \(fdsAfter) descriptors, a fresh one \(freshFDs)")
        }
        if rss > 128 || rss > freshRSS + 32 {
            fail(String(format: "the soaked daemon's RSS is %.1f MiB, a fresh one's %.1f MiB", rss, freshRSS))
        }
        note(
            "daemon fds \(fdsBefore) → \(fdsAfter) across 3 link bursts + SIGHUP (fresh daemon: \(freshFDs)); "
                + String(format: "RSS %.1f MiB (fresh %.1f MiB)", rss, freshRSS))
    }

    func backendIDs() async throws -> [String] {
        var ids: [String] = []
        for vm in vms {
            ids += try await vm.network().netdevIDs.filter { $0.hasPrefix("mvtd.") }.map { "\(vm.name):\($0)" }
        }
        return ids.sorted()
    }

    func note(_ line: String) {
        report.checks.append("round \(report.rounds): \(line)")
        options.log("round \(report.rounds): \(line)")
    }
}
