import MacvtapdReconciler
import MacvtapdThreads
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Watches the configuration with inotify on its directory, not on the file: editors and
/// config-management tools replace files by renaming a new one over the old, which a watch on the
/// old inode would miss. Bursts of events (a tool writing several files) are coalesced.
public final class ConfigWatcher: Sendable {
    public let changes: AsyncStream<Void>
    private let inotify: Int32
    private let stopPipe: (read: Int32, write: Int32)
    private let thread = Mutex<pthread_t?>(nil)

    /// `path` is the config file or directory; `debounce` is how long to wait for a burst to end.
    public init(path: String, debounce: Duration = .milliseconds(100)) throws {
        var isDirectory = false
        var info = stat()
        if stat(path, &info) == 0 { isDirectory = (info.st_mode & S_IFMT) == S_IFDIR }
        let directory: String
        let fileName: String?
        if isDirectory {
            directory = path
            fileName = nil
        } else if let slash = path.lastIndex(of: "/") {
            directory = slash == path.startIndex ? "/" : String(path[..<slash])
            fileName = String(path[path.index(after: slash)...])
        } else {
            directory = "."
            fileName = path
        }

        inotify = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard inotify >= 0 else { throw WatchError("inotify_init1: \(String(cString: strerror(errno)))") }
        let mask: UInt32 =
            UInt32(IN_CLOSE_WRITE) | UInt32(IN_MOVED_TO) | UInt32(IN_MOVED_FROM) | UInt32(IN_CREATE)
            | UInt32(IN_DELETE) | UInt32(IN_DELETE_SELF) | UInt32(IN_MOVE_SELF) | UInt32(IN_ATTRIB)
        guard inotify_add_watch(inotify, directory, mask) >= 0 else {
            let why = String(cString: strerror(errno))
            Glibc.close(inotify)
            throw WatchError("cannot watch \(directory): \(why)")
        }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            Glibc.close(inotify)
            throw WatchError("pipe2: \(String(cString: strerror(errno)))")
        }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        stopPipe = (fds[0], fds[1])
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        changes = stream

        let loop = WatchLoop(
            inotify: inotify, stop: stopPipe.read, fileName: fileName,
            debounceMilliseconds: Int32(debounce.milliseconds),
            continuation: continuation)
        thread.withLock { $0 = Self.spawn(loop) }
    }

    /// Stops watching and ends `changes`.
    public func close() {
        guard
            let thread = thread.withLock({ value -> pthread_t? in
                defer { value = nil }
                return value
            })
        else { return }
        var byte: UInt8 = 1
        _ = write(stopPipe.write, &byte, 1)
        pthread_join(thread, nil)
        Glibc.close(inotify)
        Glibc.close(stopPipe.read)
        Glibc.close(stopPipe.write)
    }

    deinit { close() }

    private static func spawn(_ loop: WatchLoop) -> pthread_t? {
        try? NativeThread.start { loop.run() }.get()
    }
}

/// The watcher thread: blocks in poll, reads inotify records, and signals once per burst.
private final class WatchLoop: Sendable {
    let inotify: Int32
    let stop: Int32
    let fileName: String?
    let debounceMilliseconds: Int32
    let continuation: AsyncStream<Void>.Continuation

    init(
        inotify: Int32, stop: Int32, fileName: String?, debounceMilliseconds: Int32,
        continuation: AsyncStream<Void>.Continuation
    ) {
        self.inotify = inotify
        self.stop = stop
        self.fileName = fileName
        self.debounceMilliseconds = debounceMilliseconds
        self.continuation = continuation
    }

    func run() {
        defer { continuation.finish() }
        var pending = false
        while true {
            var fds = [
                pollfd(fd: inotify, events: Int16(POLLIN), revents: 0),
                pollfd(fd: stop, events: Int16(POLLIN), revents: 0),
            ]
            let ready = poll(&fds, 2, pending ? debounceMilliseconds : -1)
            if ready < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds[1].revents != 0 { return }
            if ready == 0 {
                pending = false
                continuation.yield()
                continue
            }
            if drain() { pending = true }
        }
    }

    /// Reads every queued record; true when one concerns the configuration.
    private func drain() -> Bool {
        var relevant = false
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(inotify, $0.baseAddress, $0.count) }
            if count <= 0 { return relevant }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= count {
                let (length, mask, name) = buffer.withUnsafeBytes { raw -> (Int, UInt32, String) in
                    let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    let nameStart = offset + MemoryLayout<inotify_event>.size
                    let nameBytes = raw[nameStart..<min(count, nameStart + Int(event.len))].prefix { $0 != 0 }
                    return (Int(event.len), event.mask, String(decoding: nameBytes, as: UTF8.self))
                }
                offset += MemoryLayout<inotify_event>.size + length
                // The watched directory itself moved or vanished: whatever the config is now, reload.
                let directoryGone = UInt32(IN_DELETE_SELF) | UInt32(IN_MOVE_SELF) | UInt32(IN_IGNORED)
                if mask & directoryGone != 0 || (!name.isEmpty && isRelevant(name)) { relevant = true }
            }
        }
    }

    private func isRelevant(_ name: String) -> Bool {
        if let fileName { return name == fileName }
        // A conf.d directory: YAML files, and the `..data` symlink swaps of Kubernetes ConfigMaps.
        return name.hasSuffix(".yaml") || name.hasSuffix(".yml") || name.hasPrefix("..")
    }
}

struct WatchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
