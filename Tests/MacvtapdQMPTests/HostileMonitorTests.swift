import Foundation
import Testing

@testable import MacvtapdQMP

/// What a hostile QEMU could send over QMP that FaultTests does not cover: file descriptors
/// attached to its replies, and forged or malformed messages at the framing level
/// (docs/security.md lists every case and its test).
@Suite struct HostileMonitorTests {
    /// The identity of every open descriptor of this process that refers to `device`/`inode`.
    static func openDescriptors(of info: stat) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return entries.compactMap { Int32($0) }.filter { fd in
            var other = stat()
            return fstat(fd, &other) == 0 && other.st_dev == info.st_dev && other.st_ino == info.st_ino
        }
    }

    /// The reader uses read(2): descriptors a peer attaches (SCM_RIGHTS) are discarded by the
    /// kernel and never become descriptors of the daemon, however many it sends; the replies
    /// they ride on are still delivered.
    @Test func descriptorsAttachedByTheMonitorNeverReachTheDaemon() async throws {
        let path = NSTemporaryDirectory() + "macvtapd-hostile-fd-" + UUID().uuidString.prefix(8)
        let file = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        #expect(file >= 0)
        defer { unlink(path) }
        var identity = stat()
        #expect(fstat(file, &identity) == 0)
        let server = try FakeQMPServer(handler: { peer, _ in
            peer.send(FakeQMPServer.greeting, attaching: file)
            while let command = peer.readCommand() {
                for n in 0..<20 { peer.send(#"{"event": "FD\#(n)"}"#, attaching: file) }
                peer.send(#"{"return": {}\#(FakeQMPPeer.idMember(of: command))}"#, attaching: file)
            }
        })
        defer { server.stop() }
        let client = try await QMPClient.connect(to: server.path, configuration: FaultTests.fast)
        for _ in 0..<10 { try await client.execute("query-status") }
        // Only the test's own descriptor refers to the file: none of the 210 it attached arrived.
        close(file)
        #expect(Self.openDescriptors(of: identity) == [])
        await client.close()
    }

    /// A line cut anywhere by the socket reads the same as one read whole.
    @Test func framingDoesNotDependOnHowTheStreamIsCut() {
        let stream = Array(
            (FakeQMPServer.greeting + "\r\n" + #"{"return": {}, "id": 1}"# + "\n\n\r\n"
                + #"{"event": "STOP"}"# + "\r\n").utf8)
        func lines(chunk: Int) -> [String] {
            var splitter = QMPLineSplitter(maximumLineLength: 1024)
            var seen: [String] = []
            var offset = 0
            while offset < stream.count {
                let end = min(offset + chunk, stream.count)
                let fatal = splitter.append(stream[offset..<end]) { line in
                    seen.append(String(decoding: line, as: UTF8.self))
                    return nil
                }
                #expect(fatal == nil)
                offset = end
            }
            return seen
        }
        let whole = lines(chunk: stream.count)
        #expect(whole.count == 3, "blank lines and a lone CR are no messages: \(whole)")
        for chunk in [1, 2, 3, 7, 64] { #expect(lines(chunk: chunk) == whole) }
    }

    /// A partial line past the limit is a reason to drop the connection, however it arrives.
    @Test func aPartialLinePastTheLimitIsFatal() {
        var splitter = QMPLineSplitter(maximumLineLength: 16)
        let atTheLimit = splitter.append(Array(repeating: UInt8(ascii: "x"), count: 16)) { _ in nil }
        #expect(atTheLimit == nil)
        let pastIt = splitter.append([UInt8(ascii: "x")]) { _ in nil }
        #expect(pastIt != nil)
    }

    /// A reader stays with its VM for the daemon's life: the room a reply took (a 25-NIC
    /// `info qtree` is 78 KB), long or short, goes back once the reply was handed on.
    @Test func aLongReplysRoomIsReleased() {
        var splitter = QMPLineSplitter(maximumLineLength: 1 << 20)
        var seen = 0
        let reply = Array(repeating: UInt8(ascii: "x"), count: 100_000) + [0x0A]
        for offset in stride(from: 0, to: reply.count, by: 16 * 1024) {
            _ = splitter.append(reply[offset..<min(offset + 16 * 1024, reply.count)]) { line in
                seen += line.count
                return nil
            }
        }
        #expect(seen == 100_000)
        #expect(splitter.bufferCapacity == 0, "kept \(splitter.bufferCapacity) bytes")

        var lines: [String] = []
        _ = splitter.append(Array("{\"return\": {}, \"id\": 1}\n{\"ret".utf8)) { line in
            lines.append(String(decoding: line, as: UTF8.self))
            return nil
        }
        #expect(splitter.bufferCapacity > 0)
        _ = splitter.append(Array("urn\": {}, \"id\": 2}\r\n".utf8)) { line in
            lines.append(String(decoding: line, as: UTF8.self))
            return nil
        }
        #expect(lines == [#"{"return": {}, "id": 1}"#, #"{"return": {}, "id": 2}"#])
        #expect(splitter.bufferCapacity == 0, "kept \(splitter.bufferCapacity) bytes after a short reply")
    }

    /// Replies are matched to commands by order and macvtapd's commands carry no `"id"`, which QEMU
    /// echoes only when a command has one: a reply with any id (the greeting's 0, a number, a
    /// string, null) and a message with neither `return` nor `error` answer nothing of ours and
    /// are ignored, never taken as the next command's answer.
    @Test func forgedRepliesAreIgnored() {
        for line in [
            #"{"return": {}, "id": 0}"#, #"{"return": {}, "id": 3}"#, #"{"id": "3", "return": 1}"#,
            #"{"error": {"class": "GenericError", "desc": "x"}, "id": null}"#, #"{"id": 3}"#, #"{"QMP": {}}"#,
        ] {
            #expect(QMPInbound.decode(Array(line.utf8)[...], greeted: true) == .ignored, "\(line)")
        }
        #expect(QMPInbound.decode(Array(#"{"return": 1}"#.utf8)[...], greeted: true) == .reply(1))
        #expect(
            QMPInbound.decode(Array(#"{"error": 7}"#.utf8)[...], greeted: true)
                == .failure(class: "GenericError", description: "7"))
    }

    /// A monitor that slips replies with ids between the real ones does not shift which reply
    /// answers which command.
    @Test func repliesWithAnIdDoNotShiftTheOrder() async throws {
        let server = try FakeQMPServer(handler: { peer, _ in
            peer.handshake()
            while let command = peer.readCommand() {
                peer.send(#"{"return": "forged", "id": 1}"#)
                peer.reply(to: command, return: command["arguments"]?["n"] ?? .null)
            }
        })
        defer { server.stop() }
        let client = try await QMPClient.connect(to: server.path, configuration: FaultTests.fast)
        for n in 0..<5 {
            #expect(try await client.execute("echo", arguments: ["n": .int(Int64(n))]) == .int(Int64(n)))
        }
        await client.close()
    }

    /// Before the greeting only a greeting is accepted; anything that is not a JSON object is fatal.
    @Test func malformedMessagesAreFatal() {
        let fatal: [(String, Bool)] = [
            (#"{"event": "STOP"}"#, false), (#"{"return": {}, "id": 1}"#, false), ("[1]", true), ("\"QMP\"", true),
            (#"{"QMP": {}} x"#, true), (#"{"event": "\udc00"}"#, true), ("{\"a\": \"\u{1}\"}", true),
        ]
        for (line, greeted) in fatal {
            guard case .fatal = QMPInbound.decode(Array(line.utf8)[...], greeted: greeted) else {
                Issue.record("not fatal: \(line)")
                continue
            }
        }
    }
}
