import Glibc
import MacvtapdTestSupport
import Synchronization

struct GuestTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The few QMP exchanges these tests need, over a plain unix socket, so the guest harness does not
/// depend on MacvtapdQMP (the real client): greeting, `qmp_capabilities`, then commands. Each
/// exchange waits for QEMU (a loaded TCG guest answers late) on a thread of its own.
final class RawQMP: Sendable {
    private let fd: Int32
    private let buffer = Mutex<[UInt8]>([])

    static func open(path: String) async throws -> RawQMP {
        try await offPool { try RawQMP(path: path) }
    }

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw GuestTestFailure("QMP socket: \(String(cString: strerror(errno)))") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8.prefix(raw.count - 1))
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let code = errno
            close(fd)
            throw GuestTestFailure("QMP connect \(path): \(String(cString: strerror(code)))")
        }
        let greeting = try readLine()
        guard greeting.contains("\"QMP\"") else {
            throw GuestTestFailure("QMP \(path): unexpected greeting \(greeting)")
        }
        _ = try executeBlocking(#"{"execute": "qmp_capabilities"}"#)
    }

    deinit { close(fd) }

    /// Sends one command and returns its `return` line; events read meanwhile are skipped.
    @discardableResult
    func execute(_ command: String) async throws -> String {
        try await offPool { try self.executeBlocking(command) }
    }

    private func executeBlocking(_ command: String) throws -> String {
        let bytes = Array((command + "\n").utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else {
            throw GuestTestFailure("QMP write \(command): \(String(cString: strerror(errno)))")
        }
        while true {
            let line = try readLine()
            if line.hasPrefix(#"{"return""#) { return line }
            if line.hasPrefix(#"{"error""#) { throw GuestTestFailure("QMP \(command) failed: \(line)") }
        }
    }

    func setLink(_ nic: String, up: Bool) async throws {
        try await execute(#"{"execute": "set_link", "arguments": {"name": "\#(nic)", "up": \#(up)}}"#)
    }

    /// Puts a UDP socket backend on a hub, as macvtapd puts a tap there: the netdev, then its hubport.
    func attachSocketBackend(_ id: String, hub: Int, udpPort: UInt16) async throws {
        let backend = #""type": "socket", "id": "\#(id)", "udp": "127.0.0.1:\#(udpPort)", "localaddr": "127.0.0.1:0""#
        try await execute(#"{"execute": "netdev_add", "arguments": {\#(backend)}}"#)
        let port = #""type": "hubport", "id": "\#(id).port", "hubid": \#(hub), "netdev": "\#(id)""#
        try await execute(#"{"execute": "netdev_add", "arguments": {\#(port)}}"#)
    }

    /// The swap's first half: hubport first, so the hub never forwards to a half-removed backend.
    func detachBackend(_ id: String) async throws {
        try await execute(#"{"execute": "netdev_del", "arguments": {"id": "\#(id).port"}}"#)
        try await execute(#"{"execute": "netdev_del", "arguments": {"id": "\#(id)"}}"#)
    }

    private func readLine() throws -> String {
        while true {
            let line = buffer.withLock { buffer -> String? in
                guard let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
                defer { buffer.removeSubrange(...newline) }
                return String(decoding: buffer[..<newline], as: UTF8.self)
            }
            if let line { return line }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else {
                throw GuestTestFailure("QMP read: \(count == 0 ? "closed by QEMU" : String(cString: strerror(errno)))")
            }
            buffer.withLock { $0.append(contentsOf: chunk[..<count]) }
        }
    }
}
