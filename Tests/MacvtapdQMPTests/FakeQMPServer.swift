import CMacvtapd
import Foundation
import Synchronization

@testable import MacvtapdQMP

/// An in-process QMP peer on a unix socket, for faults a real QEMU does not produce (garbage,
/// hangs, half replies, endless lines). Each accepted connection runs `handler` on its own thread.
final class FakeQMPServer: Sendable {
    let directory: String
    let path: String
    private let listener: Int32
    private let accepted = Mutex(0)

    static let greeting =
        #"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"#

    init(handler: @escaping @Sendable (_ peer: FakeQMPPeer, _ connectionIndex: Int) -> Void) throws {
        directory = NSTemporaryDirectory() + "macvtapd-fakeqmp-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/qmp.sock"
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0, listen(fd, 8) == 0 else { throw QMPError.invalidArgument("fake server bind \(path)") }
        listener = fd
        Thread.detachNewThread { [self] in
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 { return }
                // Child processes of parallel tests must not keep this connection open.
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                let index = self.accepted.withLock { count in
                    defer { count += 1 }
                    return count
                }
                Thread.detachNewThread {
                    let peer = FakeQMPPeer(fd: client)
                    handler(peer, index)
                    peer.close()
                }
            }
        }
    }

    var connectionCount: Int { accepted.withLock { $0 } }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// The server side of one fake connection: blocking line I/O for the handler thread.
final class FakeQMPPeer {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var isClosed = false

    init(fd: Int32) { self.fd = fd }

    func send(_ text: String) {
        sendRaw(Array((text + "\r\n").utf8))
    }

    func sendRaw(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes {
                Foundation.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if sent <= 0 { return }
            offset += sent
        }
    }

    /// `text` and its CR LF with `fd` attached (SCM_RIGHTS) to its first byte, as QEMU never does:
    /// what a hostile monitor could send back.
    func send(_ text: String, attaching fd: Int32) {
        let bytes = Array((text + "\r\n").utf8)
        let sent = bytes.withUnsafeBytes { cmacvtapd_send_with_fd(self.fd, $0.baseAddress, $0.count, fd) }
        if sent > 0, sent < bytes.count { sendRaw(Array(bytes[sent...])) }
    }

    /// The next line from the client, or nil on EOF / after `timeout`.
    func readLine(timeout: Duration = .seconds(5)) -> String? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeFirst(newline + 1)
                return line
            }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { return nil }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let millis = Int32(
                remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000)
            guard poll(&poller, 1, max(1, millis)) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { return nil }
            buffer += chunk[0..<count]
        }
    }

    /// The next command as JSON (`execute`, `arguments`), or nil on EOF.
    func readCommand(timeout: Duration = .seconds(5)) -> JSONValue? {
        guard let line = readLine(timeout: timeout) else { return nil }
        return try? JSONReader.parse(Array(line.utf8))
    }

    /// Greeting plus a successful `qmp_capabilities`, as every well-behaved session starts.
    @discardableResult
    func handshake() -> Bool {
        send(FakeQMPServer.greeting)
        guard let command = readCommand(), command["execute"] == "qmp_capabilities" else { return false }
        reply(to: command, return: .object([:]))
        return true
    }

    /// A reply as QEMU writes it: with the command's `"id"` only if the command carried one.
    func reply(to command: JSONValue, return value: JSONValue) {
        send(#"{"return": \#(value)\#(Self.idMember(of: command))}"#)
    }

    func replyError(to command: JSONValue, class errorClass: String, description: String) {
        let error: JSONValue = ["class": .string(errorClass), "desc": .string(description)]
        send(#"{"error": \#(error)\#(Self.idMember(of: command))}"#)
    }

    static func idMember(of command: JSONValue) -> String {
        command["id"].map { #", "id": \#($0)"# } ?? ""
    }

    /// True when the client closed its end (read returns EOF) within `timeout`.
    func waitForClientClose(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 20) > 0 else { continue }
            var byte: UInt8 = 0
            if recv(fd, &byte, 1, 0) <= 0 { return true }
        }
        return false
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        Foundation.close(fd)
    }
}
