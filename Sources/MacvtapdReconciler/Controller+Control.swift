import MacvtapdCore

/// What the control socket asks of the controller: a plan of any desired state against the
/// daemon's live observations, an apply that waits for its outcomes, and status as held now.
/// Every method here returns quickly or awaits without holding the actor: QMP observations and
/// planning run off it, and a client's socket is never touched here (the control socket's thread
/// owns it), so a slow client never delays a reconcile.
extension Controller {
    /// Outcomes gathered for one `apply` waiting on the control socket.
    struct ApplyWatch {
        let epoch: Int
        let vms: Set<String>
        /// Desired bindings of the VMs left out of `vms`.
        let untouched: Int
        /// Per binding: the last outcome with actions, else the last outcome.
        var outcomes: [BindingKey: BindingOutcome] = [:]
    }

    /// What an `apply` through the daemon did.
    public struct Settlement: Sendable {
        /// The binding plans carried out (or found with nothing to do), as one plan.
        public var plan: Plan
        public var outcomes: [BindingOutcome]
        /// False when the wait ran out before every VM was reconciled against the new desired state.
        public var settled: Bool
        /// VMs not reconciled (or still being reconciled) when the wait ran out.
        public var pending: [String]
        /// Desired bindings of the VMs the apply did not re-plan: unchanged, with nothing left to do.
        public var untouched: Int
    }

    /// What the daemon is doing now.
    public struct Activity: Sendable, Hashable {
        public var reconciling: [String]
        public var queued: [String]
        public var resyncing: Bool
    }

