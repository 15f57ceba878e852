import Dispatch
import Logging
import Synchronization

/// Replaces files (the status document, the metrics textfile) off the control loop. A write to a
/// slow or wedged filesystem (a hung NFS mount, a disk at its I/O limit, a FIFO planted at the
/// temporary name) blocks the writer; the loop only hands over bytes here and goes on reconciling.
/// Writes to one path coalesce: while one is in flight, only the newest content waiting behind it
/// is kept, which is all a reader of a "current state" file wants.
final class FileReplacer: Sendable {
    struct Pending {
        var contents: [String: (bytes: [UInt8], logger: Logger, what: String)] = [:]
        /// Pending paths, in the order of their latest request.
        var order: [String] = []
        var writing = false
    }

    private let pending = Mutex(Pending())
    private let queue = DispatchQueue(label: "macvtapd.file-replacer")

    /// Schedules `bytes` to replace `path` (AtomicFile); a failure is logged as "cannot write <what>".
    func replace(_ path: String, with bytes: [UInt8], logger: Logger, what: String) {
        let start = pending.withLock { pending -> Bool in
            // Written in the order last asked for: the controller writes metrics, then status, and a
            // reader that saw the new status finds the metrics that go with it.
            pending.contents[path] = (bytes, logger, what)
            pending.order.removeAll { $0 == path }
            pending.order.append(path)
            if pending.writing { return false }
            pending.writing = true
            return true
        }
        if start { queue.async { self.drain() } }
    }

    /// Returns once everything scheduled before the call is on disk (or failed).
    func flush() async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            // The drain started before this runs to completion first: it loops until nothing is
            // pending, and work scheduled later starts a drain queued behind this block.
            queue.async { done.resume() }
        }
    }

    private func drain() {
        while true {
            let next = pending.withLock { pending -> (path: String, bytes: [UInt8], logger: Logger, what: String)? in
                guard !pending.order.isEmpty else {
                    pending.writing = false
                    return nil
                }
                let path = pending.order.removeFirst()
                let write = pending.contents.removeValue(forKey: path)!
                return (path, write.bytes, write.logger, write.what)
            }
            guard let next else { return }
            do {
                try AtomicFile.write(next.bytes, to: next.path)
            } catch {
                next.logger.error("cannot write \(next.what): \(error)")
            }
        }
    }
}
