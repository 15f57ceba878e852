import Logging
import MacvtapdCore

/// Writes the status document and the metrics textfile for the controller. Writes are coalesced
/// (the controller flushes at most once per short window) and done off the control loop (a slow
/// disk must not stall reconciling); a write that fails is logged, never retried in a loop: these
/// files describe the daemon, they do not steer it.
struct StatusWriter {
    let store: StatusStore?
    let metricsPath: String?
    let logger: Logger
    let files = FileReplacer()
    private var encoder = IncrementalStatusEncoder()
    /// Status changed since the last write.
    var dirty = false
    /// A coalesced write is pending.
    var scheduled = false
    /// The daemon stopped: a pending write must not land after its last word.
    var finished = false
    /// Called with every written status (e.g. to refresh sd_notify STATUS=).
    var onChange: (@Sendable ([BindingStatus]) -> Void)?

    init(store: StatusStore?, metricsPath: String?, logger: Logger) {
        self.store = store
        self.metricsPath = metricsPath
        self.logger = logger
    }

    /// A binding's status changed or went: the next write encodes it afresh.
    mutating func statusChanged(_ key: BindingKey) { encoder.invalidate(key) }

    mutating func write(_ bindings: [BindingStatus], config: StatusDocument.ConfigStatus?, metrics: Metrics) {
        dirty = false
        metrics.phases(bindings.map(\.phase))
        onChange?(bindings)
        writeMetrics(metrics)
        guard let store else { return }
        do {
            let bytes = try encoder.encode(bindings: bindings, config: config, updated: Reconciler.now())
            files.replace(store.path, with: bytes, logger: logger, what: "status")
        } catch {
            logger.error("cannot write status: \(error)")
        }
    }

    func writeMetrics(_ metrics: Metrics) {
        guard let metricsPath else { return }
        files.replace(metricsPath, with: Array(metrics.render().utf8), logger: logger, what: "metrics")
    }
}
