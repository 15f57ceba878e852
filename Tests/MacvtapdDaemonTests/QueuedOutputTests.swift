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
        var text = ""
        #expect(
            await eventually {
                text += Self.readAll(pipe.reader)
                return text.contains("dropped")
            })
        text = String(text.drop { $0 == "x" })
        let lines = text.split(separator: "\n")
        #expect(lines.first?.hasPrefix("line 0 ") == true, "\(lines.prefix(3))")
        let kept = lines.filter { $0.hasPrefix("line ") }.count
        #expect(kept >= 10 && kept < 100)
        #expect(lines.contains("macvtapd: \(100 - kept) log line(s) dropped: standard error was not being read"))

        // Once the reader keeps up, nothing is lost.
        output.append("after\n")
        #expect(await output.flush(timeout: .seconds(5)))
        #expect(Self.readAll(pipe.reader) == "after\n")
    }
}
