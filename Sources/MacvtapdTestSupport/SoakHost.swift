import Foundation
import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A VM of the soak: QEMU without a guest OS, each NIC on its own hub with a probe, a QMP monitor
/// for macvtapd behind a symlink that outlives restarts (as a VM restarted by libvirt keeps its
/// socket path) and a second monitor for the soak's own checks.
public final class SoakVM: Sendable {
    public let name: String
    public let nics: [QEMUNIC]
    /// NIC id → the probe on that NIC's hub.
    public let probes: [String: Probe]
    /// The path the configuration names.
    public let qmpPath: String
    private let process = Mutex<QEMUProcess?>(nil)

    public init(name: String, nics: [QEMUNIC], directory: String) throws {
        self.name = name
        self.nics = nics
        probes = try Dictionary(uniqueKeysWithValues: nics.map { ($0.id, try Probe()) })
        qmpPath = directory + "/\(name).qmp"
    }

    public var qemu: QEMUProcess? { process.withLock { $0 } }

    public func launch() async throws {
        let qemu = try await QEMUProcess.launch(
            QEMUOptions(
                nics: nics, probes: nics.map { (probes[$0.id]!, $0.hubID) }, additionalMonitors: ["test.qmp"]))
        process.withLock { $0 = qemu }
        unlink(qmpPath)
        guard symlink(qemu.qmpSocketPath, qmpPath) == 0 else {
            throw ChildError("symlink \(qmpPath): \(String(cString: strerror(errno)))")
        }
    }

    /// `kill -9`: no QMP goodbye, as on a crash or an OOM kill.
    public func kill() async {
        guard
            let qemu = process.withLock({ current in
                defer { current = nil }; return current
            })
        else { return }
        await offPool { qemu.kill() }
        await qemu.terminate()
    }

    public func terminate() async {
        await process.withLock({ $0 })?.terminate()
        for probe in probes.values { probe.close() }
    }

    /// A QMP command through the soak's own monitor (`stop`, `cont`).
    public func command(_ name: String) async throws {
        guard let qemu else { throw ChildError("VM \(self.name) is not running") }
        let client = try await QMPClient.connect(to: qemu.additionalMonitorPaths[0])
        defer { Task { await client.close() } }
        try await client.execute(name)
    }

    public func network() async throws -> NetworkInfo {
        guard let qemu else { throw ChildError("VM \(name) is not running") }
        let client = try await QMPClient.connect(to: qemu.additionalMonitorPaths[0])
        defer { Task { await client.close() } }
        return try await client.networkInfo()
    }

    /// QEMU's CPU use (user + system) over `window`, as a fraction of one core.
    public func cpu(over window: Duration = .seconds(1)) async throws -> Double {
        guard let pid = qemu?.pid else { throw ChildError("VM \(name) is not running") }
        let before = SoakProcess.cpuSeconds(pid)
        let start = ContinuousClock.now
        try await Task.sleep(for: window)
        let elapsed = ContinuousClock.now - start
        return (SoakProcess.cpuSeconds(pid) - before) / elapsed.soakSeconds
    }
}

/// /proc figures of a process: CPU time, resident memory, open descriptors.
public enum SoakProcess {
    public static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
        return ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    public static func residentMiB(_ pid: pid_t) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return (line.split(separator: " ").dropFirst().first.flatMap { Double($0) } ?? 0) / 1024
        }
        return 0
    }

    public static func openFDs(_ pid: pid_t) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// How many descriptors of `pid` are open on a tap device node made in `directory` (macvtapd's
    /// `--device-dir`): nodes are named `tap<ifindex>.<pid>.<n>` and unlinked once opened. The
    /// daemon keeps one per backend it attached (`TapKeeper`).
    public static func tapFDs(_ pid: pid_t, in directory: String) -> Int {
        let prefix = directory + "/tap"
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return fds.filter { fd in
            let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")
            return target?.hasPrefix(prefix) == true
        }.count
    }

    /// The fewest descriptors seen in `samples` looks: a status write in flight holds one for a
    /// moment, and that is not a leak.
    public static func settledFDs(_ pid: pid_t, samples: Int = 6) async -> Int {
        var fewest = Int.max
        for _ in 0..<samples {
            fewest = min(fewest, openFDs(pid))
            try? await Task.sleep(for: .milliseconds(40))
        }
        return fewest
    }
}

/// One interface as `ip -j -d link show` reports it.
public struct SoakLink: Sendable {
    public var ifindex: Int32
    public var name: String
    /// The lower's name for a macvtap or a veth's peer.
    public var link: String?
    public var up: Bool
    public var mac: MACAddress?
    public var alias: String?
    public var kind: String?
    public var mode: String?

    public var owner: BindingKey? { Ownership.binding(fromAlias: alias) }

    /// Every interface of the namespace.
    public static func all(in namespace: NetworkNamespace) async throws -> [SoakLink] {
        let text = try await namespace.ip("-j", "-d", "link", "show")
        guard let array = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] else {
            throw ChildError("ip -j link show: not a JSON array: \(text.prefix(200))")
        }
        return array.compactMap { object in
            guard let index = object["ifindex"] as? Int, let name = object["ifname"] as? String else { return nil }
            let info = object["linkinfo"] as? [String: Any]
            return SoakLink(
                ifindex: Int32(index), name: name, link: object["link"] as? String,
                up: (object["flags"] as? [String] ?? []).contains("UP"),
                mac: (object["address"] as? String).flatMap(MACAddress.init), alias: object["ifalias"] as? String,
                kind: info?["info_kind"] as? String, mode: (info?["info_data"] as? [String: Any])?["mode"] as? String)
        }
    }
}

/// A systemd stand-in on NOTIFY_SOCKET that reads promptly, late, or not at all.
public final class SoakNotifyReader: Sendable {
    public let socket: NotifySocket
    private let state = Mutex<(mode: SoakNotifyMode, heard: [String])>((.none, []))
    private let task = Mutex<Task<Void, Never>?>(nil)

    public init(path: String) throws {
        socket = try NotifySocket(path: path)
        let reader = Task { [weak self] in
            var lastRead = ContinuousClock.now
            while !Task.isCancelled {
                guard let self else { return }
                let mode = self.state.withLock { $0.mode }
                let every: Duration? =
                    switch mode {
                    case .prompt: .milliseconds(50)
                    case .late: .seconds(3)
                    case .none, .never: nil
                    }
                if let every, ContinuousClock.now - lastRead >= every {
                    let messages = self.socket.drain()
                    self.state.withLock { $0.heard += messages }
                    lastRead = ContinuousClock.now
                }
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        task.withLock { $0 = reader }
    }

    /// A new daemon is about to start: what the last one said is gone; `never` fills the queue.
    public func prepare(_ mode: SoakNotifyMode) throws {
        _ = socket.drain()
        state.withLock { $0 = (mode, []) }
        if mode == .never { try socket.fill() }
    }

    public var mode: SoakNotifyMode { state.withLock { $0.mode } }

    /// systemd catches up: reads everything from now on.
    public func catchUp() { state.withLock { $0.mode = $0.mode == .none ? .none : .prompt } }

    public var heard: [String] { state.withLock { $0.heard } }

    public func close() {
        task.withLock { $0?.cancel() }
        socket.close()
    }
}

extension Duration {
    public var soakSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
