/// The status of one binding, as `macvtapd status` and the JSON status file show it.
public struct BindingStatus: Codable, Hashable, Sendable {
    public var vm: String
    public var nic: String
    public var phase: Phase
    /// Stable CamelCase code (`HostMissing`, `BackendStale`, ...).
    public var reason: String
    public var message: String
    /// When the binding entered its current phase (seconds since the Unix epoch).
    public var since: Double
    /// Attempts made in the current phase; reset when the phase changes.
    public var attempts: Int
    public var lastError: String?
    /// The host interface the binding resolves to.
    public var lower: String?
    public var macvtap: String?
    public var hub: Int?
    /// Guest carrier as macvtapd last set it (QEMU cannot be asked); nil when never set.
    public var guestLink: Bool?
    /// The VM's QMP socket, kept so a binding removed from the config can still be torn down.
    public var qmp: String?

    public init(
        vm: String, nic: String, phase: Phase, reason: String, message: String, since: Double, attempts: Int = 0,
        lastError: String? = nil, lower: String? = nil, macvtap: String? = nil, hub: Int? = nil,
        guestLink: Bool? = nil, qmp: String? = nil
    ) {
        self.vm = vm
        self.nic = nic
        self.phase = phase
        self.reason = reason
        self.message = message
        self.since = since
        self.attempts = attempts
        self.lastError = lastError
        self.lower = lower
        self.macvtap = macvtap
        self.hub = hub
        self.guestLink = guestLink
        self.qmp = qmp
    }

    public var key: BindingKey { BindingKey(vm: vm, nic: nic) }

    enum CodingKeys: String, CodingKey {
        case vm, nic, phase, reason, message, since, attempts, lower, macvtap, hub, qmp
        case lastError = "last_error"
        case guestLink = "guest_link"
    }
}

/// The whole status file: written atomically after every change, read by `macvtapd status`.
public struct StatusDocument: Codable, Hashable, Sendable {
    public struct ConfigStatus: Codable, Hashable, Sendable {
        public var path: String
        public var valid: Bool
        /// Diagnostics of the last load that failed; the last good desired state stays in force.
        public var errors: [String]

        public init(path: String, valid: Bool, errors: [String] = []) {
            self.path = path
            self.valid = valid
            self.errors = errors
        }
    }

    /// The format this macvtapd writes and reads; a reader refuses a newer one instead of misreading it.
    public static let currentFormatVersion = 1

    public var formatVersion: Int
    public var updated: Double
    public var config: ConfigStatus?
    public var bindings: [BindingStatus]

    public init(updated: Double, config: ConfigStatus?, bindings: [BindingStatus]) {
        self.formatVersion = Self.currentFormatVersion
        self.updated = updated
        self.config = config
        self.bindings = bindings.sorted { $0.key < $1.key }
    }

    public func binding(_ key: BindingKey) -> BindingStatus? { bindings.first { $0.key == key } }

    enum CodingKeys: String, CodingKey {
        case formatVersion = "format_version"
        case updated, config, bindings
    }
}
