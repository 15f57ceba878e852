import ArgumentParser
import Foundation
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdQMP
import MacvtapdTestSupport
import Synchronization

struct ReconnectBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reconnect",
        abstract: "Lower interface loss and return: the daemon with events beside a 1 s polling baseline.",
        discussion: """
            In a network namespace with a veth host interface and a real QEMU (NIC on a hub with a
            probe), `macvtapd run` is started twice: with rtnetlink events (the product), and with
            `--no-events --resync 1` (the proof of concept's approach: poll every second). Each flap
            deletes the lower and adds it again. Times start at the RTM_DELLINK / RTM_NEWLINK the
            benchmark's own link monitor receives (the same notification the daemon gets):
            - loss → detached: until `info network` shows no macvtapd netdev for the NIC (polled
              while the bench's `ip link del` is still waiting for the kernel's rcu_barrier);
            - loss → link down recorded: until the status file records guest carrier down;
            - return → attached: until `info network` shows the new backend; once with the lower
              made as `ip link add` + `ip link set` of its peer and of itself (three requests, the
              last two right after the first), once made by the `ip link add` alone and set up only
              after the attach was seen (the daemon's work with no request of the bench's own
              competing for RTNL);
            - return → first frame: until a frame sent into the lower's peer every millisecond
              reaches the hub probe;
            - return → attached as the daemon records it: the lower made by the `ip link add` alone
              (down, no carrier yet: a veth cannot be made up in the request that makes it), and
              the time the daemon's status file gives for the binding's new phase (NoCarrier, written
              once the backend is attached and the guest carrier set down; wall clock) against the
              wall-clock time of the bench's RTM_NEWLINK. The bench asks QEMU nothing meanwhile (each
              `info network` above costs QEMU's monitor thread, which reads the daemon's commands
              too, about 0.4 ms).
            """)

    @Option(help: "Flaps with events.") var flaps = 50
    @Option(help: "Flaps of the 1 s polling baseline.") var baselineFlaps = 20

    struct Samples {
        var detached: [Duration] = []
        var linkDown: [Duration] = []
        var attached: [Duration] = []
        var frame: [Duration] = []
        /// The lower re-created by one `ip link add` with no `ip link set` after it.
        var attachedAlone: [Duration] = []
        /// The lower made by one request; the attach as the daemon's status file records it.
        var recorded: [Duration] = []
    }

    func run() async throws {
        print("reconnect: \(flaps) flaps with events, \(baselineFlaps) with 1 s polling")
        let events = try await measure(flaps: flaps, daemonArguments: [])
        let polling = try await measure(flaps: baselineFlaps, daemonArguments: ["--no-events", "--resync", "1"])
        let rows = [
            ResultRow(
                measure: "lower deleted → dead backend detached", macvtapd: LatencySummary(events.detached),
                baseline: LatencySummary(polling.detached), target: "p99 ≤ 20 ms"),
            ResultRow(
                measure: "lower deleted → guest link down recorded", macvtapd: LatencySummary(events.linkDown),
                baseline: LatencySummary(polling.linkDown), target: ""),
            ResultRow(
                measure: "lower back (RTM_NEWLINK) → backend attached", macvtapd: LatencySummary(events.attached),
                baseline: LatencySummary(polling.attached), target: "median ≤ 4 ms, p99 ≤ 10 ms"),
            ResultRow(
                measure:
                    "lower back, made by one `ip link add` with no `ip link set` after it (RTM_NEWLINK) → backend attached",
                macvtapd: LatencySummary(events.attachedAlone), baseline: LatencySummary(polling.attachedAlone),
                target: "median ≤ 4 ms, p99 ≤ 10 ms"),
            ResultRow(
                measure:
                    "lower back, made by one `ip link add` (RTM_NEWLINK) → attached as the daemon's status records it (the bench asks QEMU nothing)",
                macvtapd: LatencySummary(events.recorded), baseline: LatencySummary(polling.recorded),
                target: "median ≤ 4 ms, p99 ≤ 10 ms"),
            ResultRow(
                measure: "lower back (RTM_NEWLINK) → first frame at the probe", macvtapd: LatencySummary(events.frame),
                baseline: LatencySummary(polling.frame), target: ""),
        ]
        print(ResultRow.header())
        for row in rows { print(row.markdown) }
    }

    func measure(flaps: Int, daemonArguments: [String]) async throws -> Samples {
        let nic = QEMUNIC(id: "nic0", mac: "52:54:00:be:00:00", hubID: 10)
        return try await Sandbox.with(nics: [nic], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            let daemon = try sandbox.startDaemon(daemonArguments)
            defer { Task { await daemon.stop() } }
            let qmp = try await QMPClient.connect(to: sandbox.testMonitorPath)
            let monitor = try LinkMonitor(networkNamespace: sandbox.namespace.path)
            let notifications = LinkNotifications(monitor)
            defer {
                monitor.close()
                Task { await qmp.close() }
            }
            guard
                try await waitUntil(
                    timeout: .seconds(10), { !backendIDs(try await qmp.networkInfo(), nic: "nic0").isEmpty })
                    != nil
            else { throw ChildError("the daemon never attached: \(daemon.log())") }

            var samples = Samples()
            for _ in 0..<flaps {
                // Not awaited before the wait for the detach: `ip link del` returns only after the
                // kernel's rcu_barrier and the wait for the lower's last references (15-17 ms on
                // this machine), long after its RTM_DELLINK, and that is not the daemon's time.
                let deletion = Task { try await sandbox.deleteLower("up0") }
                let deleted = try await notifications.next(timeout: .seconds(5)) { (event: LinkEvent) in
                    if case .deleted(let link) = event { return link.name == "up0" }
                    return false
                }
                let detached = try await waitUntil(timeout: .seconds(10), every: .milliseconds(1)) {
                    backendIDs(try await qmp.networkInfo(), nic: "nic0").isEmpty
                }
                let linkDown = await waitUntil(timeout: .seconds(10), every: .milliseconds(1)) {
                    (try? sandbox.status())?.bindings.first?.guestLink == false
                }
                guard let detached, let linkDown else { throw ChildError("not detached: \(daemon.log())") }
                samples.detached.append(detached - deleted)
                samples.linkDown.append(linkDown - deleted)
                try await deletion.value

                try await sandbox.namespace.exec([
                    "sh", "-c", "ip link add up0 type veth peer name up0p && ip link set up0p up && ip link set up0 up",
                ])
                let added = try await notifications.added("up0")
                let attached = try await waitUntil(timeout: .seconds(10), every: .milliseconds(1)) {
                    backendIDs(try await qmp.networkInfo(), nic: "nic0").count == 2
                }
                guard let attached else { throw ChildError("not reattached: \(daemon.log())") }
                samples.attached.append(attached - added)
                let frame = try await firstFrame(sandbox: sandbox, nic: nic)
                samples.frame.append(frame - added)
                await settled(sandbox)
            }
            // The same return with nothing of the bench's own holding RTNL meanwhile: the lower is
            // made in one request (down, its peer down: no carrier yet, so the guest carrier is set
            // down and nothing is announced) and set up only after the attach was seen.
            for _ in 0..<flaps {
                try await sandbox.deleteLower("up0")
                guard
                    try await waitUntil(
                        timeout: .seconds(10), every: .milliseconds(1),
                        {
                            backendIDs(try await qmp.networkInfo(), nic: "nic0").isEmpty
                        }) != nil
                else { throw ChildError("not detached: \(daemon.log())") }
                try await sandbox.namespace.exec(["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p"])
                let added = try await notifications.added("up0")
                let attached = try await waitUntil(timeout: .seconds(10), every: .milliseconds(1)) {
                    backendIDs(try await qmp.networkInfo(), nic: "nic0").count == 2
                }
                guard let attached else { throw ChildError("not reattached: \(daemon.log())") }
                samples.attachedAlone.append(attached - added)
                try await sandbox.namespace.exec(["sh", "-c", "ip link set up0p up && ip link set up0 up"])
                await settled(sandbox)
            }
            for _ in 0..<flaps {
                samples.recorded.append(
                    try await recordedAttach(sandbox: sandbox, daemon: daemon, notifications: notifications))
            }
            let failures = daemon.log().split(separator: "\n").filter { $0.contains("failed") }
            if !failures.isEmpty {
                print("daemon reported \(failures.count) failed step(s), e.g. \(failures[0])")
            }
            return samples
        }
    }

    /// One flap timed by the daemon's own record: RTM_NEWLINK (the bench's, on the wall clock) to
    /// the `since` of the binding's phase after HostMissing in the status file, which the bench
    /// polls (no QMP). The lower comes up only afterwards.
    func recordedAttach(
        sandbox: Sandbox, daemon: BackgroundProcess, notifications: LinkNotifications
    ) async throws -> Duration {
        try await sandbox.deleteLower("up0")
        guard
            await waitUntil(
                timeout: .seconds(10), every: .milliseconds(1),
                { (try? sandbox.status())?.bindings.first?.phase == .hostMissing }) != nil
        else { throw ChildError("not detached: \(daemon.log())") }
        try await sandbox.namespace.exec(["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p"])
        let added = try await notifications.added("up0")
        let addedWall = Date().timeIntervalSince1970 - (ContinuousClock.now - added).seconds
        let deadline = ContinuousClock.now + .seconds(10)
        var recorded: Duration?
        while recorded == nil, ContinuousClock.now < deadline {
            if let binding = (try? sandbox.status())?.bindings.first, binding.phase != .hostMissing,
                binding.macvtap != nil, binding.since > addedWall - 1
            {
                recorded = .microseconds(Int64((binding.since - addedWall) * 1e6))
            } else {
                try await Task.sleep(for: .milliseconds(1))
            }
        }
        guard let recorded else { throw ChildError("no attach recorded: \(daemon.log())") }
        try await sandbox.namespace.exec(["sh", "-c", "ip link set up0p up && ip link set up0 up"])
        await settled(sandbox)
        return recorded
    }

    /// Lets the daemon settle (guest link up, status written) before the next flap.
    func settled(_ sandbox: Sandbox) async {
        _ = await waitUntil(timeout: .seconds(5)) { (try? sandbox.status())?.bindings.first?.guestLink == true }
    }

    /// Sends a marked frame into the lower's peer every millisecond until the probe sees one.
    func firstFrame(sandbox: Sandbox, nic: QEMUNIC) async throws -> ContinuousClock.Instant {
        let socket = try PacketSocket(interface: "up0p", in: sandbox.namespace)
        defer { socket.close() }
        let marker = EthernetFrame.uniqueMarker()
        let frame = EthernetFrame.make(destination: MACAddress(nic.mac)!.bytes, payload: marker)
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            try socket.send(frame)
            if await sandbox.probes["nic0"]!.receive(timeout: .milliseconds(1), matching: FrameFilter(marker: marker))
                != nil
            {
                return ContinuousClock.now
            }
        }
        throw ChildError("no frame reached the probe")
    }
}

