import Foundation
import MacvtapdCore
import MacvtapdQMP
import MacvtapdTestSupport

/// The ids of macvtapd's netdevs for one NIC, from `info network`.
func backendIDs(_ network: NetworkInfo, nic: String) -> [String] {
    network.netdevIDs.filter { $0.hasPrefix("mvtd.\(nic).") }
}

/// Process accounting from /proc: CPU time and resident memory.
enum ProcessStats {
    /// User + system CPU seconds the process used so far.
    static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Seconds each of the process's threads has run on a CPU, by thread id, from its schedstat
    /// (nanoseconds): utime + stime come in clock ticks (10 ms), a third of an idle minute's 30 ms.
    static func runSeconds(_ pid: pid_t) -> [Int: Double] {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return [:] }
        var seconds: [Int: Double] = [:]
        for task in tasks {
            guard let tid = Int(task),
                let line = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/schedstat", encoding: .utf8),
                let first = line.split(separator: " ").first, let value = Double(first)
            else { continue }
            seconds[tid] = value / 1e9
        }
        return seconds
    }

    /// The CPU seconds the threads alive at `after` ran since `before` (a thread born in between
    /// counts whole; one that exited in between is not counted).
    static func runSeconds(from before: [Int: Double], to after: [Int: Double]) -> Double {
        after.reduce(0) { sum, thread in sum + max(0, thread.value - (before[thread.key] ?? 0)) }
    }

    /// A process's memory as `ps` and the kernel report it, in MiB, read at one moment.
    struct Memory {
        /// VmRSS: resident now, what `ps -o rss` and `top` show (anonymous and file pages).
        var resident: Double
        /// VmHWM: the most the process has been resident since it started (exec).
        var peak: Double
        var anonymous: Double
        var file: Double

        /// `26.1 MiB (anon 12.0, file 14.1)`
        var described: String {
            String(format: "%.1f MiB (anon %.1f, file %.1f)", resident, anonymous, file)
        }
    }

    /// User and system (kernel) CPU seconds the process (all its threads) used so far.
    static func cpuTimes(_ pid: pid_t) -> (user: Double, system: Double) {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return (0, 0) }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let tick = Double(sysconf(Int32(_SC_CLK_TCK)))
        return ((Double(fields[11]) ?? 0) / tick, (Double(fields[12]) ?? 0) / tick)
    }

    /// `/proc/PID/status` of a running process; zeros when it is gone.
    static func memory(_ pid: pid_t) -> Memory {
        var memory = Memory(resident: 0, peak: 0, anonymous: 0, file: 0)
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return memory }
        for line in status.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, let kib = Double(fields[1]) else { continue }
            switch fields[0] {
            case "VmRSS:": memory.resident = kib / 1024
            case "VmHWM:": memory.peak = kib / 1024
            case "RssAnon:": memory.anonymous = kib / 1024
            case "RssFile:": memory.file = kib / 1024
            default: break
            }
        }
        return memory
    }
}

/// The whole machine's CPU time from /proc/stat, in seconds summed over all cores: what the
/// processes and the kernel spent (busy, including interrupts) and what no one used (idle,
/// including I/O wait).
struct MachineCPU {
    var busy: Double
    var idle: Double

    static func now() -> MachineCPU {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") })
        else { return MachineCPU(busy: 0, idle: 0) }
        // user nice system idle iowait irq softirq steal (guest time is counted in user already).
        let ticks = line.split(separator: " ").dropFirst().prefix(8).map { Double($0) ?? 0 }
        let tick = Double(sysconf(Int32(_SC_CLK_TCK)))
        guard ticks.count == 8 else { return MachineCPU(busy: 0, idle: 0) }
        let idle = ticks[3] + ticks[4]
        return MachineCPU(busy: (ticks.reduce(0, +) - idle) / tick, idle: idle / tick)
    }

    static func - (after: MachineCPU, before: MachineCPU) -> MachineCPU {
        MachineCPU(busy: after.busy - before.busy, idle: after.idle - before.idle)
    }
}

/// Where a stretch of wall time went, machine-wide: the daemon's user and kernel CPU, the QEMUs'
/// CPU, everything else that ran, and idle time (nobody runnable: waiting on RTNL, on QMP replies
/// or on I/O).
struct CPUBreakdown {
    var wall: Double
    var machine: MachineCPU
    var daemonUser: Double
    var daemonSystem: Double
    var qemu: Double
    /// This bench's own process (its polling of the metrics textfile, its link monitor): part of
    /// `other`.
    var bench: Double

