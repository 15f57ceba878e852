import MacvtapdCore

/// The controller's work queue, in the shape of client-go's: a key is a VM; marking a VM dirty
/// twice before it is reconciled reconciles it once; a VM is never reconciled twice at the same
/// time (a mark that arrives during its reconcile runs it again afterwards); failed bindings wait
/// out a per-binding exponential backoff.
struct WorkQueue {
    struct Retry {
        var failures: Int
        var notBefore: ContinuousClock.Instant
    }

    let backoffBase: Duration
    let backoffCap: Duration
    private var dirty: Set<String> = []
    /// Dirty VMs marked by link events alone: a reconcile that plans from the link cache after
    /// those events were applied has seen everything they said.
    private var linkOnly: Set<String> = []
    private var inFlight: Set<String> = []
    private var retries: [BindingKey: Retry] = [:]

    init(backoffBase: Duration, backoffCap: Duration) {
        self.backoffBase = backoffBase
        self.backoffCap = backoffCap
    }

    /// True when something was marked (the loop should wake). `byLinks`: the mark comes from link
    /// events already applied to the link cache (see `linksSeen`).
    @discardableResult
    mutating func mark(_ vms: some Sequence<String>, byLinks: Bool = false) -> Bool {
        var any = false
        for vm in vms {
            if !byLinks {
                linkOnly.remove(vm)
            } else if !dirty.contains(vm) {
                linkOnly.insert(vm)
            }
            dirty.insert(vm)
            any = true
        }
        return any
    }

    /// The VM's reconcile is planning from the link cache as it is now: marks that link events
    /// alone made since it started are satisfied by this plan (a burst of events that arrived
    /// while it observed costs no second plan). Any other mark stands.
    mutating func linksSeen(by vm: String) {
        if linkOnly.remove(vm) != nil { dirty.remove(vm) }
    }

    /// The dirty VMs not being reconciled, now taken as in flight: at most `limit` in flight.
    mutating func takeReady(limit: Int = .max) -> [String] {
        var ready = dirty.subtracting(inFlight).sorted()
        if ready.count > limit - inFlight.count { ready = Array(ready.prefix(max(0, limit - inFlight.count))) }
        dirty.subtract(ready)
        linkOnly.subtract(ready)
        inFlight.formUnion(ready)
        return ready
    }

    /// The VM's reconcile ended; true when a VM waits for a worker (it, or one held back by the
    /// concurrency limit).
    mutating func done(_ vm: String) -> Bool {
        inFlight.remove(vm)
        return !dirty.isEmpty
    }

    var isDrained: Bool { dirty.isEmpty && inFlight.isEmpty }

    /// Neither marked nor being reconciled.
    func isIdle(_ vm: String) -> Bool { !dirty.contains(vm) && !inFlight.contains(vm) }

    /// Marked and waiting for a worker, and being reconciled (for `macvtapd status`).
    var queued: Set<String> { dirty.subtracting(inFlight) }
    var reconciling: Set<String> { inFlight }

    /// Every binding may be tried at once: an operator's `apply` asks for now, not for the backoff.
    mutating func forgetBackoff() {
        for key in retries.keys { retries[key]?.notBefore = .now }
    }

    /// When a failed binding may be tried again; nil when it is not backing off.
    func notBefore(_ key: BindingKey) -> ContinuousClock.Instant? { retries[key]?.notBefore }

    /// Records a failure; returns the attempt number and the delay before the next one.
    mutating func failed(_ key: BindingKey, now: ContinuousClock.Instant) -> (attempt: Int, delay: Duration) {
        let failures = (retries[key]?.failures ?? 0) + 1
        let delay = Self.backoff(failures, base: backoffBase, cap: backoffCap)
        retries[key] = Retry(failures: failures, notBefore: now + delay)
        return (failures, delay)
    }

    mutating func succeeded(_ key: BindingKey) { retries[key] = nil }

    static func backoff(_ failures: Int, base: Duration, cap: Duration) -> Duration {
        let factor = 1 << Swift.min(failures - 1, 20)
        return Swift.min(cap, base * factor)
    }
}
