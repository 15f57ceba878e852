import MacvtapdCore

/// One VM as the controller knows it, the way systemd-networkd keeps one state machine per link:
/// its QMP session, what its monitor last reported, and why it cannot be asked. QMP events and
/// connection results go in; what the planner should see for the VM comes out.
struct VMSession {
    let qmp: String
    let task: Task<Void, Never>
    private(set) var connection: (any VMConnection)?
    /// Why there is no connection; nil while the first attempt is under way.
    private(set) var connectError: VMConnectError?
    /// What the monitor last reported, kept current with the backends and run state our own
    /// actions and QMP events imply, like an informer's cache: a link event re-plans the VM
    /// without asking QEMU again. Anything the session cannot follow drops it.
    private(set) var cache: ObservedVM?
    /// When the monitor was last asked for the cached observation (nil when nothing is cached).
    var observedAt: ContinuousClock.Instant? { cache == nil ? nil : askedAt }
    private var askedAt: ContinuousClock.Instant?
    var hasObservation: Bool { cache != nil }
    /// When the last RESUME arrived, until the reconcile that follows it: the handover clock.
    private(set) var resumedAt: ContinuousClock.Instant?
    /// Counts what made the cache stale (events, reconnects, failures). An observation asked at
    /// one count and answered at another may predate what happened meanwhile: a NIC_RX_FILTER_CHANGED
    /// (QEMU sends no other until asked again) or a RESUME; it must not become the cache.
    private(set) var generation = 0
    /// The guest carrier this session's set_link commands set, by NIC, until anything happens that
    /// may have changed it since (see `ObservedVM.guestLinkHeld`): a reconnect, a QMP event (a
    /// migration's RESUME loads the NIC's link from the source), a failed step.
    private(set) var linkHeld: [String: Bool] = [:]

    init(qmp: String, task: Task<Void, Never>) {
        self.qmp = qmp
        self.task = task
    }

    /// The first connect is under way: neither a connection nor a reason why there is none.
    var isConnecting: Bool { connection == nil && connectError == nil }

    /// Where the next reconcile gets the VM from.
    enum Source {
        case cached(ObservedVM, any VMConnection)
        case live(any VMConnection)
        case unreachable(ObservedVM)
    }

    func source(vm: String) -> Source {
        if let connection {
            if let cache { return .cached(cache, connection) }
            return .live(connection)
        }
        switch connectError {
        case .absent(let why): return .unreachable(.absent(vm, why))
        case .unresponsive(let why): return .unreachable(ObservedVM(name: vm, reachability: .unresponsive(why)))
        case nil:
            return .unreachable(ObservedVM(name: vm, reachability: .unresponsive("QMP session not established yet")))
        }
    }

    mutating func connected(_ connection: any VMConnection) {
        self.connection = connection
        connectError = nil
        invalidate()
    }

    /// Returns whether the reason changed (worth a log line and a reconcile).
    mutating func connectFailed(_ error: VMConnectError) -> Bool {
        defer { connectError = error }
        return connectError != error
    }

    /// The session ended (QEMU quit, or we closed it). Until the reconnect that follows at once
    /// says otherwise, the VM is in doubt, not gone: nothing is torn down on doubt.
    mutating func closed(_ ended: any VMConnection, why: VMConnectError) {
        invalidate()
        guard connection === ended else { return }
        connection = nil
        connectError = why
    }

    /// Drops the connection after a failed command; returns it for closing.
    mutating func drop(because error: any Error) -> (any VMConnection)? {
        invalidate()
        defer { connection = nil }
        if connection != nil { connectError = .unresponsive("\(error)") }
        return connection
    }

    /// A QMP event. RESUME is the handover of a live migration: the run state it implies goes into
    /// the cache, so the macvtap comes up without a round trip to QEMU first. Anything else (STOP
    /// may mean paused or finish-migrate; a NIC's filter or a device changed) is observed afresh.
    mutating func handle(event: String, at instant: ContinuousClock.Instant) {
        generation += 1
        linkHeld = [:]
        if event == "RESUME", cache != nil {
            cache?.runState = .running
            resumedAt = instant
        } else {
            cache = nil
            if event == "RESUME" { resumedAt = instant }
        }
    }

    /// Caches what the monitor answered to a question asked at `generation`, unless something
    /// made the cache stale since: then the next reconcile asks again.
    mutating func observed(_ vm: ObservedVM, askedAtGeneration asked: Int) {
        guard asked == generation else { return }
        cache = vm
        askedAt = .now
    }

    mutating func takeResumedAt() -> ContinuousClock.Instant? {
        defer { resumedAt = nil }
        return resumedAt
    }

    /// Applies what the executor did over `connection` to the cached observation, or drops it when
    /// a step failed (what QEMU holds is then unknown).
    mutating func follow(_ outcome: BindingOutcome, on connection: (any VMConnection)?) {
        guard outcome.succeeded, var cached = cache else {
            invalidate()
            return
        }
        if let up = outcome.guestLinkSet, let connection, connection === self.connection {
            linkHeld[outcome.key.nic] = up
        }
        let detached = Set(outcome.detachedBackends)
        cached.backends.removeAll { detached.contains($0.ids) }
        cached.backends += outcome.attachedBackends
        cache = cached
    }

    mutating func forget() { invalidate() }

    private mutating func invalidate() {
        cache = nil
        linkHeld = [:]
        generation += 1
    }
}
