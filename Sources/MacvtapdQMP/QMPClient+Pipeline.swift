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
