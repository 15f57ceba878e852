import Logging
import MacvtapdCore

#if canImport(Glibc)
    import Glibc
#endif

/// One reconcile pass over everything: observe, plan, and (unless it is a dry run) execute and
/// record status. `plan`, `apply`, `apply --dry-run` and the daemon's full resync all come here.
public struct Reconciler: Sendable {
    public var observer: Observer
    public var executor: Executor
    public var store: StatusStore

    public init(host: any HostDriver, connector: any VMConnector, store: StatusStore, logger: Logger) {
        observer = Observer(host: host, connector: connector)
        executor = Executor(host: host, logger: logger)
        self.store = store
    }

    public struct Result: Sendable {
        public var plan: Plan
        /// Empty for a dry run.
        public var outcomes: [BindingOutcome]
        public var status: StatusDocument?

        public var failures: [BindingOutcome] { outcomes.filter { !$0.succeeded } }
    }

    /// Observes and plans without changing anything.
    public func plan(_ desired: DesiredState) async throws -> Plan {
        let observation = try await observe(desired, previous: try? store.read())
        await observation.closeConnections()
        return Planner.plan(desired: desired, observed: observation.state)
    }

    /// Observes, plans, executes and writes the status document. A step that found the world changed
    /// since the observation (see `StaleObservation`) makes it observe and plan again, a few times.
    public func apply(_ desired: DesiredState, config: StatusDocument.ConfigStatus?) async throws -> Result {
        var result = try await applyOnce(desired, config: config)
        for _ in 0..<3 where result.outcomes.contains(where: { $0.failure?.isStale == true }) {
            result = try await applyOnce(desired, config: config)
        }
        return result
    }

    func applyOnce(_ desired: DesiredState, config: StatusDocument.ConfigStatus?) async throws -> Result {
        let previous = try? store.read()
        let observation = try await observe(desired, previous: previous)
        let plan = Planner.plan(desired: desired, observed: observation.state)
        let outcomes = await executor.execute(plan, observation: observation)
        await observation.closeConnections()
        let status = StatusBuilder.next(
            previous: previous, outcomes: outcomes, desired: desired, config: config, now: Self.now())
        try store.write(status)
        return Result(plan: plan, outcomes: outcomes, status: status)
    }

    /// The VMs the desired state names plus those the previous status still knows, and the host.
    private func observe(_ desired: DesiredState, previous: StatusDocument?) async throws -> Observation {
        try await observer.observe(
            vms: VMTarget.targets(desired: desired, previous: previous), guestLink: StatusBuilder.guestLinks(previous))
    }

    /// Wall-clock seconds since the Unix epoch, for status timestamps.
    public static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}
