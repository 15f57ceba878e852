import Logging
import MacvtapdCore

/// The daemon's control loop, in the shape of a Kubernetes controller: triggers (link events, QMP
/// events, config changes, a periodic resync) only mark VMs dirty in the work queue; a worker
/// reconciles each dirty VM's bindings from the link cache and the VM's session, one reconcile per
/// VM at a time and VMs concurrently, and retries failed bindings with per-binding backoff.
/// Nothing here tears down because a config was invalid or a VM did not answer.
///
/// The parts, each in its own file: `LinkCache` (the informer's cache of links), `VMSession` (one
/// VM's QMP session, cached observation and run state), `WorkQueue` (dirty set, in-flight set,
/// backoff) and `StatusWriter` (status document and metrics).
public actor Controller {
    public struct Options: Sendable {
        /// Full resync: a fresh link dump and every VM reconciled, repairing whatever an event missed.
        public var resyncInterval: Duration
        /// False reproduces a polling-only controller (the baseline benchmarks compare against).
        public var useLinkEvents: Bool
        /// Retry delay after a binding's first failure; doubles per failure up to `backoffCap`.
        public var backoffBase: Duration
        public var backoffCap: Duration
        /// Reconnect delay to a VM's QMP socket; doubles per failed attempt up to `reconnectCap`. The cap
        /// is short because a failed attempt on a missing socket costs one syscall, and it bounds how
        /// long a restarted VM waits for its backends.
        public var reconnectBase: Duration
        public var reconnectCap: Duration
        /// Where to write the Prometheus textfile; nil writes none.
        public var metricsPath: String?

        public init(
            resyncInterval: Duration = .seconds(30), useLinkEvents: Bool = true,
            backoffBase: Duration = .milliseconds(500), backoffCap: Duration = .seconds(30),
            reconnectBase: Duration = .milliseconds(100), reconnectCap: Duration = .seconds(1),
            metricsPath: String? = nil
        ) {
            self.metricsPath = metricsPath
            self.resyncInterval = resyncInterval
            self.useLinkEvents = useLinkEvents
            self.backoffBase = backoffBase
            self.backoffCap = backoffCap
            self.reconnectBase = reconnectBase
            self.reconnectCap = reconnectCap
        }
    }

    let host: any HostDriver
    let connector: any VMConnector
    let executor: Executor
    let logger: Logger
    let options: Options
    public let metrics = Metrics()

    var desired = DesiredState()
    /// `desired.bindings`, kept because every link event scans it.
    private var bindings: [NICBinding] = []
    /// False until a valid configuration arrives: without one, macvtapd does not know what is
    /// wanted, so it changes nothing (an empty desired state would tear everything down).
    var hasDesired = false
    var config: StatusDocument.ConfigStatus?
    var links = LinkCache()
    var sessions: [String: VMSession] = [:]
    var statuses: [BindingKey: BindingStatus] = [:]
    var queue: WorkQueue
    private var writer: StatusWriter
    var stopping = false
    /// When the resync in progress started; cleared once every VM it marked was reconciled.
    var resyncStarted: ContinuousClock.Instant?
    /// Bumped by every new desired state: a reconcile that started at epoch E planned against it.
    var epoch = 0
    /// The epoch of the last reconcile each VM finished, for `apply` through the daemon.
    var reconciledEpoch: [String: Int] = [:]
    /// Outcomes gathered for `apply` callers waiting on the control socket, by watch id.
    var watches: [Int: ApplyWatch] = [:]
    var nextWatch = 0
    /// The first link dump is in: until then the link cache knows nothing, and a plan would too.
    var started = false
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    public init(
        host: any HostDriver, connector: any VMConnector, store: StatusStore?, logger: Logger,
        options: Options = Options()
    ) {
        self.host = host
        self.connector = connector
        self.executor = Executor(host: host, logger: logger)
        self.logger = logger
        self.options = options
        queue = WorkQueue(backoffBase: options.backoffBase, backoffCap: options.backoffCap)
        writer = StatusWriter(store: store, metricsPath: options.metricsPath, logger: logger)
        (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    // MARK: - Inputs

    /// Replaces the desired state (a valid config was loaded) and reconciles every VM it names,
    /// and every VM it no longer names.
    public func setDesired(_ desired: DesiredState, config: StatusDocument.ConfigStatus?) {
        let previous = self.desired
        let hadDesired = hasDesired
        epoch += 1
        self.desired = desired
        bindings = desired.bindings
        hasDesired = true
        // What is observed depends on the config only through the NICs whose guest-set MAC is read:
        // a VM whose set is unchanged keeps its cached observation, so a reload (an apply of one
        // changed binding among 1,000) re-plans the others without a QMP round trip each.
        for vm in sessions.keys
        where !hadDesired || previous.vms[vm]?.guestMACNICs != desired.vms[vm]?.guestMACNICs {
            sessions[vm]?.forget()
        }
        let before = Set(previous.vms.keys)
        self.config = config
        metrics.configReloaded(success: true)
        updateSessions()
        markDirty(before.union(desired.vms.keys))
        writer.dirty = true
    }

    /// A config load failed: keep the last good desired state, and say so in status and metrics.
    public func configRejected(path: String, errors: [String]) {
        config = StatusDocument.ConfigStatus(path: path, valid: false, errors: errors)
        metrics.configReloaded(success: false)
        writer.dirty = true
        writeStatus()
    }

    public func setStatusObserver(_ observer: @escaping @Sendable ([BindingStatus]) -> Void) {
        writer.onChange = observer
    }

    /// Adopts what a previous run recorded: guest carrier records and the QMP sockets of VMs whose
    /// bindings were removed while the daemon was down. A VM that turns out to hold nothing of ours
    /// is forgotten after its first reconcile.
    public func restore(_ document: StatusDocument?) {
        for binding in document?.bindings ?? [] { statuses[binding.key] = binding }
    }

    /// Every VM reconciled again from a fresh link dump.
    public func resync() async {
        let started = ContinuousClock.now
        if await refreshLinks() {
            for vm in sessions.keys { sessions[vm]?.forget() }
            if hasDesired { resyncStarted = resyncStarted ?? started }
        }
        markDirty(allVMs())
    }

    public func stop() {
        stopping = true
        wake.yield()
    }

    public func currentStatus() -> [BindingStatus] { statuses.values.sorted { $0.key < $1.key } }

    // MARK: - Loop

    /// Runs until `stop()`; the reconcile in flight finishes, backends stay in place.
    public func run() async {
        await resync()
        updateSessions()
        started = true
        // A discarding group: a plain task group keeps every finished child until `next()` takes
        // it, and this one never calls `next()`, so each reconcile the daemon ever ran stayed
        // allocated (about 3 KiB each; 0.4 MiB of RSS per reload of 40 VMs, without bound).
        await withDiscardingTaskGroup { group in
            if options.useLinkEvents {
                group.addTask { await self.followLinkEvents() }
            }
            group.addTask { await self.resyncPeriodically() }
            for await _ in wakeups {
                if stopping { break }
                guard hasDesired else { continue }
                for vm in queue.takeReady() {
                    group.addTask { await self.reconcile(vm: vm) }
                }
            }
            // Stop the trigger tasks; reconciles in flight run to completion.
            group.cancelAll()
        }
        await closeSessions()
        writeStatus()
        // The last word: a coalesced write still pending must not land after the daemon stopped.
        writer.finished = true
        await writer.files.flush()
    }

    func markDirty(_ vms: some Sequence<String>) {
        if queue.mark(vms) { wake.yield() }
    }

    private func allVMs() -> Set<String> {
        Set(desired.vms.keys).union(statuses.keys.map(\.vm)).union(links.owningVMs)
    }

    private func followLinkEvents() async {
        while !Task.isCancelled {
            let changes: AsyncStream<LinkChange>
            do {
                changes = try host.linkChanges()
            } catch {
                logger.error("cannot follow link events: \(error); relying on periodic resync")
                try? await Task.sleep(for: options.reconnectCap)
                continue
            }
            for await change in changes {
                if Task.isCancelled { return }
                await apply(change)
            }
        }
    }

    private func apply(_ change: LinkChange) async {
        if change == .resyncNeeded {
            logger.warning("link notifications were lost (ENOBUFS); resyncing")
            await resync()
            return
        }
        guard let (before, changed) = links.apply(change), changed else { return }
        switch change {
        case .updated(let link), .removed(let link):
            markDirty(links.vmsAffected(by: link, before: before, bindings: bindings))
        case .resyncNeeded:
            break
        }
    }

    private func resyncPeriodically() async {
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: options.resyncInterval)
            } catch {
                return
            }
            await resync()
        }
    }

    // MARK: - Reconcile

    private func reconcile(vm: String) async {
        defer {
            if queue.done(vm) { wake.yield() }
            writeStatusIfChanged()
            finishResyncIfDrained()
        }
        // A session whose first connect is still under way knows nothing yet: planning now would
        // flip a restarted daemon's adopted bindings to "unreachable" for an instant. Its outcome
        // marks the VM dirty again.
        if let session = sessions[vm], session.isConnecting { return }
        let epoch = self.epoch
        let clock = ContinuousClock()
        let started = clock.now
        let resumedAt = sessions[vm]?.takeResumedAt()

        var observedVM = await observe(vm: vm)
        for (key, status) in statuses where key.vm == vm {
            if let up = status.guestLink { observedVM.guestLink[key.nic] = up }
        }

        let observed = ObservedState(host: links.host(), vms: [vm: observedVM])
        let plan = Planner.plan(desired: desired, observed: observed, vms: [vm])
        let planned = clock.now
        var due: [BindingPlan] = []
        var rescheduleAt: ContinuousClock.Instant?
        for binding in plan.bindings where binding.key.vm == vm {
            if let notBefore = queue.notBefore(binding.key), notBefore > planned, !binding.actions.isEmpty {
                rescheduleAt = min(rescheduleAt ?? notBefore, notBefore)
                continue
            }
            due.append(binding)
        }

        let connection = sessions[vm]?.connection
        var outcomes: [BindingOutcome] = []
        for binding in due {
            if binding.actions.isEmpty {
                outcomes.append(BindingOutcome(plan: binding))
                continue
            }
            let outcome = await executor.execute(binding, host: observed.host, connection: connection)
            links.follow(outcome)
            sessions[vm]?.follow(outcome)
            // The share ends when the macvtap is up: the carrier and announce that follow are QMP
            // round trips to a QEMU whose freshly resumed guest competes for its main loop.
            if let resumedAt, let upAt = outcome.macvtapUpAt {
                let share = upAt - resumedAt
                metrics.handedOver(duration: share)
                logger.info(
                    "handover: macvtap up \(share.milliseconds) ms after RESUME",
                    metadata: ["binding": "\(binding.key)", "handover_ms": "\(share.milliseconds)"])
            }
            outcomes.append(outcome)
        }
        let executed = clock.now
        record(outcomes)
        reconciled(vm: vm, epoch: epoch, outcomes: outcomes)
        forgetIfNothingLeft(vm: vm, planned: Set(plan.bindings.map(\.key)))
        let actions = outcomes.reduce(0) { $0 + $1.plan.actions.count }
        logger.debug(
            "reconciled: observe+plan \((planned - started).milliseconds) ms, execute \((executed - planned).milliseconds) ms, \(actions) action(s)",
            metadata: ["vm": "\(vm)"])
        if outcomes.contains(where: { !$0.succeeded }) {
            // Like an informer's relist: a failure may come from a stale cache, so the retry plans
            // from a fresh dump.
            await refreshLinks()
        }
        if let rescheduleAt { scheduleRetry(vm: vm, at: rescheduleAt) }
        metrics.reconciled(duration: clock.now - started)
    }

    /// The VM as its session knows it: cached, asked now, or why it cannot be asked.
    private func observe(vm: String) async -> ObservedVM {
        guard let session = sessions[vm] else {
            return .absent(vm, "no QMP socket is known for this VM")
        }
        switch session.source(vm: vm) {
        case .cached(let cached, _):
            return cached
        case .unreachable(let observed):
            return observed
        case .live(let connection):
            do {
                let observed = try await connection.observe(
                    vm: vm, guestMACOf: desired.vms[vm]?.guestMACNICs ?? [])
                if sessions[vm]?.connection === connection { sessions[vm]?.observed(observed) }
                return observed
            } catch {
                await dropConnection(vm: vm, because: error)
                return ObservedVM(name: vm, reachability: .unresponsive("\(error)"))
            }
        }
    }

    /// The status document keeps only bindings that are desired or still hold something of ours (an
    /// orphan the plan tears down): a binding an old config named, with nothing left, is forgotten,
    /// whether its whole VM went from the config or only the NIC did; a VM with no binding left
    /// is forgotten with its session.
    private func forgetIfNothingLeft(vm: String, planned: Set<BindingKey>) {
        let leftovers = statuses.keys.filter { $0.vm == vm && !planned.contains($0) && desired.binding($0) == nil }
        for key in leftovers { statuses[key] = nil }
        if !leftovers.isEmpty { writer.dirty = true }
        if !statuses.keys.contains(where: { $0.vm == vm }) { updateSessions() }
    }

    /// Replaces the link cache with a fresh dump; false when the dump failed (the cache stays).
    @discardableResult
    private func refreshLinks() async -> Bool {
        do {
            links.replace(with: try await host.links())
            return true
        } catch {
            logger.error("link dump failed: \(error)")
            return false
        }
    }

    /// A resync is done when no VM is dirty or being reconciled any more.
    private func finishResyncIfDrained() {
        guard let started = resyncStarted, queue.isDrained else { return }
        resyncStarted = nil
        let duration = ContinuousClock.now - started
        metrics.resynced(at: Reconciler.now(), duration: duration)
        logger.debug("resync done in \(duration.milliseconds) ms")
        writer.writeMetrics(metrics)
    }

    private func record(_ outcomes: [BindingOutcome]) {
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
            let next = StatusBuilder.status(for: outcome, before: statuses[key], desired: desired, now: now)
            if next != statuses[key] {
                if next?.phase != statuses[key]?.phase {
                    logger.info(
                        "\(statuses[key]?.phase.rawValue ?? "new") -> \(next?.phase.rawValue ?? "gone"): \(outcome.plan.reason.message)",
                        metadata: ["binding": "\(key)"])
                }
                statuses[key] = next
                writer.dirty = true
            }
        }
    }

    private func scheduleRetry(vm: String, at instant: ContinuousClock.Instant) {
        Task {
            try? await Task.sleep(until: instant, clock: .continuous)
            self.markDirty([vm])
        }
    }

    // MARK: - Status

    /// Coalesces status writes: a flap touching a hundred bindings on forty VMs changes status after
    /// every VM's reconcile, and one write per 5 ms says the same as a burst of them.
    private func writeStatusIfChanged() {
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

    private func writeStatus() {
        writer.write(currentStatus(), config: config, metrics: metrics)
    }
}
