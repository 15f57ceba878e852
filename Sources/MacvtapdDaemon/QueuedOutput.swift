import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Log output that never makes the logger wait. Standard error may be a pipe nobody reads (a
/// wedged journald, a supervisor that stopped draining, `macvtapd run 2>&1 | less` left paused): a
/// write to a full pipe blocks, and a logger that writes in place blocks the control loop with it.
/// Lines are queued here and written by one thread of their own; past `limit` bytes queued, new
/// lines are dropped and counted, and a line saying how many were lost is written when the reader
/// catches up.
public final class QueuedOutput: Sendable {
    struct State {
        var chunks: [String] = []
        var bytes = 0
        var dropped = 0
        var writing = false
    }

    private let fd: Int32
    private let limit: Int
    private let state = Mutex(State())
    private let writer = DispatchQueue(label: "macvtapd.log-output")

    public static let standardError = QueuedOutput(fd: STDERR_FILENO)

    public init(fd: Int32, limit: Int = 1 << 20) {
        self.fd = fd
        self.limit = limit
    }

    /// A TextOutputStream for swift-log's StreamLogHandler, which writes one whole line per call.
    public var stream: Stream { Stream(output: self) }

    public struct Stream: TextOutputStream, Sendable {
        let output: QueuedOutput
        public mutating func write(_ string: String) { output.append(string) }
    }

    public func append(_ text: String) {
        let start = state.withLock { state -> Bool in
            guard state.bytes + text.utf8.count <= limit else {
                state.dropped += 1
                return false
            }
            // Said where the gap is, not at the end of the queue.
            if state.dropped > 0 {
                let notice = Self.droppedNotice(state.dropped)
                state.chunks.append(notice)
                state.bytes += notice.utf8.count
                state.dropped = 0
            }
            state.chunks.append(text)
            state.bytes += text.utf8.count
            if state.writing { return false }
            state.writing = true
            return true
        }
        if start { writer.async { self.drain() } }
    }

    /// Waits until everything queued so far is written, or `timeout` passes (the reader may never
    /// come back): for the last lines before the process exits.
    @discardableResult
    public func flush(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if state.withLock({ !$0.writing && $0.chunks.isEmpty }) { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }

    static func droppedNotice(_ count: Int) -> String {
        "macvtapd: \(count) log line(s) dropped: standard error was not being read\n"
    }

    private func drain() {
        while true {
            let batch = state.withLock { state -> [UInt8]? in
                if state.chunks.isEmpty && state.dropped > 0 {
                    state.chunks.append(Self.droppedNotice(state.dropped))
                    state.dropped = 0
                }
                guard !state.chunks.isEmpty else {
                    state.writing = false
                    return nil
                }
                var batch: [UInt8] = []
                batch.reserveCapacity(state.bytes)
                for chunk in state.chunks { batch += chunk.utf8 }
                state.chunks = []
                state.bytes = 0
                return batch
            }
            guard let batch else { return }
            writeAll(batch)
        }
    }

    /// Blocks this queue's thread, and only it, until the reader takes the bytes. A closed or
    /// broken output loses them: there is nowhere else to say so.
    private func writeAll(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}
