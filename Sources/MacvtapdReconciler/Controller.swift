import Logging
import MacvtapdCore

/// The daemon's control loop, in the shape of a Kubernetes controller: triggers (link events, QMP
/// events, config changes, a periodic resync) only mark VMs dirty; a worker reconciles each dirty
/// VM's bindings from fresh observations, one reconcile per VM at a time and VMs concurrently, and
/// retries failed bindings with per-binding exponential backoff. Nothing here tears down because a
/// config was invalid or a VM did not answer.
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
    let store: StatusStore?
    let logger: Logger
    let options: Options
    public let metrics = Metrics()
    /// Status and metrics files are written off the loop: a slow disk must not stall reconciling.
    private let files = FileReplacer()

    private var desired = DesiredState()
    /// `desired.bindings`, kept because every link event scans it.
    private var bindings: [NICBinding] = []
    /// False until a valid configuration arrives: without one, macvtapd does not know what is
    /// wanted, so it changes nothing (an empty desired state would tear everything down).
    private var hasDesired = false
    private var config: StatusDocument.ConfigStatus?
    /// The link cache: a full dump, then kept current by link events and by our own changes.
    private var links: [Int32: ObservedLink] = [:] {
        didSet { hostSnapshot = nil }
    }
    /// `links` as the planner takes them, built once per change of the cache, not per VM.
    private var hostSnapshot: ObservedHost?

    private func observedHost() -> ObservedHost {
        if let hostSnapshot { return hostSnapshot }
        let built = ObservedHost(links: Array(links.values))
        hostSnapshot = built
        return built
    }
    /// Ifindexes the kernel announced as deleted since the last dump. The kernel never reuses an
    /// ifindex in a namespace, so a link our executor created and an event already deleted (while
    /// the reconcile that created it was still running) is never put back into the cache.
    private var deletedIfindexes: Set<Int32> = []
    private var sessions: [String: Session] = [:]
    private var statuses: [BindingKey: BindingStatus] = [:]
    private var retries: [BindingKey: Retry] = [:]
    private var dirty: Set<String> = []
    private var reconciling: Set<String> = []
    private var stopping = false
    /// When the resync in progress started; cleared once every VM it marked was reconciled.
    private var resyncStarted: ContinuousClock.Instant?
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation
    private var statusDirty = false
    private var statusEncoder = IncrementalStatusEncoder()
    private var statusWriteScheduled = false
    private var finished = false
    /// Called after every reconcile pass that changed status (e.g. to refresh sd_notify STATUS=).
    private var onStatusChange: (@Sendable ([BindingStatus]) -> Void)?

    struct Retry {
        var failures: Int
        var notBefore: ContinuousClock.Instant
    }

    /// The task that keeps one VM's QMP session alive, and the socket it uses.
    struct Session {
        var qmp: String
        var task: Task<Void, Never>
    }
    private var connections: [String: any VMConnection] = [:]
    /// What each VM's monitor last reported, kept current with the backends our executor attached
    /// and detached, like an informer's cache: a link event re-plans a VM without asking QEMU again.
    /// A QMP event, a session change, a failed step or a resync drops it, and the next reconcile
    /// observes the VM afresh.
    private var vmCache: [String: ObservedVM] = [:]
    private var connectErrors: [String: VMConnectError] = [:]

    public init(
        host: any HostDriver, connector: any VMConnector, store: StatusStore?, logger: Logger,
        options: Options = Options()
    ) {
        self.host = host
        self.connector = connector
        self.executor = Executor(host: host, logger: logger)
        self.store = store
        self.logger = logger
        self.options = options
        (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    // MARK: - Inputs

    /// Replaces the desired state (a valid config was loaded) and reconciles every VM it names,
    /// and every VM it no longer names.
    public func setDesired(_ desired: DesiredState, config: StatusDocument.ConfigStatus?) {
        let before = Set(self.desired.vms.keys)
        self.desired = desired
        bindings = desired.bindings
        hasDesired = true
        // What is observed depends on the config (e.g. which NICs follow the guest's MAC).
        vmCache = [:]
        self.config = config
        metrics.configReloaded(success: true)
        updateSessions()
        markDirty(before.union(desired.vms.keys))
        statusDirty = true
    }

    /// A config load failed: keep the last good desired state, and say so in status and metrics.
    public func configRejected(path: String, errors: [String]) {
        config = StatusDocument.ConfigStatus(path: path, valid: false, errors: errors)
        metrics.configReloaded(success: false)
        statusDirty = true
        writeStatus()
    }

    public func setStatusObserver(_ observer: @escaping @Sendable ([BindingStatus]) -> Void) {
        onStatusChange = observer
    }

    /// Adopts what a previous run recorded: guest carrier records and the QMP sockets of VMs whose
    /// bindings were removed while the daemon was down.
    public func restore(_ document: StatusDocument?) {
        for binding in document?.bindings ?? [] { statuses[binding.key] = binding }
    }

    /// Every VM reconciled again from a fresh link dump.
    public func resync() async {
        let started = ContinuousClock.now
        if await refreshLinks() {
            vmCache = [:]
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
        await withTaskGroup(of: Void.self) { group in
            if options.useLinkEvents {
                group.addTask { await self.followLinkEvents() }
            }
            group.addTask { await self.resyncPeriodically() }
            for await _ in wakeups {
                if stopping { break }
                guard hasDesired else { continue }
                for vm in takeDirty() {
                    group.addTask { await self.reconcile(vm: vm) }
                }
            }
            // Stop the trigger tasks; reconciles in flight run to completion.
            group.cancelAll()
        }
        for session in sessions.values { session.task.cancel() }
        for connection in connections.values { await connection.close() }
        sessions = [:]
        connections = [:]
        writeStatus()
        // The last word: a coalesced write still pending must not land after the daemon stopped.
        finished = true
        await files.flush()
    }

    private func takeDirty() -> [String] {
        let ready = dirty.subtracting(reconciling)
        dirty.subtract(ready)
        reconciling.formUnion(ready)
        return ready.sorted()
    }

    private func markDirty(_ vms: some Sequence<String>) {
        var any = false
        for vm in vms {
            dirty.insert(vm)
            any = true
        }
        if any { wake.yield() }
    }

    private func allVMs() -> Set<String> {
        var vms = Set(desired.vms.keys)
        vms.formUnion(statuses.keys.map(\.vm))
        for link in links.values { if let owner = link.owner { vms.insert(owner.vm) } }
        return vms
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
        switch change {
        case .resyncNeeded:
            logger.warning("link notifications were lost (ENOBUFS); resyncing")
            await resync()
        case .updated(let link):
            guard !deletedIfindexes.contains(link.ifindex) else { return }
            let before = links[link.ifindex]
            links[link.ifindex] = link
            // A change that does not touch what the planner reads (e.g. statistics) marks nothing.
            if before != link { markDirty(vmsAffected(by: link, before: before)) }
        case .removed(let link):
            deletedIfindexes.insert(link.ifindex)
            let before = links.removeValue(forKey: link.ifindex)
            markDirty(vmsAffected(by: link, before: before))
        }
    }

    /// The VMs whose plans may change with this link: bindings that match it (now or
    /// before), bindings whose macvtap sits on it, and the owner of a macvtap of ours.
    private func vmsAffected(by link: ObservedLink, before: ObservedLink?) -> Set<String> {
        var vms = Set<String>()
        let versions = [link] + (before.map { [$0] } ?? [])
        for version in versions {
            if let owner = version.owner { vms.insert(owner.vm) }
        }
        let lowerOf = Set(links.values.filter { $0.lowerIfindex == link.ifindex }.compactMap { $0.owner?.vm })
        vms.formUnion(lowerOf)
        // A link udev is still naming may become any binding's host; one it just finished with may
        // end the wait of bindings that matched nothing.
        if versions.contains(where: { !$0.udevInitialized }) {
            return vms.union(bindings.map(\.key.vm))
        }
        for binding in bindings where !vms.contains(binding.key.vm) {
            if versions.contains(where: binding.host.matches) { vms.insert(binding.key.vm) }
        }
        return vms
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

    // MARK: - QMP sessions

    /// One session per VM that has bindings or leftovers: desired VMs, and VMs the status still
    /// lists (bindings removed but not yet torn down).
    private func updateSessions() {
        var wanted: [String: String] = desired.vms.mapValues(\.qmp)
        for status in statuses.values where wanted[status.vm] == nil {
            if let qmp = status.qmp { wanted[status.vm] = qmp }
        }
        for (vm, session) in sessions where wanted[vm] != session.qmp {
            session.task.cancel()
            sessions[vm] = nil
            if let connection = connections.removeValue(forKey: vm) {
                Task { await connection.close() }
            }
            connectErrors[vm] = nil
        }
        for (vm, qmp) in wanted where sessions[vm] == nil {
            let task = Task { await self.maintainSession(vm: vm, qmp: qmp) }
            sessions[vm] = Session(qmp: qmp, task: task)
        }
    }

    /// Connects, follows the VM's events, and reconnects with backoff when the session ends (VM
    /// shut down, restarted, or not answering).
    private func maintainSession(vm: String, qmp: String) async {
        var failures = 0
        while !Task.isCancelled {
            let connection: any VMConnection
            do {
                connection = try await connector.connect(vm: vm, qmp: qmp)
            } catch {
                if connectErrors[vm] != error {
                    logger.warning("VM \(vm) unreachable: \(error)", metadata: ["vm": "\(vm)"])
                    connectErrors[vm] = error
                    markDirty([vm])
                }
                failures += 1
                try? await Task.sleep(for: backoff(failures, base: options.reconnectBase, cap: options.reconnectCap))
                continue
            }
            if Task.isCancelled {
                await connection.close()
                return
            }
            failures = 0
            connectErrors[vm] = nil
            connections[vm] = connection
            vmCache[vm] = nil
            logger.info("QMP session with VM \(vm) established", metadata: ["vm": "\(vm)"])
            markDirty([vm])
            for await event in connection.events {
                logger.debug("VM \(vm) event \(event)", metadata: ["vm": "\(vm)"])
                vmCache[vm] = nil
                markDirty([vm])
            }
            vmCache[vm] = nil
            if connections[vm] === connection {
                connections[vm] = nil
                connectErrors[vm] = .absent("QMP session closed")
            }
            await connection.close()
            markDirty([vm])
        }
    }

    private func dropConnection(vm: String, because error: any Error) async {
        vmCache[vm] = nil
        guard let connection = connections.removeValue(forKey: vm) else { return }
        connectErrors[vm] = .unresponsive("\(error)")
        logger.warning("VM \(vm) stopped answering: \(error)", metadata: ["vm": "\(vm)"])
        // Closing ends the session's event stream, so maintainSession reconnects.
        await connection.close()
    }

    // MARK: - Reconcile

    private func reconcile(vm: String) async {
        defer {
            reconciling.remove(vm)
            if dirty.contains(vm) { wake.yield() }
            writeStatusIfChanged()
            finishResyncIfDrained()
        }
        let clock = ContinuousClock()
        let started = clock.now

        var observedVM: ObservedVM
        if let cached = vmCache[vm], connections[vm] != nil {
            observedVM = cached
        } else if let connection = connections[vm] {
            do {
                observedVM = try await connection.observe(vm: vm, guestMACOf: desired.vms[vm]?.guestMACNICs ?? [])
                vmCache[vm] = observedVM
            } catch {
                await dropConnection(vm: vm, because: error)
                observedVM = ObservedVM(name: vm, reachability: .unresponsive("\(error)"))
            }
        } else if let error = connectErrors[vm] {
            switch error {
            case .absent(let why): observedVM = .absent(vm, why)
            case .unresponsive(let why): observedVM = ObservedVM(name: vm, reachability: .unresponsive(why))
            }
        } else if sessions[vm] != nil {
            observedVM = ObservedVM(name: vm, reachability: .unresponsive("QMP session not established yet"))
        } else {
            observedVM = .absent(vm, "no QMP socket is known for this VM")
        }
        for (key, status) in statuses where key.vm == vm {
            if let up = status.guestLink { observedVM.guestLink[key.nic] = up }
        }

        let observed = ObservedState(host: observedHost(), vms: [vm: observedVM])
        let plan = Planner.plan(desired: desired, observed: observed, vms: [vm])
        let planned = clock.now
        let now = planned
        var due: [BindingPlan] = []
        var rescheduleAt: ContinuousClock.Instant?
        for binding in plan.bindings where binding.key.vm == vm {
            if let retry = retries[binding.key], retry.notBefore > now, !binding.actions.isEmpty {
                rescheduleAt = min(rescheduleAt ?? retry.notBefore, retry.notBefore)
                continue
            }
            due.append(binding)
        }

        let connection = connections[vm]
        var outcomes: [BindingOutcome] = []
        for binding in due {
            if binding.actions.isEmpty {
                outcomes.append(BindingOutcome(plan: binding))
                continue
            }
            let outcome = await executor.execute(
                binding, host: observed.host, connection: connection)
            for link in outcome.createdLinks where !deletedIfindexes.contains(link.ifindex) {
                links[link.ifindex] = links[link.ifindex] ?? link
            }
            for index in outcome.deletedLinks {
                links[index] = nil
                deletedIfindexes.insert(index)
            }
            followInCache(vm: vm, outcome)
            outcomes.append(outcome)
        }
        let executed = clock.now
        record(outcomes)
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
        if outcomes.contains(where: { $0.plan.isDesired == false && $0.succeeded }) { updateSessions() }
    }

    /// Applies what the executor did to the VM's cached observation, or drops the cache when a step
    /// failed (what QEMU holds is then unknown).
    private func followInCache(vm: String, _ outcome: BindingOutcome) {
        guard outcome.succeeded, var cached = vmCache[vm] else {
            vmCache[vm] = nil
            return
        }
        let detached = Set(outcome.detachedBackends)
        cached.backends.removeAll { detached.contains($0.ids) }
        cached.backends += outcome.attachedBackends
        vmCache[vm] = cached
    }

    /// Replaces the link cache with a fresh dump; false when the dump failed (the cache stays).
    @discardableResult
    private func refreshLinks() async -> Bool {
        do {
            let dump = try await host.links()
            links = Dictionary(dump.map { ($0.ifindex, $0) }, uniquingKeysWith: { $1 })
            deletedIfindexes = []
            return true
        } catch {
            logger.error("link dump failed: \(error)")
            return false
        }
    }

    /// A resync is done when no VM is dirty or being reconciled any more.
    private func finishResyncIfDrained() {
        guard let started = resyncStarted, dirty.isEmpty, reconciling.isEmpty else { return }
        resyncStarted = nil
        let duration = ContinuousClock.now - started
        metrics.resynced(at: Reconciler.now(), duration: duration)
        logger.debug("resync done in \(duration.milliseconds) ms")
        writeMetrics()
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
                let failures = (retries[key]?.failures ?? 0) + 1
                let delay = backoff(failures, base: options.backoffBase, cap: options.backoffCap)
                retries[key] = Retry(failures: failures, notBefore: ContinuousClock.now + delay)
                logger.warning(
                    "reconcile failed (attempt \(failures), retry in \(delay)): \(failure)",
                    metadata: ["binding": "\(key)"])
                scheduleRetry(vm: key.vm, at: ContinuousClock.now + delay)
            } else if !outcome.plan.actions.isEmpty {
                retries[key] = nil
            }
            let next = StatusBuilder.status(for: outcome, before: statuses[key], desired: desired, now: now)
            if next != statuses[key] {
                if next?.phase != statuses[key]?.phase {
                    logger.info(
                        "\(statuses[key]?.phase.rawValue ?? "new") -> \(next?.phase.rawValue ?? "gone"): \(outcome.plan.reason.message)",
                        metadata: ["binding": "\(key)"])
                }
                statuses[key] = next
                statusDirty = true
            }
        }
    }

    private func scheduleRetry(vm: String, at instant: ContinuousClock.Instant) {
        Task {
            try? await Task.sleep(until: instant, clock: .continuous)
            self.markDirty([vm])
        }
    }

    private func backoff(_ failures: Int, base: Duration, cap: Duration) -> Duration {
        let factor = 1 << Swift.min(failures - 1, 20)
        return Swift.min(cap, base * factor)
    }

    // MARK: - Status

    /// Coalesces status writes: a flap touching a hundred bindings on forty VMs changes status after
    /// every VM's reconcile, and one write per 5 ms says the same as a burst of them.
    private func writeStatusIfChanged() {
        guard statusDirty, !statusWriteScheduled else { return }
        statusWriteScheduled = true
        Task {
            try? await Task.sleep(for: .milliseconds(5))
            self.flushStatus()
        }
    }

    private func flushStatus() {
        statusWriteScheduled = false
        if statusDirty && !finished { writeStatus() }
    }

    private func writeMetrics() {
        guard let path = options.metricsPath else { return }
        files.replace(path, with: Array(metrics.render().utf8), logger: logger, what: "metrics")
    }

    private func writeStatus() {
        statusDirty = false
        let bindings = currentStatus()
        metrics.phases(bindings.map(\.phase))
        onStatusChange?(bindings)
        writeMetrics()
        guard let store else { return }
        do {
            let bytes = try statusEncoder.encode(bindings: bindings, config: config, updated: Reconciler.now())
            files.replace(store.path, with: bytes, logger: logger, what: "status")
        } catch {
            logger.error("cannot write status: \(error)")
        }
    }
}
