import MacvtapdCore

/// `macvtapd status` as a table: one row per binding, then the configuration's errors if it is invalid.
enum StatusTable {
    /// What the PHASE column shows for a configured binding that has no status yet.
    static let noStatus = "-"

    static func render(_ document: StatusDocument, now: Double, desired: DesiredState? = nil) -> String {
        let header = ["BINDING", "PHASE", "REASON", "HOST", "LINK", "SINCE", "ATTEMPTS", "MESSAGE"]
        var rows = document.bindings.map { binding in
            [
                binding.key.description, binding.phase.rawValue, binding.reason, binding.lower ?? "-",
                binding.guestLink.map { $0 ? "up" : "down" } ?? "-", age(now - binding.since),
                String(binding.attempts), binding.message,
            ]
        }
        // Bindings the configuration declares that no apply or reconcile has recorded yet.
        let reported = Set(document.bindings.map(\.key))
        for key in (desired?.bindings.map(\.key) ?? []).sorted() where !reported.contains(key) {
            rows.append([
                key.description, noStatus, "NoStatusYet", "-", "-", "-", "-",
                "in the configuration, not reconciled yet",
            ])
        }
        let widths = header.indices.map { column in
            ([header] + rows).map { $0[column].count }.max() ?? 0
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
            }.joined(separator: "  ")
        }
        var lines = [line(header)] + rows.map(line)
        if let config = document.config, !config.valid {
            lines.append("")
            lines.append("config \(config.path) is invalid; the last good desired state stays in force:")
            lines += config.errors.map { "  " + $0 }
        }
        return lines.joined(separator: "\n")
    }

    /// `42s`, `3m`, `5h`, `2d`: how long ago.
    static func age(_ seconds: Double) -> String {
        let s = Int(max(0, seconds))
        if s < 120 { return "\(s)s" }
        if s < 7200 { return "\(s / 60)m" }
        if s < 172_800 { return "\(s / 3600)h" }
        return "\(s / 86400)d"
    }
}
