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

    /// VmRSS in MiB.
    static func residentMiB(_ pid: pid_t) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kib = line.split(separator: " ").dropFirst().first.flatMap { Double($0) } ?? 0
            return kib / 1024
        }
        return 0
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