/// Link notifications with the time each was received, for timing what follows them. One task
/// consumes the monitor's stream (it has a single consumer) into a buffer the waits read.
final class LinkNotifications: Sendable {
    final class Log: Sendable {
        let entries = Mutex<[(event: LinkEvent, at: ContinuousClock.Instant)]>([])
    }
    private let log = Log()
    private let consumed = Mutex(0)
    private let task: Task<Void, Never>

    init(_ monitor: LinkMonitor) {
        let events = monitor.events
        let log = self.log
        task = Task {
            for await event in events {
                let now = ContinuousClock.now
                log.entries.withLock { $0.append((event, now)) }
            }
        }
    }

    deinit { task.cancel() }

    /// The receive time of the next RTM_NEWLINK that announces a new link named `name`.
    func added(_ name: String, timeout: Duration = .seconds(5)) async throws -> ContinuousClock.Instant {
        try await next(timeout: timeout) { (event: LinkEvent) in
            if case .added(let link) = event { return link.name == name }
            return false
        }
    }

    /// The receive time of the next event, after those already returned, that `matching` accepts.
    func next(timeout: Duration, matching: (LinkEvent) -> Bool) async throws -> ContinuousClock.Instant {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let start = consumed.withLock { $0 }
            let events = log.entries.withLock { Array($0.dropFirst(start)) }
            if let index = events.firstIndex(where: { matching($0.event) }) {
                consumed.withLock { $0 = start + index + 1 }
                return events[index].at
            }
            try await Task.sleep(for: .microseconds(200))
        }
        throw ChildError("no matching link notification within \(timeout)")
    }
}
