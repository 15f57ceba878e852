/// A connection to one QEMU QMP monitor: commands matched to replies by order, events as a stream.
///
/// Safe to share between tasks; concurrent commands are written one at a time and each caller
/// gets its own reply. A client is single-use: when the connection ends (peer closed, protocol
/// violation, `close()`), every waiting command fails with `QMPError.connectionClosed`, the event
/// stream finishes, and the caller connects again with `QMPClient.connect`.
public final class QMPClient: Sendable {
    public struct Configuration: Sendable {
        /// How long `connect` waits for the greeting and the `qmp_capabilities` reply.
        public var connectTimeout: Duration
        /// Default timeout of each command; `execute(timeout:)` overrides it.
        public var commandTimeout: Duration
        /// A peer that sends a longer line without a newline is disconnected.
        public var maximumLineLength: Int
        /// Events not yet consumed beyond this count are dropped, oldest first.
        public var eventBufferLimit: Int

        public init(
            connectTimeout: Duration = .seconds(5), commandTimeout: Duration = .seconds(10),
            maximumLineLength: Int = 1 << 20, eventBufferLimit: Int = 1024
        ) {
            self.connectTimeout = connectTimeout
            self.commandTimeout = commandTimeout
            self.maximumLineLength = maximumLineLength
            self.eventBufferLimit = eventBufferLimit
        }
    }

    public let path: String
    public let greeting: QMPGreeting
    public let configuration: Configuration
    let connection: QMPConnection

    /// Every event of this connection, in arrival order. One consumer; finishes when the connection ends.
    public var events: AsyncStream<QMPEvent> { connection.events }

    /// Why the connection ended, or nil while it is open.
    public var closeReason: String? { connection.failureReason }
    public var isConnected: Bool { closeReason == nil }

    private init(path: String, greeting: QMPGreeting, configuration: Configuration, connection: QMPConnection) {
        self.path = path
        self.greeting = greeting
        self.configuration = configuration
        self.connection = connection
    }

    /// Connects, reads the greeting and leaves capabilities negotiation mode. `qmp_capabilities`
    /// is written at once, without waiting for the greeting: QEMU greets a client as it accepts
    /// it and reads its commands afterwards, so the greeting and the reply arrive in one round
    /// trip instead of two. A greeting that is not a QMP greeting still fails the connect.
    public static func connect(to path: String, configuration: Configuration = Configuration()) async throws
        -> QMPClient
    {
        let connection = try QMPConnection(
            path: path, maximumLineLength: configuration.maximumLineLength,
            eventBufferLimit: configuration.eventBufferLimit)
        // Twice the connect timeout: a missing greeting must be reported as such, first.
        let capabilities = Task {
            try await connection.execute(
                command: "qmp_capabilities", arguments: nil, passing: nil, timeout: configuration.connectTimeout * 2)
        }
        do {
            let message: JSONValue
            do {
                message = try await connection.awaitGreeting(timeout: configuration.connectTimeout)
            } catch QMPError.timeout {
                throw QMPError.greetingTimeout(path: path, after: configuration.connectTimeout)
            }
            guard let greeting = QMPGreeting(message: message) else {
                throw QMPError.invalidGreeting(path: path, line: "\(message)")
            }
            _ = try await capabilities.value
            return QMPClient(path: path, greeting: greeting, configuration: configuration, connection: connection)
        } catch {
            capabilities.cancel()
            await connection.close()
            throw error
        }
    }

    /// Sends `command` and returns its `return` value. `fd`, if given, travels with the command
    /// bytes as SCM_RIGHTS (for `getfd`/`add-fd`); the caller keeps its own copy and closes it.
    ///
    /// Throws `QMPError` (`commandFailed` for QEMU's error replies, `timeout`, `connectionClosed`,
    /// `sendFailed`) or `CancellationError` when the calling task is cancelled.
    @discardableResult
    public func execute(
        _ command: String, arguments: JSONValue? = nil, passing fd: Int32? = nil, timeout: Duration? = nil
    ) async throws -> JSONValue {
        try await connection.execute(
            command: command, arguments: arguments, passing: fd, timeout: timeout ?? configuration.commandTimeout)
    }

    /// `execute` of a command spelled as a `QMPCommand`.
    @discardableResult
    public func execute(_ command: QMPCommand, timeout: Duration? = nil) async throws -> JSONValue {
        try await execute(command.name, arguments: command.arguments, passing: command.fd, timeout: timeout)
    }

    /// Ends the connection: waiting commands fail, the event stream finishes, the socket is closed
    /// when this returns.
    public func close() async {
        await connection.close()
    }

    deinit {
        connection.shutdown()
    }
}
