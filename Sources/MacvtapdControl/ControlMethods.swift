import MacvtapdCore

// The parameters and replies of each io.macvtapd method (docs/control-protocol.md); the envelopes
// that carry them are in ControlProtocol.swift.

/// Who answered: every reply names the daemon, so output can say where a plan came from.
public struct DaemonInfo: Codable, Sendable, Hashable {
    public var pid: Int32
    public var config: String
    public var version: String
    public var `protocol`: Int
    /// Unix seconds.
    public var started: Double

    public init(pid: Int32, config: String, version: String, started: Double) {
        self.pid = pid
        self.config = config
        self.version = version
        self.protocol = ControlProtocol.version
        self.started = started
    }
}

public struct ConfigFile: Codable, Sendable, Hashable {
    public var path: String
    public var content: String

    public init(path: String, content: String) {
        self.path = path
        self.content = content
    }
}

public struct PlanParameters: Codable, Sendable {
    public var files: [ConfigFile]

    public init(files: [ConfigFile]) { self.files = files }
}

public struct PlanReply: Codable, Sendable {
    public var daemon: DaemonInfo
    public var plan: PlanDocument
    public var text: String

    public init(daemon: DaemonInfo, plan: PlanDocument, text: String) {
        self.daemon = daemon
        self.plan = plan
        self.text = text
    }
}

public struct ApplyParameters: Codable, Sendable {
    /// The configuration the client means, as an absolute path with symlinks resolved.
    public var config: String
    public var timeoutMs: Int?

    enum CodingKeys: String, CodingKey {
        case config
        case timeoutMs = "timeout_ms"
    }

    public init(config: String, timeoutMs: Int?) {
        self.config = config
        self.timeoutMs = timeoutMs
    }
}

/// One binding's result in an apply report.
public struct ApplyOutcome: Codable, Sendable, Hashable {
    public var vm: String
    public var nic: String
    public var phase: Phase
    /// Actions were carried out (or attempted) for it.
    public var changed: Bool
    /// The step that failed and why.
    public var failure: String?
    /// Why the binding is where it is.
    public var message: String

    public init(vm: String, nic: String, phase: Phase, changed: Bool, failure: String?, message: String) {
        self.vm = vm
        self.nic = nic
        self.phase = phase
        self.changed = changed
        self.failure = failure
        self.message = message
    }

    public var key: BindingKey { BindingKey(vm: vm, nic: nic) }
}

/// What an apply did, from a one-shot run or from the daemon; the CLI prints both the same way.
public struct ApplyReport: Codable, Sendable {
    public var plan: PlanDocument
    public var text: String
    /// Bindings that had actions: applied or failed.
    public var outcomes: [ApplyOutcome]
    /// Bindings whose VM did not answer: nothing could be planned for them.
    public var notApplied: [ApplyOutcome]
    public var waiting: Int
    /// False when the daemon's wait ran out before every binding was reconciled.
    public var settled: Bool
    /// The VMs still being reconciled when the wait ran out.
    public var pending: [String]
    /// Bindings not re-planned: their VM's bindings did not change and its last reconcile found
    /// nothing to do (nil from a daemon that re-planned every VM).
    public var untouched: Int?

    enum CodingKeys: String, CodingKey {
        case plan, text, outcomes, waiting, settled, pending, untouched
        case notApplied = "not_applied"
    }

    public init(
        plan: PlanDocument, text: String, outcomes: [ApplyOutcome], notApplied: [ApplyOutcome], waiting: Int,
        settled: Bool = true, pending: [String] = [], untouched: Int? = nil
    ) {
        self.untouched = untouched
        self.plan = plan
        self.text = text
        self.outcomes = outcomes
        self.notApplied = notApplied
        self.waiting = waiting
        self.settled = settled
        self.pending = pending
    }

    public var failures: [ApplyOutcome] { outcomes.filter { $0.failure != nil } }
}

public struct ApplyReply: Codable, Sendable {
    public var daemon: DaemonInfo
    public var report: ApplyReport

    public init(daemon: DaemonInfo, report: ApplyReport) {
        self.daemon = daemon
        self.report = report
    }
}

/// What the daemon is doing now.
public struct DaemonActivity: Codable, Sendable, Hashable {
    /// VMs being reconciled.
    public var reconciling: [String]
    /// VMs marked for a reconcile (a trigger arrived) and not started yet.
    public var queued: [String]
    /// A full resync is under way.
    public var resyncing: Bool

    public init(reconciling: [String], queued: [String], resyncing: Bool) {
        self.reconciling = reconciling
        self.queued = queued
        self.resyncing = resyncing
    }
}

public struct StatusReply: Codable, Sendable {
    public var daemon: DaemonInfo
    public var status: StatusDocument
    public var activity: DaemonActivity

    public init(daemon: DaemonInfo, status: StatusDocument, activity: DaemonActivity) {
        self.daemon = daemon
        self.status = status
        self.activity = activity
    }
}

/// `org.varlink.service.GetInfo`.
public struct ServiceInfo: Codable, Sendable {
    public var vendor = "macvtapd"
    public var product = "macvtapd"
    public var version: String
    /// varlink wants one; macvtapd has no web address of its own.
    public var url = ""
    public var interfaces = ["org.varlink.service", ControlProtocol.interface]

    public init(version: String) { self.version = version }
}

public struct InterfaceDescriptionParameters: Codable, Sendable {
    public var interface: String

    public init(interface: String) { self.interface = interface }
}

public struct InterfaceDescriptionReply: Codable, Sendable {
    public var description: String

    public init(description: String) { self.description = description }
}
