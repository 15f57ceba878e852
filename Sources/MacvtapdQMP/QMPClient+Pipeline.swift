/// One command of a pipeline: written without waiting for the reply of the one before.
public struct QMPCommand: Sendable {
    public var name: String
    public var arguments: JSONValue?
    /// Sent with SCM_RIGHTS on this command's own sendmsg (for `getfd`); the caller keeps its copy.
    public var fd: Int32?

    public init(_ name: String, arguments: JSONValue? = nil, passing fd: Int32? = nil) {
        self.name = name
        self.arguments = arguments
        self.fd = fd
    }

    // The commands macvtapd sends, each spelled once for `execute` and `executePipelined` alike.

    /// `getfd`: `fd` travels with the command (QEMU gets its own copy) and is named `name`.
    public static func getfd(name: String, fd: Int32) -> QMPCommand {
        QMPCommand("getfd", arguments: ["fdname": .string(name)], passing: fd)
    }

    /// `netdev_add type=tap id=<id> fd=<fdName>`; vhost is off, QEMU's default (not sent: QEMU
    /// reads its monitor a byte at a time).
    public static func addTapNetdev(id: String, fdName: String) -> QMPCommand {
        QMPCommand("netdev_add", arguments: ["type": "tap", "id": .string(id), "fd": .string(fdName)])
    }

    /// `netdev_add type=hubport id=<id> hubid=<hubID> [netdev=<netdev>]`.
    public static func addHubPort(id: String, hubID: Int, netdev: String?) -> QMPCommand {
        var arguments: [String: JSONValue] = ["type": "hubport", "id": .string(id), "hubid": .int(Int64(hubID))]
        if let netdev { arguments["netdev"] = .string(netdev) }
        return QMPCommand("netdev_add", arguments: .object(arguments))
    }

    /// `netdev_del`.
    public static func deleteNetdev(id: String) -> QMPCommand {
        QMPCommand("netdev_del", arguments: ["id": .string(id)])
    }

    /// `set_link`.
    public static func setLink(name: String, up: Bool) -> QMPCommand {
        QMPCommand("set_link", arguments: ["name": .string(name), "up": .bool(up)])
    }

    /// `announce-self`.
    public static func announceSelf(_ parameters: AnnounceParameters) -> QMPCommand {
        QMPCommand("announce-self", arguments: parameters.arguments)
    }
}

extension QMPClient {
    /// Writes `commands` back to back on the monitor and returns each one's reply, in order. QEMU
    /// reads a monitor's commands in order and answers each before running the next, so a command
    /// may use what an earlier one made (a `getfd` name, a netdev id) and the whole exchange costs
    /// about one round trip. No other caller's command is written between them. A refused
    /// command does not stop the later ones: each has its own result, and the caller decides what
    /// a failure means for the rest (undoing what succeeded, for example).
    ///
    /// Throws only `CancellationError`; a closed connection, a timeout or a failed write is every
    /// affected command's result.
    public func executePipelined(_ commands: [QMPCommand], timeout: Duration? = nil) async throws
        -> [Result<JSONValue, QMPError>]
    {
        try await connection.executePipeline(
            commands.map { QMPConnection.Step(command: $0.name, arguments: $0.arguments, fd: $0.fd) },
            timeout: timeout ?? configuration.commandTimeout)
    }
}
