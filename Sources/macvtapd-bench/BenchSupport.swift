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

/// Reads one sample from a Prometheus textfile the daemon writes.
func metric(_ path: String, _ name: String) -> Double? {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
        return Double(line.dropFirst(name.count + 1))
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
