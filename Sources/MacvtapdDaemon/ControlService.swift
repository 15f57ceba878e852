import MacvtapdConfig
import MacvtapdControl
import MacvtapdCore
import MacvtapdReconciler

#if canImport(Glibc)
    import Glibc
#endif

/// Answers the control socket's calls (docs/control-protocol.md) for a running daemon. Runs in the
/// tasks the socket's thread starts, one per call; it talks to the controller only through its
/// actor methods, which never wait for a client.
struct ControlService: Sendable {
    let daemon: Daemon
    let info: DaemonInfo

    init(daemon: Daemon, version: String) {
        self.daemon = daemon
        info = DaemonInfo(
            pid: getpid(), config: canonicalPath(daemon.settings.configPath), version: version,
            started: Reconciler.now())
    }

    /// The reply to one call, or nil for a `oneway` call.
    func handle(_ message: [UInt8], from peer: Peer) async -> [UInt8]? {
        let header: ControlCallHeader
        do {
            header = try ControlWire.decodeHeader(message)
        } catch {
            return ControlWire.encode(error)
        }
        let reply: [UInt8]
        do {
            reply = try await answer(header, message)
        } catch let error as ControlError {
            reply = ControlWire.encode(error)
        } catch {
            reply = ControlWire.encode(.invalidRequest("\(error)"))
        }
        return header.oneway == true ? nil : reply
    }

    private func answer(_ header: ControlCallHeader, _ message: [UInt8]) async throws -> [UInt8] {
        // `more` asks for a stream of replies; every method here has exactly one, which a varlink
        // client accepts as the end of the stream.
        if header.upgrade == true { throw ControlError.invalidRequest("connection upgrades are not supported") }
        guard let method = ControlProtocol.Method(rawValue: header.method) else {
            throw ControlError.methodNotFound(header.method)
        }
        switch method {
        case .getInfo:
            return try ControlWire.encodeReply(ServiceInfo(version: info.version))
        case .getInterfaceDescription:
            let asked = try ControlWire.decodeParameters(InterfaceDescriptionParameters.self, from: message)
            guard let description = Self.interfaces[asked.interface] else {
                throw ControlError("org.varlink.service.InterfaceNotFound", .init(interface: asked.interface))
            }
            return try ControlWire.encodeReply(InterfaceDescriptionReply(description: description))
        case .status:
            await daemon.controller.untilStarted()
            let (document, activity) = await daemon.controller.snapshot()
            return try ControlWire.encodeReply(
                StatusReply(
                    daemon: info, status: document,
                    activity: DaemonActivity(
                        reconciling: activity.reconciling, queued: activity.queued, resyncing: activity.resyncing)))
        case .plan:
            return try await plan(try ControlWire.decodeParameters(PlanParameters.self, from: message))
        case .apply:
            return try await apply(try ControlWire.decodeParameters(ApplyParameters.self, from: message))
        }
    }

    /// The candidate is validated here again, from the bytes the client sent: the daemon never
    /// reads a path a client names, and trusts no client's validation.
    private func plan(_ parameters: PlanParameters) async throws -> [UInt8] {
        guard let first = parameters.files.first else {
            throw ControlError.invalidRequest(
                "files is empty: send the configuration file, or every file of the directory")
        }
        let result = ConfigLoader.load(parameters.files.map { ConfigSource(path: $0.path, text: $0.content) })
        guard let candidate = result.desired else {
            throw ControlError(
                "io.macvtapd.ConfigInvalid", .init(config: first.path, errors: result.diagnostics.map(\.description)))
        }
        await daemon.controller.untilStarted()
        let plan = await daemon.controller.plan(candidate)
        return try ControlWire.encodeReply(
            PlanReply(daemon: info, plan: PlanDocument(plan), text: PlanRenderer.human(plan)))
    }

    /// Two sources of truth would fight: only the daemon's own configuration can be applied
    /// through it, and it is read from disk, as a reload reads it.
    private func apply(_ parameters: ApplyParameters) async throws -> [UInt8] {
        guard canonicalPath(parameters.config) == info.config else {
            throw ControlError("io.macvtapd.OtherConfig", .init(config: info.config, pid: info.pid))
        }
        let milliseconds = min(max(parameters.timeoutMs ?? 30_000, 1), 600_000)
        await daemon.controller.untilStarted()
        switch await daemon.reloadForApply() {
        case .rejected(let errors):
            throw ControlError("io.macvtapd.ConfigInvalid", .init(config: info.config, errors: errors))
        case .watching(let watch):
            let settlement = await daemon.controller.settle(watch, timeout: .milliseconds(milliseconds))
            // A report cut short by a stop would read like bindings that failed to settle.
            if await daemon.controller.isStopping { throw ControlError("io.macvtapd.Stopping") }
            let report = ApplyReport(
                settlement.plan, outcomes: settlement.outcomes, settled: settlement.settled,
                pending: settlement.pending, untouched: settlement.untouched)
            return try ControlWire.encodeReply(ApplyReply(daemon: info, report: report))
        }
    }

    static let interfaces = [
        ControlProtocol.interface: ControlProtocol.description,
        "org.varlink.service": """
        # The Varlink Service Interface is provided by every varlink service.
        interface org.varlink.service

        method GetInfo() -> (vendor: string, product: string, version: string, url: string, interfaces: []string)
        method GetInterfaceDescription(interface: string) -> (description: string)

        error InterfaceNotFound (interface: string)
        error MethodNotFound (method: string)
        error MethodNotImplemented (method: string)
        error InvalidParameter (parameter: string)
        """,
    ]
}

extension ApplyReport {
    /// The report of an apply, from the plan carried out and its outcomes: the same words from
    /// a one-shot apply and from the daemon.
    public init(
        _ plan: Plan, outcomes: [BindingOutcome], settled: Bool = true, pending: [String] = [], untouched: Int? = nil
    ) {
        let changed = outcomes.filter { !$0.plan.actions.isEmpty }.map { outcome in
            ApplyOutcome(
                vm: outcome.key.vm, nic: outcome.key.nic, phase: outcome.plan.phase, changed: true,
                failure: outcome.failure.map { "\($0)" }, message: outcome.plan.reason.message)
        }
        let unknown = plan.bindings.filter { $0.standing == .unknown }.map { binding in
            ApplyOutcome(
                vm: binding.key.vm, nic: binding.key.nic, phase: binding.phase, changed: false, failure: nil,
                message: binding.reason.message)
        }
        self.init(
            plan: PlanDocument(plan), text: PlanRenderer.human(plan), outcomes: changed, notApplied: unknown,
            waiting: plan.count(.waiting), settled: settled, pending: pending, untouched: untouched)
    }
}
