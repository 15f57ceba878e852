import Logging
import MacvtapdCore

#if canImport(Glibc)
    import Glibc
#endif

/// What carrying out one binding's plan did.
public struct BindingOutcome: Sendable {
    public var plan: BindingPlan
    /// The first action that failed and why; the binding's later actions were not attempted.
    public var failure: ActionFailure?
    /// The guest carrier last set by this run, when a set_link succeeded.
    public var guestLinkSet: Bool?
    /// How long attaching a backend took (open + getfd + netdev_add ×2), for the latency metric.
    public var attachDuration: Duration?
    /// Links this run created and deleted, so a cache can follow without waiting for events.
    public var createdLinks: [ObservedLink] = []
    public var deletedLinks: [Int32] = []
    /// Macvtaps this run brought up (true) or took down (false), by ifindex.
    public var adminChanges: [(ifindex: Int32, up: Bool)] = []
    /// When a macvtap of this binding came up (the set_macvtap_up step returned): a migration's
    /// handover is measured to here, not to the end of the binding's later QMP steps.
    public var macvtapUpAt: ContinuousClock.Instant?
    /// Backends this run attached and detached, so a cache of the VM can follow.
    public var attachedBackends: [ObservedBackend] = []
    public var detachedBackends: [Ownership.BackendIDs] = []
    /// Wall-clock time (as `Reconciler.now()`) when the binding's steps were done: when its new
    /// phase began (the daemon sends a last announce after, `announce(_:connection:)`). Nil when a
    /// step failed.
    public var settledAt: Double?

    public var key: BindingKey { plan.key }
    public var succeeded: Bool { failure == nil }
}

public struct ActionFailure: Error, Sendable, CustomStringConvertible {
    public var action: Action
    public var error: String
    /// The step found the world no longer as observed (its target vanished or already exists):
    /// not a fault to back off from, but a reason to observe again and re-plan at once.
    public var isStale = false

    public var description: String { "\(action.summary): \(error)" }
}

/// Carries out plans. Bindings of different VMs run concurrently; the bindings of one VM run in
/// order on its single QMP session. A failure stops only the binding it happened in.
public struct Executor: Sendable {
    public var host: any HostDriver
    public var logger: Logger

    public init(host: any HostDriver, logger: Logger) {
        self.host = host
        self.logger = logger
    }

    public func execute(_ plan: Plan, observation: Observation) async -> [BindingOutcome] {
        let byVM = Dictionary(grouping: plan.bindings.filter { !$0.actions.isEmpty }, by: \.key.vm)
        let unchanged = plan.bindings.filter { $0.actions.isEmpty }.map { BindingOutcome(plan: $0) }
        let outcomes = await withTaskGroup(of: [BindingOutcome].self) { group in
            for (vm, bindings) in byVM {
                let connection = observation.connections[vm]
                group.addTask {
                    var outcomes: [BindingOutcome] = []
                    for binding in bindings {
                        outcomes.append(
                            await execute(binding, host: observation.state.host, connection: connection))
                    }
                    return outcomes
                }
            }
            var all: [BindingOutcome] = []
            for await outcomes in group { all += outcomes }
            return all
        }
        return (outcomes + unchanged).sorted { $0.key < $1.key }
    }

