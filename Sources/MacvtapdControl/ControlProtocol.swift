/// The control socket's protocol: varlink (https://varlink.org), systemd's IPC. Every message is
/// one JSON object terminated by a NUL byte; a call is `{"method": "io.macvtapd.Plan",
/// "parameters": {...}}`, a reply `{"parameters": {...}}` or `{"error": "io.macvtapd.X",
/// "parameters": {...}}`. The interface name is the version: fields may be added within
/// `io.macvtapd`; an incompatible change gets a new interface name. docs/control-protocol.md
/// describes every method and error.
public enum ControlProtocol {
    public static let interface = "io.macvtapd"
    /// Bumped with the interface name; replies carry it so a client can say what it talked to.
    public static let version = 1
    public static let defaultSocketPath = "/run/macvtapd/control.sock"

    /// Bounds that keep a client from costing the daemon memory or time.
    public struct Limits: Sendable {
        /// Larger calls are refused with `RequestTooLarge` before they are decoded.
        public var maxRequestBytes: Int
        /// A call must arrive whole within this time of the connection (or of the previous reply).
        public var requestTimeout: Duration
        /// A reply the client does not read within this time is dropped with the connection.
        public var replyTimeout: Duration
        /// Connections served at once; more are told `Busy` and closed.
        public var maxClients: Int

        public init(
            maxRequestBytes: Int = 4 << 20, requestTimeout: Duration = .seconds(5),
            replyTimeout: Duration = .seconds(10), maxClients: Int = 16
        ) {
            self.maxRequestBytes = maxRequestBytes
            self.requestTimeout = requestTimeout
            self.replyTimeout = replyTimeout
            self.maxClients = maxClients
        }
    }

    public enum Method: String, Sendable, CaseIterable {
        case plan = "io.macvtapd.Plan"
        case apply = "io.macvtapd.Apply"
        case status = "io.macvtapd.Status"
        case getInfo = "org.varlink.service.GetInfo"
        case getInterfaceDescription = "org.varlink.service.GetInterfaceDescription"
    }

    /// The interface in varlink's interface definition language, for
    /// `org.varlink.service.GetInterfaceDescription` (and `varlinkctl introspect`).
    public static let description = """
        # macvtapd's control interface: plan, apply and status through the running daemon.
        interface io.macvtapd

        type Daemon (pid: int, config: string, version: string, protocol: int, started: float)

        # One configuration file as the client read (and validated) it.
        type ConfigFile (path: string, content: string)

        type Outcome (vm: string, nic: string, phase: string, changed: bool, failure: ?string, message: string)

        type Activity (reconciling: []string, queued: []string, resyncing: bool)

        # The plan of a candidate configuration against the daemon's live observations; changes
        # nothing. plan is the document `macvtapd plan --json` prints, text its human rendering.
        method Plan(files: []ConfigFile) -> (daemon: Daemon, plan: object, text: string)

        # What an apply did: the plan carried out, the bindings that had actions, those whose VM
        # did not answer, whether every VM was reconciled before the wait ran out, and how many
        # bindings were left alone (their VM's bindings unchanged, nothing left to do).
        type ApplyReport (plan: object, text: string, outcomes: []Outcome, not_applied: []Outcome,
          waiting: int, settled: bool, pending: []string, untouched: ?int)

        # Reloads the daemon's own configuration (config must name it, as an absolute path with
        # symlinks resolved) and waits, at most timeout_ms, until every VM whose bindings changed
        # or that had work left was reconciled against it.
        method Apply(config: string, timeout_ms: ?int) -> (daemon: Daemon, report: ApplyReport)

        # Every binding's status as the daemon holds it now (the status file's format), and what
        # the daemon is doing.
        method Status() -> (daemon: Daemon, status: object, activity: Activity)

        error InvalidRequest (reason: string)
        error ConfigInvalid (config: string, errors: []string)
        error OtherConfig (config: string, pid: int)
        error RequestTooLarge (limit: int)
        error RequestTimeout (reason: string)
        error Busy (limit: int)
        error PermissionDenied (reason: string)
        error Stopping ()
        """
}