    struct Snapshot {
        var machine: MachineCPU
        var daemon: (user: Double, system: Double)
        var qemu: Double
        var bench: Double

        static func now(daemon: pid_t?, qemus: [pid_t]) -> Snapshot {
            Snapshot(
                machine: .now(), daemon: daemon.map(ProcessStats.cpuTimes) ?? (0, 0),
                qemu: qemus.reduce(0) { $0 + ProcessStats.cpuSeconds($1) }, bench: ProcessStats.cpuSeconds(getpid()))
        }
    }

    /// `before` taken with no daemon yet (its CPU counts from zero).
    init(from before: Snapshot, to after: Snapshot, wall: Duration) {
        self.wall = wall.seconds
        machine = after.machine - before.machine
        daemonUser = after.daemon.user - before.daemon.user
        daemonSystem = after.daemon.system - before.daemon.system
        qemu = after.qemu - before.qemu
        bench = after.bench - before.bench
    }

    var other: Double { max(0, machine.busy - daemonUser - daemonSystem - qemu) }

    /// `wall 2.61 s × 2 cores = 5.22 s: daemon 0.41 user + 0.70 kernel, QEMUs 3.02, other 0.60 (of which this
    /// bench 0.05), idle 0.49`
    func described(cores: Int, qemus: Int, bindings: Int) -> String {
        String(
            format: "wall %.2f s x %d cores = %.2f CPU-s: daemon %.2f user + %.2f kernel, %d QEMUs %.2f (%.2f ms "
                + "per binding), other %.2f (of which this bench %.2f), idle %.2f",
            wall, cores, machine.busy + machine.idle, daemonUser, daemonSystem, qemus, qemu,
            qemu * 1000 / Double(max(1, bindings)), other, bench, machine.idle)
    }
}

/// Reads one sample from a Prometheus textfile the daemon writes: the file's bytes searched for
/// the line, without a String of the whole file or an array of its lines. The scale bench reads
/// it every 2–5 ms while it measures, on the cores the daemon and the QEMUs it measures use
/// (that way it took 0.05 CPU-s of a 0.38 s flap's return).
func metric(_ path: String, _ name: String) -> Double? {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var text: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16 * 1024)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        if count < 0, errno == EINTR { continue }
        guard count > 0 else { break }
        text += chunk[..<count]
    }
    let prefix = Array((name + " ").utf8)
    var lineStart = 0
    while lineStart < text.count {
        let lineEnd = text[lineStart...].firstIndex(of: UInt8(ascii: "\n")) ?? text.count
        if lineEnd - lineStart > prefix.count, text[lineStart..<(lineStart + prefix.count)].elementsEqual(prefix) {
            return Double(String(decoding: text[(lineStart + prefix.count)..<lineEnd], as: UTF8.self))
        }
        lineStart = lineEnd + 1
    }
    return nil
}

/// A row of the results table.
struct ResultRow {
    var measure: String
    var macvtapd: LatencySummary?
    var baseline: LatencySummary?
    var target: String
    /// Whether the ratio column means anything: not for two subjects that are both macvtapd.
    var ratio = true

    /// `first` and `second` name the two columns' subjects (`macvtapd` beside its `baseline`, or
    /// two launchers both managed by macvtapd).
    static func header(_ first: String = "macvtapd", _ second: String = "baseline") -> String {
        "| measure | \(first) median | p99 | max | \(second) median | p99 | max | ratio (median) | target |\n"
            + "|---|---|---|---|---|---|---|---|---|"
    }

    var markdown: String {
        func cells(_ summary: LatencySummary?) -> String {
            guard let summary else { return "– | – | –" }
            return [summary.median, summary.p99, summary.max].map(LatencySummary.milliseconds).joined(separator: " | ")
        }
        var factor = "–"
        if ratio, let macvtapd, let baseline {
            factor = String(format: "%.0fx", baseline.median.seconds / max(macvtapd.median.seconds, 1e-9))
        }
        return "| \(measure) | \(cells(macvtapd)) | \(cells(baseline)) | \(factor) | \(target) |"
    }
}

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
