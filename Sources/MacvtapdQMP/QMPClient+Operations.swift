import MacvtapdCore

/// `query-status`: whether the guest runs (frames only move while it does).
public struct VMStatus: Hashable, Sendable {
    public let running: Bool
    /// `running`, `paused`, `prelaunch`, `shutdown`, `inmigrate`, ...
    public let status: String

    public init(running: Bool, status: String) {
        self.running = running
        self.status = status
    }
}

/// A child of `/machine/peripheral`: a `-device` or `device_add` with an id.
public struct PeripheralDevice: Hashable, Sendable {
    public let id: String
    /// The QOM type inside `child<...>`, e.g. `virtio-net-pci`.
    public let type: String

    public init(id: String, type: String) {
        self.id = id
        self.type = type
    }
}

/// One NIC's entry of `query-rx-filter`.
public struct RxFilter: Hashable, Sendable {
    public let name: String
    /// The MAC the guest driver programmed (may differ from the `-device mac=`).
    public let mainMAC: MACAddress?
    public let promiscuous: Bool
    public let raw: JSONValue

    public init(name: String, mainMAC: MACAddress?, promiscuous: Bool, raw: JSONValue = .null) {
        self.name = name
        self.mainMAC = mainMAC
        self.promiscuous = promiscuous
        self.raw = raw
    }
}

/// `announce-self` timing; QEMU 7.2 requires all four (defaults are QEMU's migration defaults).
public struct AnnounceParameters: Hashable, Sendable {
    public var initial: Duration
    public var max: Duration
    public var rounds: Int
    public var step: Duration
    /// Only these NICs (QEMU device ids); nil announces every NIC of the VM.
    public var interfaces: [String]?
    /// A named announce timer: a new announce with the same id replaces that one only, so
    /// announces for different NICs do not cut each other's rounds short.
    public var id: String?

    public init(
        initial: Duration = .milliseconds(50), max: Duration = .milliseconds(550), rounds: Int = 5,
        step: Duration = .milliseconds(100), interfaces: [String]? = nil, id: String? = nil
    ) {
        self.initial = initial
        self.max = max
        self.rounds = rounds
        self.step = step
        self.interfaces = interfaces
        self.id = id
    }
}

extension AnnounceParameters {
    /// The `announce-self` arguments.
    public var arguments: JSONValue {
        func milliseconds(_ duration: Duration) -> JSONValue {
            let (seconds, attoseconds) = duration.components
            return .int(seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        }
        var arguments: [String: JSONValue] = [
            "initial": milliseconds(initial), "max": milliseconds(max), "rounds": .int(Int64(rounds)),
            "step": milliseconds(step),
        ]
        if let interfaces { arguments["interfaces"] = .array(interfaces.map { .string($0) }) }
        if let id { arguments["id"] = .string(id) }
        return .object(arguments)
    }
}

extension QMPClient {
    // MARK: File descriptors

    /// `getfd`: hands `fd` to QEMU under `name` (QEMU gets its own copy; the caller still owns `fd`).
    public func getfd(name: String, fd: Int32) async throws {
        try await execute(.getfd(name: name, fd: fd))
    }

    /// `closefd`: drops a named fd QEMU holds that no netdev took.
    public func closefd(name: String) async throws {
        try await execute("closefd", arguments: ["fdname": .string(name)])
    }

    // MARK: Netdevs

    /// `netdev_add type=tap id=<id> fd=<fdName>`: a tap backend on an fd passed with `getfd`.
    public func addTapNetdev(id: String, fdName: String) async throws {
        try await execute(.addTapNetdev(id: id, fdName: fdName))
    }

    /// `getfd` + `netdev_add` tap; if the netdev is refused, the named fd is closed in QEMU again
    /// so that a failed attach does not leave a descriptor behind in the VM process.
    public func addTapNetdev(id: String, fd: Int32, fdName: String) async throws {
        try await getfd(name: fdName, fd: fd)
        do {
            try await addTapNetdev(id: id, fdName: fdName)
        } catch {
            // QEMU removes the name when netdev_add consumed the fd; "not found" is then expected.
            try? await closefd(name: fdName)
            throw error
        }
    }

    /// `netdev_add type=hubport id=<id> hubid=<hubID> [netdev=<netdev>]`.
    public func addHubPort(id: String, hubID: Int, netdev: String?) async throws {
        try await execute(.addHubPort(id: id, hubID: hubID, netdev: netdev))
    }

    /// `netdev_del`. A missing id fails with class `DeviceNotFound`.
    public func deleteNetdev(id: String) async throws {
        try await execute(.deleteNetdev(id: id))
    }

