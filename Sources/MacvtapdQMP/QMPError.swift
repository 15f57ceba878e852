/// Everything a QMP operation can fail with. Each case names the command (or socket) involved so
/// that a status line or log entry is actionable on its own.
public enum QMPError: Error, Hashable, Sendable, CustomStringConvertible {
    /// socket(2)/connect(2) on the monitor socket failed (ENOENT: VM not started, ECONNREFUSED:
    /// QEMU gone, EAGAIN-like: another client holds the single-client monitor).
    case connectFailed(path: String, errno: Int32)
    /// The peer sent nothing that looks like a QMP greeting in time.
    case greetingTimeout(path: String, after: Duration)
    /// The first line was JSON but not `{"QMP": ...}`.
    case invalidGreeting(path: String, line: String)
    /// QEMU answered with `{"error": {"class": ..., "desc": ...}}`.
    case commandFailed(command: String, class: String, description: String)
    /// No reply within the command's timeout; the connection stays usable and a late reply is dropped.
    case timeout(command: String, after: Duration)
    /// The connection ended (peer closed, protocol violation, local close) before the reply came.
    case connectionClosed(command: String, reason: String)
    /// Writing the command to the socket failed.
    case sendFailed(command: String, errno: Int32)
    /// The reply arrived but did not have the shape the typed operation expects.
    case unexpectedReply(command: String, reply: String)
    /// A value passed to a typed operation cannot be sent (e.g. a path too long for sockaddr_un).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .connectFailed(let path, let code):
            return "QMP connect to \(path) failed: \(errnoDescription(code))"
        case .greetingTimeout(let path, let after):
            return "QMP \(path): no greeting within \(after)"
        case .invalidGreeting(let path, let line):
            return "QMP \(path): first message is not a QMP greeting: \(line.prefix(200))"
        case .commandFailed(let command, let errorClass, let description):
            return "QMP \(command) failed: \(errorClass): \(description)"
        case .timeout(let command, let after):
            return "QMP \(command): no reply within \(after)"
        case .connectionClosed(let command, let reason):
            return "QMP \(command): connection closed: \(reason)"
        case .sendFailed(let command, let code):
            return "QMP \(command): send failed: \(errnoDescription(code))"
        case .unexpectedReply(let command, let reply):
            return "QMP \(command): unexpected reply \(reply.prefix(200))"
        case .invalidArgument(let message):
            return "QMP: invalid argument: \(message)"
        }
    }

    /// The QEMU error class when QEMU refused the command (`DeviceNotFound`, `GenericError`, ...).
    public var qemuErrorClass: String? {
        if case .commandFailed(_, let errorClass, _) = self { return errorClass }
        return nil
    }
}
