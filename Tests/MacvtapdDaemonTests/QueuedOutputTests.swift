import Foundation
import MacvtapdDaemon
import MacvtapdTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct QueuedOutputTests {
    /// A pipe whose write end blocks and is full already; returns (reader, writer, bytes in it).
    static func fullPipe() throws -> (reader: Int32, writer: Int32, filled: Int) {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw ChildError("pipe: errno \(errno)") }
        // Close-on-exec: a child spawned meanwhile by a parallel test (the soak's daemon) would
        // otherwise hold both ends for its whole life (the soak counts its descriptors).
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(ends[1], F_SETFL, O_NONBLOCK)
        var filled = 0
        let filler = [UInt8](repeating: UInt8(ascii: "x"), count: 512)
        while case let written = write(ends[1], filler, filler.count), written > 0 { filled += written }
        _ = fcntl(ends[1], F_SETFL, 0)
        _ = fcntl(ends[0], F_SETFL, O_NONBLOCK)
        return (ends[0], ends[1], filled)
    }

    static func readAll(_ fd: Int32) -> String {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while case let count = read(fd, &buffer, buffer.count), count > 0 { bytes += buffer[..<count] }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func aFullPipeNeverBlocksTheLoggerAndTheGapIsSaid() async throws {
        let pipe = try Self.fullPipe()
        defer {
            close(pipe.reader)
            close(pipe.writer)
        }
        let output = QueuedOutput(fd: pipe.writer, limit: 1_000)
        // On a thread of its own: a blocking write must fail the test, not hang the runner's threads.
        let returned = Mutex(false)
        Thread.detachNewThread {
            for line in 0..<100 { output.append("line \(line) " + String(repeating: "y", count: 80) + "\n") }
            returned.withLock { $0 = true }
        }
        #expect(await eventually { returned.withLock { $0 } }, "a log line waited for the reader")

        // The reader catches up: the filler, the lines that fit, the count of the ones that did not.
        // The writer drains while lines still arrive, so a gap can be said in more than one notice;
        // together the kept lines and the counts account for all 100.
        let notice = /macvtapd: (\d+) log line\(s\) dropped: standard error was not being read/
        var text = ""
        var kept = 0
        var dropped = 0
        let accounted = await eventually {
            text += Self.readAll(pipe.reader)
            let lines = text.drop { $0 == "x" }.split(separator: "\n")
            kept = lines.filter { $0.hasPrefix("line ") }.count
            dropped = lines.compactMap { line in line.wholeMatch(of: notice).flatMap { Int($0.1) } }.reduce(0, +)
            return kept + dropped == 100
        }
        #expect(accounted, "kept \(kept), said dropped \(dropped)")
        let lines = text.drop { $0 == "x" }.split(separator: "\n")
        #expect(lines.first?.hasPrefix("line 0 ") == true, "\(lines.prefix(3))")
        #expect(kept >= 10 && kept < 100)
        #expect(dropped > 0)

        // Once the reader keeps up, nothing is lost.
        output.append("after\n")
        #expect(await output.flush(timeout: .seconds(5)))
        #expect(Self.readAll(pipe.reader) == "after\n")
    }
}