// MARK: - Envelopes

/// A call as sent; `parameters` is the method's parameter type.
public struct ControlCall<Parameters: Codable & Sendable>: Codable, Sendable {
    public var method: String
    public var parameters: Parameters?
    public var oneway: Bool?
    public var more: Bool?

    public init(method: ControlProtocol.Method, parameters: Parameters?) {
        self.method = method.rawValue
        self.parameters = parameters
    }
}

/// The part of a call every method shares, decoded before the parameters.
public struct ControlCallHeader: Decodable, Sendable {
    public var method: String
    public var oneway: Bool?
    public var more: Bool?
    public var upgrade: Bool?
}

/// A reply: parameters, or an error with its parameters.
public struct ControlReply<Parameters: Codable & Sendable>: Codable, Sendable {
    public var parameters: Parameters?
    public var error: String?

    public init(_ parameters: Parameters) {
        self.parameters = parameters
    }
}

/// What a method with no parameters takes.
public struct NoParameters: Codable, Sendable, Hashable {
    public init() {}
}

/// An error reply: varlink's qualified error name and its parameters.
public struct ControlError: Error, Codable, Sendable, Hashable, CustomStringConvertible {
    public struct Parameters: Codable, Sendable, Hashable {
        public var reason: String?
        public var config: String?
        public var errors: [String]?
        public var limit: Int?
        public var method: String?
        public var parameter: String?
        public var interface: String?
        /// The daemon's pid, where the error is about the daemon (OtherConfig).
        public var pid: Int32?

        public init(
            reason: String? = nil, config: String? = nil, errors: [String]? = nil, limit: Int? = nil,
            method: String? = nil, parameter: String? = nil, interface: String? = nil, pid: Int32? = nil
        ) {
            self.pid = pid
            self.reason = reason
            self.config = config
            self.errors = errors
            self.limit = limit
            self.method = method
            self.parameter = parameter
            self.interface = interface
        }
    }

    public var error: String
    public var parameters: Parameters

    public init(_ name: String, _ parameters: Parameters = Parameters()) {
        error = name
        self.parameters = parameters
    }

    public static func invalidRequest(_ reason: String) -> ControlError {
        ControlError("io.macvtapd.InvalidRequest", .init(reason: reason))
    }

    public static func methodNotFound(_ method: String) -> ControlError {
        ControlError("org.varlink.service.MethodNotFound", .init(method: method))
    }

    public var description: String {
        let p = parameters
        switch error {
        case "io.macvtapd.InvalidRequest": return "invalid request: \(p.reason ?? "")"
        case "io.macvtapd.ConfigInvalid":
            return "the configuration \(p.config ?? "") is invalid:\n" + (p.errors ?? []).joined(separator: "\n")
        case "io.macvtapd.OtherConfig": return "the daemon reads its configuration from \(p.config ?? "?")"
        case "io.macvtapd.RequestTooLarge": return "request larger than \(p.limit ?? 0) bytes"
        case "io.macvtapd.RequestTimeout": return "request timed out: \(p.reason ?? "")"
        case "io.macvtapd.Busy": return "the daemon already serves \(p.limit ?? 0) control connections"
        case "io.macvtapd.PermissionDenied": return "permission denied: \(p.reason ?? "")"
        case "io.macvtapd.Stopping":
            return "the daemon stopped (or is restarting) before it finished; what it did so far stays; "
                + "run the command again once it is back"
        case "org.varlink.service.MethodNotFound": return "unknown method \(p.method ?? "")"
        case "org.varlink.service.InvalidParameter": return "invalid parameter \(p.parameter ?? "")"
        case "org.varlink.service.MethodNotImplemented": return "not implemented: \(p.method ?? "")"
        case "org.varlink.service.InterfaceNotFound": return "unknown interface \(p.interface ?? "")"
        default: return "\(error)"
        }
    }
}