    /// `set_link`: the guest NIC's carrier. QEMU does not report it back; callers track what they set.
    public func setLink(name: String, up: Bool) async throws {
        try await execute(.setLink(name: name, up: up))
    }

    // MARK: QOM and devices

    public func qomGet(path: String, property: String) async throws -> JSONValue {
        try await execute("qom-get", arguments: ["path": .string(path), "property": .string(property)])
    }

    /// `qom-list`: (name, type) of the properties and children at `path`.
    public func qomList(path: String) async throws -> [(name: String, type: String)] {
        let reply = try await execute("qom-list", arguments: ["path": .string(path)])
        guard let entries = reply.arrayValue else {
            throw QMPError.unexpectedReply(command: "qom-list", reply: "\(reply)")
        }
        return entries.compactMap { entry in
            guard let name = entry["name"]?.stringValue, let type = entry["type"]?.stringValue else { return nil }
            return (name, type)
        }
    }

    /// The devices with an id: children of `/machine/peripheral` (type `child<T>`).
    public func peripheralDevices() async throws -> [PeripheralDevice] {
        try await qomList(path: "/machine/peripheral").compactMap { entry in
            guard entry.type.hasPrefix("child<"), entry.type.hasSuffix(">") else { return nil }
            return PeripheralDevice(id: entry.name, type: String(entry.type.dropFirst(6).dropLast()))
        }.sorted { $0.id < $1.id }
    }

    /// The `-device ... mac=` of a NIC (not the guest-programmed one; see `queryRxFilter`).
    public func nicMAC(id: String) async throws -> MACAddress {
        let reply = try await qomGet(path: "/machine/peripheral/\(id)", property: "mac")
        guard let text = reply.stringValue, let mac = MACAddress(text) else {
            throw QMPError.unexpectedReply(command: "qom-get \(id).mac", reply: "\(reply)")
        }
        return mac
    }

    /// `info qtree`, reduced to the `-device mac=` of every NIC with an id (see `DeviceTree`): one
    /// command for all NICs. A NIC missing from the result can still be read with `nicMAC(id:)`.
    public func deviceMACs() async throws -> [String: MACAddress] {
        DeviceTree.deviceMACs(parsing: try await humanMonitorCommand("info qtree"))
    }

    /// The id of the NIC's peer netdev (its placeholder hubport), nil when the NIC has none.
    public func nicNetdev(id: String) async throws -> String? {
        let reply = try await qomGet(path: "/machine/peripheral/\(id)", property: "netdev")
        guard let text = reply.stringValue else {
            throw QMPError.unexpectedReply(command: "qom-get \(id).netdev", reply: "\(reply)")
        }
        return text.isEmpty ? nil : text
    }

    // MARK: VM state and network

    public func queryStatus() async throws -> VMStatus {
        let reply = try await execute("query-status")
        guard let running = reply["running"]?.boolValue, let status = reply["status"]?.stringValue else {
            throw QMPError.unexpectedReply(command: "query-status", reply: "\(reply)")
        }
        return VMStatus(running: running, status: status)
    }

    /// `announce-self`: gratuitous ARPs from the guest (virtio announce) and RARPs from QEMU, so
    /// switches learn the NIC's new path right after a backend swap.
    public func announceSelf(_ parameters: AnnounceParameters = AnnounceParameters()) async throws {
        try await execute(.announceSelf(parameters))
    }

    /// `query-rx-filter` for one NIC. Also re-arms that NIC's `NIC_RX_FILTER_CHANGED` event.
    public func queryRxFilter(name: String) async throws -> RxFilter {
        let reply = try await execute("query-rx-filter", arguments: ["name": .string(name)])
        guard let entry = reply.arrayValue?.first, let entryName = entry["name"]?.stringValue else {
            throw QMPError.unexpectedReply(command: "query-rx-filter \(name)", reply: "\(reply)")
        }
        return RxFilter(
            name: entryName, mainMAC: entry["main-mac"]?.stringValue.flatMap { MACAddress($0) },
            promiscuous: entry["promiscuous"]?.boolValue ?? false, raw: entry)
    }

    /// `human-monitor-command`: HMP text output.
    public func humanMonitorCommand(_ commandLine: String) async throws -> String {
        let reply = try await execute("human-monitor-command", arguments: ["command-line": .string(commandLine)])
        guard let text = reply.stringValue else {
            throw QMPError.unexpectedReply(command: "human-monitor-command \(commandLine)", reply: "\(reply)")
        }
        return text
    }

    /// `info network`, parsed.
    public func networkInfo() async throws -> NetworkInfo {
        try NetworkInfo(parsing: try await humanMonitorCommand("info network"))
    }
}
