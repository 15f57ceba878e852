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
        for action in plan.actions {
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
                case .attachBackend(let vm, let nic, let macvtap, let hub):
                    let session = try require(connection, vm: vm)
                    guard let link = created[macvtap] ?? observed.link(named: macvtap) else {
                        throw ExecutorError("macvtap \(macvtap) does not exist")
                    }
                    let ids = Ownership.BackendIDs(nic: nic, ifindex: link.ifindex)
                    try await host.withOpenTap(ifindex: link.ifindex, name: link.name) { fd in
                        try await session.attachBackend(ids, fd: fd, hub: hub)
                    }
                    outcome.attachDuration = clock.now - start
                    outcome.attachedBackends.append(ObservedBackend(ids: ids, hasTap: true, hasPort: true, hub: hub))
                case .detachBackend(let vm, let backend):
                    try await require(connection, vm: vm).detachBackend(backend)
                    outcome.detachedBackends.append(backend.ids)
                case .setGuestLink(let vm, let nic, let up):
                    try await require(connection, vm: vm).setLink(nic: nic, up: up)
                    outcome.guestLinkSet = up
                case .announce(let vm, let nic):
                    // Advisory: the guest is connected either way, and peers re-learn its MAC from its
                    // next frame. A QEMU without announce-self must not keep the binding failing.
                    do {
                        try await require(connection, vm: vm).announce(nic: nic)
                    } catch let stale as StaleObservation {
                        throw stale
                    } catch {
                        log(plan.key, action, "failed, carrying on: \(error)", clock.now - start, level: .warning)
                        continue
                    }
                }
                log(plan.key, action, "ok", clock.now - start)
            } catch {
                let stale = error is StaleObservation
                log(
                    plan.key, action,
                    stale ? "world changed since the observation, re-planning: \(error)" : "failed: \(error)",
                    clock.now - start, level: stale ? .info : .error)
                outcome.failure = ActionFailure(
                    action: action, error: "\(error)", isStale: error is StaleObservation)
                return outcome
            }
        }
        return outcome
    }

    private func require(_ connection: (any VMConnection)?, vm: String) throws -> any VMConnection {
        guard let connection else { throw ExecutorError("no QMP session with VM \(vm)") }
        return connection
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