    public func execute(_ plan: BindingPlan, host observed: ObservedHost, connection: (any VMConnection)?) async
        -> BindingOutcome
    {
        var outcome = BindingOutcome(plan: plan)
        var created: [String: ObservedLink] = [:]
        let actions = plan.actions
        var index = 0
        while index < actions.count {
            // Consecutive QMP steps go to QEMU in one exchange (detach, attach, carrier, announce):
            // one round trip instead of one per command.
            if actions[index].vm != nil {
                var end = index
                while end < actions.count, actions[end].vm != nil { end += 1 }
                let run = Array(actions[index..<end])
                index = end
                let ok = await perform(
                    run, key: plan.key, connection: connection, observed: observed, created: created,
                    outcome: &outcome)
                if !ok { return outcome }
                continue
            }
            let action = actions[index]
            index += 1
            let clock = ContinuousClock()
            let start = clock.now
            do {
                switch action {
                case .createMacvtap(let spec):
                    let link = try await host.createMacvtap(spec)
                    created[spec.name] = link
                    outcome.createdLinks.append(link)
                case .setMacvtapUp(let ifindex, let name):
                    try await host.setMacvtapUp(ifindex: ifindex, name: name)
                    outcome.adminChanges.append((ifindex, true))
                    outcome.macvtapUpAt = clock.now
                case .setMacvtapDown(let ifindex, let name):
                    try await host.setMacvtapDown(ifindex: ifindex, name: name)
                    outcome.adminChanges.append((ifindex, false))
                case .deleteMacvtap(let ifindex, let name):
                    try await host.deleteMacvtap(ifindex: ifindex, name: name)
                    outcome.deletedLinks.append(ifindex)
                case .attachBackend, .detachBackend, .setGuestLink, .announce:
                    preconditionFailure("QMP steps run in perform")
                }
                log(plan.key, action, "ok", clock.now - start)
            } catch {
                fail(&outcome, action, error, clock.now - start)
                return outcome
            }
        }
        outcome.settledAt = Reconciler.now()
        return outcome
    }

    /// Carries out a run of QMP steps of one binding in one exchange and records each step's
    /// result as if it had been sent alone; false when one failed (the binding stops there).
    private func perform(
        _ run: [Action], key: BindingKey, connection: (any VMConnection)?, observed: ObservedHost,
        created: [String: ObservedLink], outcome: inout BindingOutcome
    ) async -> Bool {
        let clock = ContinuousClock()
        let start = clock.now
        guard let connection else {
            fail(&outcome, run[0], ExecutorError("no QMP session with VM \(key.vm)"), .zero)
            return false
        }
        // At most one attach per binding: its tap is opened around the whole exchange.
        var found: (link: ObservedLink, ids: Ownership.BackendIDs, at: Int)?
        for (position, action) in run.enumerated() {
            guard case .attachBackend(_, let nic, let macvtap, _) = action else { continue }
            guard let link = created[macvtap] ?? observed.link(named: macvtap) else {
                // What comes before the attach is still carried out, as it would be one by one.
                let ok = await perform(
                    Array(run[..<position]), key: key, connection: connection, observed: observed,
                    created: created, outcome: &outcome)
                if ok { fail(&outcome, action, ExecutorError("macvtap \(macvtap) does not exist"), .zero) }
                return false
            }
            found = (link, Ownership.BackendIDs(nic: nic, ifindex: link.ifindex), position)
            break
        }
        let tap = found
        let attachIDs = found?.ids
        @Sendable func steps(fd: Int32) -> [VMStep] {
            run.map { action in
                switch action {
                case .attachBackend(_, _, _, let hub): return .attach(attachIDs!, fd: fd, hub: hub)
                case .detachBackend(_, let backend): return .detach(backend)
                case .setGuestLink(_, let nic, let up): return .setLink(nic: nic, up: up)
                case .announce(_, let nic): return .announce(nic: nic)
                case .createMacvtap, .setMacvtapUp, .setMacvtapDown, .deleteMacvtap:
                    preconditionFailure("host actions run in execute")
                }
            }
        }
        var results: [Result<Void, any Error>]
        do {
            if let tap {
                do {
                    let backend = VMBackend(vm: key.vm, ids: tap.ids)
                    results = try await host.withOpenTap(ifindex: tap.link.ifindex, name: tap.link.name, for: backend) {
                        fd in
                        let results = try await connection.perform(steps(fd: fd))
                        return (results, handedOver: (try? results[tap.at].get()) != nil)
                    }
                } catch let error where !(error is CancellationError) {
                    // The tap could not be opened: the steps before the attach still go, the attach fails.
                    let before = try await connection.perform(steps(fd: -1).prefix(tap.at).map { $0 })
                    results = before + [.failure(error)]
                    results += Array(repeating: .failure(VMStepNotAttempted()), count: run.count - results.count)
                }
            } else {
                results = try await connection.perform(steps(fd: -1))
            }
        } catch {
            fail(&outcome, run[0], error, clock.now - start)
            return false
        }
        let duration = clock.now - start
        // QEMU answered these netdev_dels: it has closed its copies of their taps, so ours go too.
        let detached = Set(
            zip(run, results).compactMap { action, result -> Ownership.BackendIDs? in
                guard case .detachBackend(_, let backend) = action, case .success = result else { return nil }
                return backend.ids
            })
        if !detached.isEmpty { host.releaseTaps(vm: key.vm) { detached.contains($0) } }
        var succeeded = true
        for (action, result) in zip(run, results) {
            switch result {
            case .success:
                switch action {
                case .attachBackend(_, _, _, let hub):
                    outcome.attachDuration = duration
                    outcome.attachedBackends.append(
                        ObservedBackend(ids: attachIDs!, hasTap: true, hasPort: true, hub: hub))
                case .detachBackend(_, let backend): outcome.detachedBackends.append(backend.ids)
                case .setGuestLink(_, _, let up): outcome.guestLinkSet = up
                default: break
                }
                log(key, action, "ok", duration)
            case .failure(let error) where error is VMStepNotAttempted:
                continue
            case .failure(let error):
                if case .announce = action, !(error is StaleObservation) {
                    // Advisory: the guest is connected either way, and peers re-learn its MAC from
                    // its next frame. A QEMU without announce-self must not keep the binding failing.
                    log(key, action, "failed, carrying on: \(error)", duration, level: .warning)
                    continue
                }
                if succeeded { fail(&outcome, action, error, duration) }
                succeeded = false
            }
        }
        return succeeded
    }

