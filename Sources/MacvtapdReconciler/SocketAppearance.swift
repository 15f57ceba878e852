import MacvtapdThreads
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Ends a VM's reconnect wait as soon as its monitor socket appears, so a QEMU started with -S is
/// attached while it is still paused. libvirt resumes the QEMUs it starts about half a second after
/// creating them: with only the reconnect poll (at most 1 s apart) the backend was attached after
/// the guest had started in every `virsh start` measured (`macvtapd-bench libvirt`).
///
/// One inotify instance for the process, one watch per directory that holds a monitor socket (VMs
/// usually share one, /run/macvtapd/qmp), one thread that reads it. A directory that cannot be
/// watched (missing, no permission) costs nothing: the wait then simply lasts its whole time.
final class SocketAppearance: Sendable {
    static let shared = SocketAppearance()

    private struct State {
        /// Watch descriptor → the directory it watches.
        var directories: [Int32: String] = [:]
        /// Socket path → the waits for it, by id.
        var waiters: [String: [Int: CheckedContinuation<Void, Never>]] = [:]
        /// Waits whose task was cancelled before they registered.
        var cancelled: Set<Int> = []
        var nextID = 0
        /// The reader thread could not start.
        var unusable = false
    }

    private let inotify: Int32
    private let state = Mutex(State())

    private init() {
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        inotify = fd
        guard fd >= 0 else { return }
        // The shared instance lives as long as the process, and so does its reader thread.
        guard case .success = NativeThread.detach({ [self] in readEvents() }) else {
            // Nobody reads the events: watch nothing, so every wait lasts its whole time.
            state.withLock { $0.unusable = true }
            return
        }
    }

    /// Returns true when `path` is created or moved into place (QEMU unlinks a stale socket before
    /// it binds a new one), false when `timeout` has passed first.
    func wait(for path: String, upTo timeout: Duration) async -> Bool {
        guard inotify >= 0, !state.withLock({ $0.unusable }), let slash = path.lastIndex(of: "/"),
            slash != path.startIndex
        else {
            try? await Task.sleep(for: timeout)
            return false
        }
        let directory = String(path[..<slash])
        let mask = UInt32(IN_CREATE) | UInt32(IN_MOVED_TO)
        // inotify gives one watch per directory however often it is added.
        let watch = inotify_add_watch(inotify, directory, mask)
        guard watch >= 0 else {
            try? await Task.sleep(for: timeout)
            return false
        }
        state.withLock { $0.directories[watch] = directory }
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.appearance(of: path, id: id) }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let appeared = await group.next() ?? false
            group.cancelAll()
            return appeared
        }
    }

    /// Whoever takes a wait's continuation out of the table resumes it: the watcher thread, or the
    /// cancellation when the timeout ends the wait first.
    private func appearance(of path: String, id: Int) async -> Bool {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let cancelled = state.withLock { state -> Bool in
                    if state.cancelled.remove(id) != nil { return true }
                    state.waiters[path, default: [:]][id] = continuation
                    return false
                }
                // No check whether the path exists now: a stale socket (its QEMU killed) does, and
                // would end every wait at once. One made between the failed connect and the watch
                // waits for the timeout, as without the watch.
                if cancelled { continuation.resume() }
            }
            return !Task.isCancelled
        } onCancel: {
            let waiting = state.withLock { state -> CheckedContinuation<Void, Never>? in
                if let continuation = Self.remove(path, id, from: &state) { return continuation }
                state.cancelled.insert(id)
                return nil
            }
            waiting?.resume()
        }
    }

    private static func remove(_ path: String, _ id: Int, from state: inout State) -> CheckedContinuation<Void, Never>?
    {
        let continuation = state.waiters[path]?.removeValue(forKey: id)
        if state.waiters[path]?.isEmpty == true { state.waiters[path] = nil }
        return continuation
    }

    private func readEvents() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(inotify, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            var offset = 0
            var appeared: [CheckedContinuation<Void, Never>] = []
            while offset + MemoryLayout<inotify_event>.size <= count {
                let (watch, mask, length) = buffer.withUnsafeBytes { raw in
                    let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    return (event.wd, event.mask, Int(event.len))
                }
                let nameStart = offset + MemoryLayout<inotify_event>.size
                let nameBytes = buffer[nameStart..<min(nameStart + length, count)].prefix { $0 != 0 }
                let name = String(decoding: nameBytes, as: UTF8.self)
                offset = nameStart + length
                state.withLock { state in
                    if mask & UInt32(IN_IGNORED) != 0 {
                        state.directories[watch] = nil
                        return
                    }
                    guard let directory = state.directories[watch], !name.isEmpty else { return }
                    if let waiting = state.waiters.removeValue(forKey: directory + "/" + name) {
                        appeared += waiting.values
                    }
                }
            }
            for continuation in appeared { continuation.resume() }
        }
    }
}
