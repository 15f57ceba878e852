/// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESUME`, `DEVICE_DELETED`, `NIC_RX_FILTER_CHANGED`, ...).
public struct QMPEvent: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    /// The event's `data` member; `.object([:])` when QEMU sent none.
    public let data: JSONValue
    /// QEMU's wall-clock time of the event, microseconds since the Unix epoch.
    public let timestampMicroseconds: Int64?

    public init(name: String, data: JSONValue = .object([:]), timestampMicroseconds: Int64? = nil) {
        self.name = name
        self.data = data
        self.timestampMicroseconds = timestampMicroseconds
    }

    init?(message: JSONValue) {
        guard let name = message["event"]?.stringValue else { return nil }
        self.name = name
        self.data = message["data"] ?? .object([:])
        if let seconds = message["timestamp"]?["seconds"]?.intValue,
            let micros = message["timestamp"]?["microseconds"]?.intValue
        {
            timestampMicroseconds = seconds &* 1_000_000 &+ micros
        } else {
            timestampMicroseconds = nil
        }
    }

    /// The device an event is about: `data.device` (DEVICE_DELETED) or `data.name`
    /// (NIC_RX_FILTER_CHANGED); nil for VM-wide events such as SHUTDOWN or STOP.
    public var deviceID: String? { data["device"]?.stringValue ?? data["name"]?.stringValue }

    public var description: String { "\(name) \(data)" }
}

/// The `{"QMP": {"version": ..., "capabilities": [...]}}` line a monitor sends on connect.
public struct QMPGreeting: Hashable, Sendable {
    public let major: Int
    public let minor: Int
    public let micro: Int
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7+deb12u18`.
    public let package: String
    public let capabilities: [String]
    public let raw: JSONValue

    package init?(message: JSONValue) {
        guard let qmp = message["QMP"], qmp.objectValue != nil else { return nil }
        let qemu = qmp["version"]?["qemu"]
        major = Int(qemu?["major"]?.intValue ?? 0)
        minor = Int(qemu?["minor"]?.intValue ?? 0)
        micro = Int(qemu?["micro"]?.intValue ?? 0)
        package = qmp["version"]?["package"]?.stringValue ?? ""
        capabilities = qmp["capabilities"]?.arrayValue?.compactMap(\.stringValue) ?? []
        raw = message
    }

    public var version: String { "\(major).\(minor).\(micro)" }
}