    /// The announces of several bindings of one VM in one command (see `VMConnection.announce(nics:)`),
    /// logged for each binding as its own announce would be. Advisory, as a binding's own
    /// announce is: the guests are connected either way.
    public func announce(_ keys: [BindingKey], connection: any VMConnection) async {
        let clock = ContinuousClock()
        let start = clock.now
        var result = "ok"
        var level = Logger.Level.info
        do {
            try await connection.announce(nics: keys.map(\.nic))
        } catch {
            result = "failed, carrying on: \(error)"
            level = .warning
        }
        for key in keys {
            log(key, .announce(vm: key.vm, nic: key.nic), result, clock.now - start, level: level)
        }
    }

    private func fail(_ outcome: inout BindingOutcome, _ action: Action, _ error: any Error, _ duration: Duration) {
        let stale = error is StaleObservation
        log(
            outcome.key, action,
            stale ? "world changed since the observation, re-planning: \(error)" : "failed: \(error)",
            duration, level: stale ? .info : .error)
        outcome.failure = ActionFailure(action: action, error: "\(error)", isStale: stale)
    }

    private func log(
        _ key: BindingKey, _ action: Action, _ result: String, _ duration: Duration, level: Logger.Level = .info
    ) {
        logger.log(
            level: level, "\(action.summary): \(result)",
            metadata: ["binding": "\(key)", "duration_ms": "\(duration.milliseconds)"])
    }
}

/// Thrown by drivers when an operation's target is not as the plan observed it: a macvtap or NIC
/// that vanished, a name or netdev id that now exists. The controller re-plans from fresh state
/// instead of counting a failure.
public struct StaleObservation: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

struct ExecutorError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension Duration {
    /// Milliseconds with microsecond resolution, for logs and metrics.
    public var milliseconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) * 1000 + Double(attoseconds / 1_000_000_000) / 1_000_000
    }
}
