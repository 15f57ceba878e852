import Glibc

/// Why the guest fixture failed; every case carries what a failing test needs to see why.
public enum GuestVMError: Error, Sendable, CustomStringConvertible {
    case buildFailed(script: String, status: Int32, output: String)
    case system(operation: String, errno: Int32)
    /// QEMU exited before the awaited line; its output and the console's last lines.
    case exited(status: Int32, qemuOutput: String, consoleTail: [String])
    case timeout(waitingFor: String, after: Duration, consoleTail: [String])
    case unknownInterface(String)
    case cancelled

    public var description: String {
        switch self {
        case .buildFailed(let script, let status, let output):
            return "building the guest image with \(script) failed (exit \(status)):\n\(output)"
        case .system(let operation, let code):
            return "guest VM: \(operation) failed: \(String(cString: strerror(code)))"
        case .exited(let status, let qemuOutput, let consoleTail):
            return "guest QEMU exited (status \(status)); QEMU said:\n\(qemuOutput)\n"
                + Self.render(consoleTail)
        case .timeout(let what, let after, let consoleTail):
            return "guest VM: no \(what) within \(after)\n" + Self.render(consoleTail)
        case .unknownInterface(let name):
            return "guest VM: the guest reported no interface for \(name)"
        case .cancelled:
            return "guest VM: wait cancelled"
        }
    }

    private static func render(_ tail: [String]) -> String {
        tail.isEmpty ? "(console empty)" : "console (last lines):\n" + tail.map { "  | " + $0 }.joined(separator: "\n")
    }
}
