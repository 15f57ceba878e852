import MacvtapdCore
import Synchronization

/// The daemon's metrics, rendered in the Prometheus text format for node_exporter's textfile
/// collector (written atomically, so a scrape never reads half a file).
public final class Metrics: Sendable {
    /// Attach latency buckets in seconds: QMP attach is ~3 ms, so the interesting range is 1 ms–1 s.
    static let attachBuckets: [Double] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1]

    struct State {
        var phases: [Phase: Int] = [:]
        var reconciles = 0
        var failures = 0
        var attachCounts = [Int](repeating: 0, count: Metrics.attachBuckets.count)
        var attachCount = 0
        var attachSum = 0.0
        var reloadSuccesses = 0
        var reloadFailures = 0
        var lastResync: Double?
        var lastResyncDuration: Double?
        var handovers = 0
        var handoverSum = 0.0
    }
    private let state = Mutex(State())

    public init() {}

    func reconciled(duration: Duration) { state.withLock { $0.reconciles += 1 } }
    func failed() { state.withLock { $0.failures += 1 } }

    /// A migration handover: RESUME received → macvtap up.
    func handedOver(duration: Duration) {
        state.withLock { state in
            state.handovers += 1
            state.handoverSum += duration.milliseconds / 1000
        }
    }
    func resynced(at time: Double, duration: Duration) {
        state.withLock { state in
            state.lastResync = time
            state.lastResyncDuration = duration.milliseconds / 1000
        }
    }

    func configReloaded(success: Bool) {
        state.withLock { state in
            if success { state.reloadSuccesses += 1 } else { state.reloadFailures += 1 }
        }
    }

    func attached(duration: Duration) {
        let seconds = duration.milliseconds / 1000
        state.withLock { state in
            for (index, bound) in Metrics.attachBuckets.enumerated() where seconds <= bound {
                state.attachCounts[index] += 1
            }
            state.attachCount += 1
            state.attachSum += seconds
        }
    }

    func phases(_ phases: [Phase]) {
        state.withLock { state in
            state.phases = Dictionary(grouping: phases, by: { $0 }).mapValues(\.count)
        }
    }

    public var reconcileCount: Int { state.withLock { $0.reconciles } }

    public func render() -> String {
        let state = self.state.withLock { $0 }
        var lines: [String] = []
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, String)]) {
            lines.append("# HELP \(name) \(help)")
            lines.append("# TYPE \(name) \(type)")
            for (labels, value) in samples { lines.append("\(name)\(labels) \(value)") }
        }
        metric(
            "macvtapd_bindings", "gauge", "Bindings by phase.",
            Phase.allCases.map { ("{phase=\"\($0.rawValue)\"}", String(state.phases[$0] ?? 0)) })
        metric("macvtapd_reconciles_total", "counter", "VM reconcile passes.", [("", String(state.reconciles))])
        metric(
            "macvtapd_reconcile_failures_total", "counter", "Bindings whose reconcile failed.",
            [("", String(state.failures))])
        var buckets = zip(Metrics.attachBuckets, state.attachCounts).map { bound, count in
            ("_bucket{le=\"\(bound)\"}", String(count))
        }
        buckets.append(("_bucket{le=\"+Inf\"}", String(state.attachCount)))
        buckets.append(("_sum", String(state.attachSum)))
        buckets.append(("_count", String(state.attachCount)))
        metric(
            "macvtapd_attach_duration_seconds", "histogram",
            "Time to attach a backend: open the tap, getfd, netdev_add tap and hubport.", buckets)
        metric(
            "macvtapd_config_reloads_total", "counter", "Configuration loads by result.",
            [
                ("{result=\"success\"}", String(state.reloadSuccesses)),
                ("{result=\"failure\"}", String(state.reloadFailures)),
            ]
        )
        metric(
            "macvtapd_last_resync_timestamp_seconds", "gauge", "When the last full resync finished.",
            [("", String(state.lastResync ?? 0))])
        metric(
            "macvtapd_last_resync_duration_seconds", "gauge",
            "How long the last full resync took: link dump to every VM reconciled.",
            [("", String(state.lastResyncDuration ?? 0))])
        metric(
            "macvtapd_handover_duration_seconds", "summary",
            "Live-migration handovers: RESUME received to the VM's macvtap up.",
            [("_sum", String(state.handoverSum)), ("_count", String(state.handovers))])
        return lines.joined(separator: "\n") + "\n"
    }
}