    /// Returns once the controller made its first link dump (at once, after that), or is stopping.
    public func untilStarted() async {
        while !started && !stopping {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// `stop()` was called.
    public var isStopping: Bool { stopping }

    // MARK: - Status

    /// The status document as the daemon holds it now, and what it is doing.
    public func snapshot() -> (document: StatusDocument, activity: Activity) {
        let document = StatusDocument(updated: Reconciler.now(), config: config, bindings: currentStatus())
        let activity = Activity(
            reconciling: queue.reconciling.sorted(), queued: queue.queued.sorted(), resyncing: resyncStarted != nil)
        return (document, activity)
    }

    // MARK: - Plan

    /// Where a plan request gets a VM from.
    enum PlanSource: Sendable {
        case known(ObservedVM)
        case ask(any VMConnection)
        /// A VM the daemon has no session with (new in the candidate, or at another QMP path): a
        /// one-off connection, closed at once.
        case connect(qmp: String)
    }

    /// The plan `candidate` would get against what the daemon observes now: its link cache (a
    /// fresh dump when link events are off, the cache then being as old as the last resync) and
    /// each VM's session (its cached observation, or asked now). Changes nothing.
    public func plan(_ candidate: DesiredState) async -> Plan {
        let vms = Set(candidate.vms.keys).union(statuses.keys.map(\.vm)).union(links.owningVMs)
        var sources: [String: PlanSource] = [:]
        // The carriers this daemon's sessions set, as its own reconciles plan with them: without
        // them a preview would show a set_link the daemon then skips.
        var held: [String: [String: Bool]] = [:]
        for vm in vms {
            let source = planSource(vm: vm, candidate: candidate)
            sources[vm] = source
            if case .connect = source { continue }
            if let linkHeld = sessions[vm]?.linkHeld, !linkHeld.isEmpty { held[vm] = linkHeld }
        }
        var guestLinks: [BindingKey: Bool] = [:]
        for (key, status) in statuses {
            if let up = status.guestLink { guestLinks[key] = up }
        }
        var snapshot = links.host()
        if !options.useLinkEvents, let dump = try? await host.links() { snapshot = ObservedHost(links: dump) }
        return await Self.plan(
            candidate, host: snapshot, sources: sources, guestLinks: guestLinks, held: held, connector: connector)
    }

    private func planSource(vm: String, candidate: DesiredState) -> PlanSource {
        let wanted = candidate.vms[vm]
        guard let session = sessions[vm], wanted == nil || wanted?.qmp == session.qmp else {
            if let qmp = wanted?.qmp { return .connect(qmp: qmp) }
            return .known(.absent(vm, "no QMP socket is known for this VM"))
        }
        switch session.source(vm: vm) {
        case .cached(let cached, let connection):
            // The cache holds guest MACs only for the NICs the daemon's own config asks about.
            let asked = desired.vms[vm]?.guestMACNICs ?? []
            return (wanted?.guestMACNICs ?? []).isSubset(of: asked) ? .known(cached) : .ask(connection)
        case .live(let connection):
            return .ask(connection)
        case .unreachable(let observed):
            return .known(observed)
        }
    }

    /// Observes what needs asking (concurrently, off the actor) and plans.
    private nonisolated static func plan(
        _ candidate: DesiredState, host: ObservedHost, sources: [String: PlanSource],
        guestLinks: [BindingKey: Bool], held: [String: [String: Bool]], connector: any VMConnector
    ) async -> Plan {
        let observed = await withTaskGroup(of: ObservedVM.self) { group in
            for (vm, source) in sources {
                let guestMACs = candidate.vms[vm]?.guestMACNICs ?? []
                group.addTask {
                    switch source {
                    case .known(let observed):
                        return observed
                    case .ask(let connection):
                        do {
                            return try await connection.observe(vm: vm, guestMACOf: guestMACs)
                        } catch {
                            // The session is the controller's: its own reconcile decides what to do.
                            return ObservedVM(name: vm, reachability: .unresponsive("\(error)"))
                        }
                    case .connect(let qmp):
                        let (observed, connection) = await Observer.observe(
                            VMTarget(name: vm, qmp: qmp, guestMACNICs: guestMACs), connector: connector)
                        await connection?.close()
                        return observed
                    }
                }
            }
            var all: [String: ObservedVM] = [:]
            for await vm in group { all[vm.name] = vm }
            return all
        }
        var vms = observed
        for (key, up) in guestLinks where vms[key.vm] != nil {
            vms[key.vm]?.guestLink[key.nic] = up
        }
        for (vm, linkHeld) in held where vms[vm] != nil { vms[vm]?.guestLinkHeld = linkHeld }
        return Planner.plan(desired: candidate, observed: ObservedState(host: host, vms: vms))
    }

    // MARK: - Apply

    /// Puts `desired` in force now, as a reload does, with every binding's backoff forgotten (an
    /// operator's apply asks for now), and starts gathering outcomes; returns the watch to pass
    /// to `settle`. The watch covers the VMs the reload reconciles (`putInForce`: those whose
    /// bindings changed or that had work left) and the VMs holding leftovers with work left; a VM
    /// whose bindings did not change and whose last reconcile found nothing to do is not re-planned
    /// before the answer (its bindings are counted as untouched).
    public func apply(_ desired: DesiredState, config: StatusDocument.ConfigStatus?) -> Int {
        queue.forgetBackoff()
        var vms = putInForce(desired, config: config)
        for vm in allVMs() where !quiet.contains(vm) || !queue.isIdle(vm) { vms.insert(vm) }
        let id = nextWatch
        nextWatch += 1
        let untouched = desired.vms.values.reduce(0) { $0 + (vms.contains($1.name) ? 0 : $1.nics.count) }
        watches[id] = ApplyWatch(epoch: epoch, vms: vms, untouched: untouched)
        markDirty(vms)
        return id
    }

    /// Waits until every VM of the watch finished a reconcile against its desired state and is
    /// idle, or `timeout` passes; returns what was done.
    public func settle(_ id: Int, timeout: Duration) async -> Settlement {
        let deadline = ContinuousClock.now + timeout
        // Woken by the reconcile that completes the watch (`settleProgress`), by stop(), or by the
        // timer: polling the actor every few milliseconds answered up to a poll late, and later
        // still when the machine was loaded and timers fired late.
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.wakeSettle(id)
        }
        while pendingVMs(id).isEmpty == false, ContinuousClock.now < deadline, !stopping {
            await withCheckedContinuation(isolation: self) { settleWaiters[id] = $0 }
        }
        timer.cancel()
        let pending = pendingVMs(id)
        let watch = watches.removeValue(forKey: id)
        let outcomes = (watch?.outcomes.values.map { $0 } ?? []).sorted { $0.key < $1.key }
        return Settlement(
            plan: Plan(bindings: outcomes.map(\.plan)), outcomes: outcomes, settled: pending.isEmpty,
            pending: pending.sorted(), untouched: watch?.untouched ?? 0)
    }

    private func wakeSettle(_ id: Int) {
        settleWaiters.removeValue(forKey: id)?.resume()
    }

    /// A reconcile ended or the controller is stopping: wake the applies whose wait is over.
    func settleProgress() {
        for id in Array(settleWaiters.keys) where stopping || pendingVMs(id).isEmpty { wakeSettle(id) }
    }

    private func pendingVMs(_ id: Int) -> Set<String> {
        guard let watch = watches[id] else { return [] }
        return watch.vms.filter { vm in (reconciledEpoch[vm] ?? -1) < watch.epoch || !queue.isIdle(vm) }
    }

    /// A reconcile finished: remember against which desired state, and hand its outcomes to the
    /// applies waiting for that VM.
    func reconciled(vm: String, epoch: Int, outcomes: [BindingOutcome]) {
        reconciledEpoch[vm] = max(reconciledEpoch[vm] ?? -1, epoch)
        // The ids are copied out: mutating `watches` while iterating its own keys copied the whole
        // dictionary, each watch's outcomes with it, once per VM reconciled.
        for id in Array(watches.keys) where watches[id]!.vms.contains(vm) && epoch >= watches[id]!.epoch {
            for outcome in outcomes where outcome.failure?.isStale != true {
                let kept = watches[id]!.outcomes[outcome.key]
                // A follow-up reconcile with nothing to do must not hide what the first one did.
                if outcome.plan.actions.isEmpty, let kept, !kept.plan.actions.isEmpty { continue }
                watches[id]!.outcomes[outcome.key] = outcome
            }
        }
    }
}
