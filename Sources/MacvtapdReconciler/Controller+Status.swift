import MacvtapdCore

/// The controller's status: outcomes turned into binding statuses, and the coalesced writes of
/// the status document and metrics (`StatusWriter`).
extension Controller {
    /// Every binding's status, by key. The keys' order is kept between calls while the set of keys
    /// stays the same (the common case: a status write after each reconcile of a flap or converge
    /// changed values, not keys), so a write costs lookups, not a sort of a thousand statuses.
    public func currentStatus() -> [BindingStatus] {
        if sortedStatusKeys.count != statuses.count || !sortedStatusKeys.allSatisfy({ statuses[$0] != nil }) {
            sortedStatusKeys = statuses.keys.sorted()
        }
        return sortedStatusKeys.map { statuses[$0]! }
    }

    func record(_ outcomes: [BindingOutcome]) {
        let now = Reconciler.now()
        for outcome in outcomes {
            let key = outcome.key
            if let duration = outcome.attachDuration { metrics.attached(duration: duration) }
            if let failure = outcome.failure, failure.isStale {
                // The world moved on since the observation: observe again now, no backoff, no
                // failure recorded (the status keeps what it said).
                logger.debug("re-planning: \(failure)", metadata: ["binding": "\(key)"])
                markDirty([key.vm])
                continue
            }
            if let failure = outcome.failure {
                metrics.failed()
                let (attempt, delay) = queue.failed(key, now: ContinuousClock.now)
                logger.warning(
                    "reconcile failed (attempt \(attempt), retry in \(delay)): \(failure)",
                    metadata: ["binding": "\(key)"])
                scheduleRetry(vm: key.vm, at: ContinuousClock.now + delay)
            } else if !outcome.plan.actions.isEmpty {
                queue.succeeded(key)
            }
            // A new phase began when its steps were done (`settledAt`), not when the reconcile
            // got round to recording it after its other bindings and announces.
            let next = StatusBuilder.status(
                for: outcome, before: statuses[key], desired: desired, now: min(outcome.settledAt ?? now, now))
            if next != statuses[key] {
                if next?.phase != statuses[key]?.phase {
                    logger.info(
                        "\(statuses[key]?.phase.rawValue ?? "new") -> \(next?.phase.rawValue ?? "gone"): \(outcome.plan.reason.message)",
                        metadata: ["binding": "\(key)"])
                }
                statuses[key] = next
                writer.statusChanged(key)
                writer.dirty = true
            }
        }
    }

    /// Coalesces status writes: a flap touching a hundred bindings on forty VMs changes status after
    /// every VM's reconcile, and one write per 5 ms says the same as a burst of them.
    func writeStatusIfChanged() {
        guard writer.dirty, !writer.scheduled else { return }
        writer.scheduled = true
        Task {
            try? await Task.sleep(for: .milliseconds(5))
            self.flushStatus()
        }
    }

    private func flushStatus() {
        writer.scheduled = false
        if writer.dirty && !writer.finished { writeStatus() }
    }

    func writeStatus() {
        writer.write(currentStatus(), config: config, metrics: metrics)
    }
}
