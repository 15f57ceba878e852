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
        /// Every VM's monitor is asked again at least once every this many resyncs (a resync asks
        /// the share of VMs with the oldest observations); between those, a VM whose session saw no
        /// event is planned from its cached observation. 1 asks every VM at every resync.
        public var observeSpread: Int
        /// VMs reconciled at the same time at most.
        public var maxConcurrentReconciles: Int

        public init(
            resyncInterval: Duration = .seconds(30), useLinkEvents: Bool = true,
            backoffBase: Duration = .milliseconds(500), backoffCap: Duration = .seconds(30),
            reconnectBase: Duration = .milliseconds(100), reconnectCap: Duration = .seconds(1),
            metricsPath: String? = nil, observeSpread: Int = 4, maxConcurrentReconciles: Int = 64
        ) {
            self.metricsPath = metricsPath
            self.observeSpread = max(1, observeSpread)
            self.maxConcurrentReconciles = max(1, maxConcurrentReconciles)
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
    /// `desired.bindings` by host matcher: every link event looks up the VMs it may concern.
    var bindings = BindingIndex()
    /// False until a valid configuration arrives: without one, macvtapd does not know what is
    /// wanted, so it changes nothing (an empty desired state would tear everything down).
    var hasDesired = false
    var config: StatusDocument.ConfigStatus?
    var links = LinkCache()
    var sessions: [String: VMSession] = [:]
    var statuses: [BindingKey: BindingStatus] = [:]
    /// `statuses.keys`, sorted, as `currentStatus` last saw them.
    var sortedStatusKeys: [BindingKey] = []
    var queue: WorkQueue
    var writer: StatusWriter
    /// Link events received and not yet applied to the cache (see Controller+Links).
    let linkInbox = LinkInbox()
    /// VMs whose last reconcile found nothing to do and deferred nothing: a resync that finds
    /// their links and observation unchanged leaves them alone.
    var quiet: Set<String> = []
    /// Periodic resyncs so far: every `observeSpread`-th dumps the links (see Controller+Resync).
    var resyncTurn = 0
    /// A dump after a failure is under way: failures meanwhile share it.
    private var relisting = false
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
    /// `settle` calls waiting for their watch, by watch id.
    var settleWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
    var drainObserver: (@Sendable () -> Void)?
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

    /// Replaces the desired state (a valid config was loaded) and reconciles the VMs it concerns
    /// (`putInForce`).
    public func setDesired(_ desired: DesiredState, config: StatusDocument.ConfigStatus?) {
        markDirty(putInForce(desired, config: config))
    }

    /// Replaces the desired state; returns the VMs to reconcile against it: every VM when it is the
    /// first, else those whose bindings changed (added, removed, or any setting of theirs but where
    /// it was declared) and those whose last reconcile left something to do or that are queued or
    /// being reconciled. A VM whose bindings are as they were and whose last reconcile found
    /// nothing to do would be planned to the same nothing: reloading a 1,000-binding file to move
    /// one binding re-plans one VM, not forty. The periodic resync still covers every VM.
    func putInForce(_ desired: DesiredState, config: StatusDocument.ConfigStatus?) -> Set<String> {
        let previous = self.desired
        let hadDesired = hasDesired
        epoch += 1
        self.desired = desired
        // In any order: `desired.bindings` would sort a thousand bindings for an index of sets.
        bindings = BindingIndex(desired.vms.values.flatMap { $0.nics.values })
        hasDesired = true
        // What is observed depends on the config only through the NICs whose guest-set MAC is read:
        // a VM whose set is unchanged keeps its cached observation, so a VM re-planned here without
        // a change of that set (one that had work left) needs no QMP round trip.
        for vm in sessions.keys
        where !hadDesired || previous.vms[vm]?.guestMACNICs != desired.vms[vm]?.guestMACNICs {
            sessions[vm]?.forget()
        }
        let concerned = Set(previous.vms.keys).union(desired.vms.keys)
        var vms = Set<String>()
        for vm in concerned {
            let same = previous.vms[vm].map { before in desired.vms[vm].map { before.plansLike($0) } ?? false } ?? false
            if !hadDesired || !same || !quiet.contains(vm) || !queue.isIdle(vm) { vms.insert(vm) }
        }
        quiet.subtract(vms)
        self.config = config
        metrics.configReloaded(success: true)
        updateSessions()
        // The config's status and the reload's count are written even when no VM is reconciled
        // (otherwise the reconciles write them, after their first outcomes: a restarted daemon's
        // restored statuses are not rewritten before it has observed anything).
        writer.dirty = true
        if vms.isEmpty { writeStatusIfChanged() }
        return vms
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

    /// Called (on the control loop: it must return at once) whenever the last reconcile in flight
    /// finished and nothing is queued: a burst of work is over.
    public func setDrainObserver(_ observer: @escaping @Sendable () -> Void) {
        drainObserver = observer
    }

    /// Adopts what a previous run recorded: guest carrier records and the QMP sockets of VMs whose
    /// bindings were removed while the daemon was down. A VM that turns out to hold nothing of ours
    /// is forgotten after its first reconcile.
    public func restore(_ document: StatusDocument?) {
        for binding in document?.bindings ?? [] {
            statuses[binding.key] = binding
            writer.statusChanged(binding.key)
        }
    }

    public func stop() {
        stopping = true
        settleProgress()
        wake.yield()
    }

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
                for vm in queue.takeReady(limit: options.maxConcurrentReconciles) {
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

    func markDirty(_ vms: some Sequence<String>, byLinks: Bool = false) {
        if queue.mark(vms, byLinks: byLinks) { wake.yield() }
    }

    func allVMs() -> Set<String> {
        Set(desired.vms.keys).union(statuses.keys.map(\.vm)).union(links.owningVMs)
    }

    // MARK: - Reconcile

    private func reconcile(vm: String) async {
        defer {
            if queue.done(vm) { wake.yield() }
            if !settleWaiters.isEmpty { settleProgress() }
            writeStatusIfChanged()
            finishResyncIfDrained()
            if queue.isDrained { drainObserver?() }
        }
        // A session whose first connect is still under way knows nothing yet: planning now would
        // flip a restarted daemon's adopted bindings to "unreachable" for an instant. Its outcome
        // marks the VM dirty again.
        if let session = sessions[vm], session.isConnecting {
            quiet.remove(vm)
            return
        }
        let epoch = self.epoch
        let clock = ContinuousClock()
        let started = clock.now
        let resumedAt = sessions[vm]?.takeResumedAt()

        var observedVM = await observe(vm: vm)
        for (key, status) in statuses where key.vm == vm {
            if let up = status.guestLink { observedVM.guestLink[key.nic] = up }
        }

        // Link events that arrived while the VM was observed are applied now: this plan sees them,
        // so the marks they made for this VM need no second plan.
        drainLinkChanges()
        queue.linksSeen(by: vm)
        observedVM.guestLinkHeld = sessions[vm]?.linkHeld ?? [:]
        let (plan, executionHost) = plan(vm: vm, observed: observedVM)
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
        // Bindings that end with an announce (those attached or whose carrier returned) announce
        // together once the pass is through: one announce-self for the VM instead of one per NIC
        // (QEMU reads its monitor a byte at a time; 143 of the 530 bytes a binding's attach sent),
        // and after the steps that make a binding's new phase true, which its record does not wait
        // for (advisory: it changes nothing the status says).
        var announcing: [BindingKey] = []
        for binding in due {
            if binding.actions.isEmpty {
                outcomes.append(BindingOutcome(plan: binding))
                continue
            }
            var steps = binding
            let deferAnnounce = Self.endsWithAnnounce(binding)
            if deferAnnounce { steps.actions.removeLast() }
            var outcome = await executor.execute(steps, host: executionHost, connection: connection)
            outcome.plan = binding
            if deferAnnounce, outcome.succeeded { announcing.append(binding.key) }
            links.follow(outcome)
            sessions[vm]?.follow(outcome, on: connection)
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
        if !announcing.isEmpty, let connection { await executor.announce(announcing, connection: connection) }
        let executed = clock.now
        if due.count == plan.bindings.count, rescheduleAt == nil, outcomes.allSatisfy({ $0.plan.actions.isEmpty }) {
            quiet.insert(vm)
        } else {
            quiet.remove(vm)
        }
        releaseTapsNotHeld(vm: vm, observed: observedVM, outcomes: outcomes)
        record(outcomes)
        reconciled(vm: vm, epoch: epoch, outcomes: outcomes)
        forgetIfNothingLeft(vm: vm, planned: Set(plan.bindings.map(\.key)))
        let actions = outcomes.reduce(0) { $0 + $1.plan.actions.count }
        logger.debug(
            "reconciled: observe+plan \((planned - started).milliseconds) ms, execute \((executed - planned).milliseconds) ms, \(actions) action(s)",
            metadata: ["vm": "\(vm)"])
        // Like an informer's relist: a failure may come from a stale cache, so the retry plans from
        // a fresh dump. A stale step (a link vanished or appeared since the plan) needs none when
        // link events run: the event that says so is on its way or already in, and a flap makes
        // dozens of those at once, each dump costing more than the whole reconcile.
        let relist = outcomes.contains { $0.failure.map { !$0.isStale || !options.useLinkEvents } ?? false }
        if relist, !relisting {
            relisting = true
            await refreshLinks()
            relisting = false
        }
        if let rescheduleAt { scheduleRetry(vm: vm, at: rescheduleAt) }
        metrics.reconciled(duration: clock.now - started)
    }

    /// The VM's plan from the link cache as it is now, and the links the executor will look up
    /// (the macvtaps it attaches). Not the whole snapshot: held across the execution's awaits, it
    /// would make every change of the cache meanwhile copy all its links and indexes.
    private func plan(vm: String, observed: ObservedVM) -> (Plan, ObservedHost) {
        let host = links.host()
        let plan = Planner.plan(desired: desired, observed: ObservedState(host: host, vms: [vm: observed]), vms: [vm])
        var attached: [ObservedLink] = []
        for binding in plan.bindings {
            for case .attachBackend(_, _, let macvtap, _) in binding.actions {
                if let link = host.link(named: macvtap) { attached.append(link) }
            }
        }
        return (plan, ObservedHost(links: attached))
    }

    private static func endsWithAnnounce(_ plan: BindingPlan) -> Bool {
        if case .announce = plan.actions.last { return true }
        return false
    }

    func scheduleRetry(vm: String, at instant: ContinuousClock.Instant) {
        Task {
            // A relative sleep, like every other wait here: with `sleep(until:clock: .continuous)`
            // a retry due in 20 ms fired only seconds later while the test suite loaded the machine
            // (ControllerTests.failuresBackOffAndRecover saw one attach in 5 s, the second right
            // after its polling stopped); the mechanism in the runtime's timers is not understood.
            try? await Task.sleep(for: instant - ContinuousClock.now)
            self.markDirty([vm])
        }
    }
}
