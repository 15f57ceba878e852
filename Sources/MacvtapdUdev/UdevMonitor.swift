import CUdev
import Glibc
import MacvtapdThreads
import Synchronization

/// One message from the udev monitor.
public enum UdevEvent: Hashable, Sendable {
    /// A "net" device event: `action` is `add`, `move` (renamed), `change`, `remove`, ...
    case device(action: String, UdevNetDevice)
    /// Events were lost (the socket overflowed): only a fresh look tells the truth now.
    case lost
}

/// udev's "net" subsystem events as an `AsyncStream`. A dedicated thread owns the libudev monitor
/// (libudev objects are not thread-safe) and polls it together with an eventfd, so `close()` stops
/// it promptly, waits for it to exit and leaves no descriptor behind.
public final class UdevMonitor: Sendable {
    /// Where events come from.
    public enum Source: String, Sendable {
        /// Events udevd sends once it has processed a device: initialised, renamed, properties set.
        case udev
        /// Raw kernel uevents of the calling thread's network namespace, before udev: what exists
        /// where no udevd runs (tests, containers).
        case kernel
    }

    /// One consumer. Ends when the monitor is closed or deinitialised.
    public let events: AsyncStream<UdevEvent>

    private let reader: UdevMonitorReader
    private let thread: Mutex<pthread_t?>

    /// Subscribes in the calling thread's network namespace. `receiveBufferSize` bounds what the
    /// kernel queues for a slow reader before events are lost (then `.lost` is delivered).
    public init(source: Source = .udev, receiveBufferSize: Int32 = 1 << 20, eventBufferLimit: Int = 4096) throws {
        let handles = try UdevMonitorHandles(source: source, receiveBufferSize: receiveBufferSize)
        let (stream, continuation) = AsyncStream.makeStream(
            of: UdevEvent.self, bufferingPolicy: .bufferingOldest(eventBufferLimit))
        let reader = UdevMonitorReader(handles: handles, continuation: continuation)
        continuation.onTermination = { _ in reader.requestStop() }
        events = stream
        self.reader = reader

        switch NativeThread.start({ reader.run() }) {
        case .success(let created):
            thread = Mutex(created)
        case .failure(let error):
            reader.finish()
            throw UdevError(operation: "start the udev monitor thread", errno: error.errno)
        }
    }

    deinit { close() }

    /// Ends the event stream, stops the reader thread and releases the monitor before returning.
    /// Safe to call more than once.
    public func close() {
        reader.requestStop()
        if let running = thread.withLock({ $0.take() }) { pthread_join(running, nil) }
    }
}

/// The libudev context and monitor plus the wakeup eventfd. Made on the subscribing thread (so
/// the socket is in its network namespace), then used by the reader thread alone.
private struct UdevMonitorHandles: ~Copyable {
    let udev: OpaquePointer
    let monitor: OpaquePointer
    let wake: Int32

    init(source: UdevMonitor.Source, receiveBufferSize: Int32) throws {
        guard let udev = udev_new() else { throw UdevError(operation: "create a udev context", errno: errno) }
        guard let monitor = udev_monitor_new_from_netlink(udev, source.rawValue) else {
            let code = errno
            udev_unref(udev)
            throw UdevError(operation: "open the \(source.rawValue) monitor", errno: code)
        }
        func fail(_ operation: String, _ code: Int32) -> UdevError {
            udev_monitor_unref(monitor)
            udev_unref(udev)
            return UdevError(operation: operation, errno: code)
        }
        // libudev returns negative errno values.
        var status = udev_monitor_filter_add_match_subsystem_devtype(monitor, "net", nil)
        guard status >= 0 else { throw fail("filter the monitor on subsystem net", -status) }
        // Best effort: without CAP_NET_ADMIN the default buffer is kept.
        _ = udev_monitor_set_receive_buffer_size(monitor, receiveBufferSize)
        status = udev_monitor_enable_receiving(monitor)
        guard status >= 0 else { throw fail("subscribe the \(source.rawValue) monitor", -status) }
        let wake = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        guard wake >= 0 else { throw fail("create the monitor's wakeup eventfd", errno) }
        self.udev = udev
        self.monitor = monitor
        self.wake = wake
    }

    consuming func release() {
        udev_monitor_unref(monitor)
        udev_unref(udev)
    }
}

/// The reader thread's side. The handles sit behind a lock only to hand them from the subscribing
/// thread to the reader thread. The wakeup descriptor is written and closed under a lock of its
/// own, so a stop request never writes to a descriptor number that was closed and reused.
private final class UdevMonitorReader: Sendable {
    private let handles: Mutex<UdevMonitorHandles?>
    private let wake: Mutex<Int32>
    private let continuation: AsyncStream<UdevEvent>.Continuation

    init(handles: consuming sending UdevMonitorHandles, continuation: AsyncStream<UdevEvent>.Continuation) {
        wake = Mutex(handles.wake)
        self.handles = Mutex(Optional(handles))
        self.continuation = continuation
    }

    func requestStop() {
        wake.withLock { wake in
            guard wake >= 0 else { return }
            var one: UInt64 = 1
            _ = write(wake, &one, MemoryLayout<UInt64>.size)
        }
    }

    /// Releases the monitor and the eventfd, then ends the stream: a consumer that sees the end can
    /// rely on them being gone.
    func finish() {
        if let taken = handles.withLock({ $0.take() }) { taken.release() }
        wake.withLock { wake in
            if wake >= 0 { close(wake) }
            wake = -1
        }
        continuation.finish()
    }

    func run() {
        guard let taken = handles.withLock({ $0.take() }) else { return finish() }
        let monitor = taken.monitor
        var polled = [
            pollfd(fd: udev_monitor_get_fd(monitor), events: Int16(POLLIN), revents: 0),
            pollfd(fd: taken.wake, events: Int16(POLLIN), revents: 0),
        ]
        var emitter = Emitter(continuation: continuation)
        while !emitter.isTerminated {
            // While a loss notice is owed to a full stream, look again soon rather than never.
            let ready = poll(&polled, 2, emitter.owesLoss ? 20 : -1)
            if ready < 0 {
                if errno == EINTR { continue }
                emitter.emit(.lost)
                break
            }
            if polled[1].revents != 0 { break }
            emitter.retryOwedLoss()
            if polled[0].revents != 0 { drain(monitor, into: &emitter) }
        }
        taken.release()
        finish()
    }

    /// Receives until the socket is empty.
    private func drain(_ monitor: OpaquePointer, into emitter: inout Emitter) {
        while !emitter.isTerminated {
            errno = 0
            guard let device = udev_monitor_receive_device(monitor) else {
                // libudev also returns nil for messages it drops (malformed, from a foreign
                // sender); only a full socket means events were lost.
                if errno == ENOBUFS {
                    emitter.emit(.lost)
                    continue
                }
                return
            }
            defer { udev_device_unref(device) }
            let action = udev_device_get_action(device).map { String(cString: $0) } ?? "change"
            if let read = UdevNetDevice(reading: device) { emitter.emit(.device(action: action, read)) }
        }
    }

    /// Turns a full stream buffer into one `.lost` instead of silently dropped events.
    private struct Emitter {
        let continuation: AsyncStream<UdevEvent>.Continuation
        var owesLoss = false
        var isTerminated = false

        mutating func emit(_ event: UdevEvent) {
            retryOwedLoss()
            guard !owesLoss, !isTerminated else { return }
            record(continuation.yield(event))
        }

        mutating func retryOwedLoss() {
            guard owesLoss, !isTerminated else { return }
            owesLoss = false
            record(continuation.yield(.lost))
        }

        private mutating func record(_ result: AsyncStream<UdevEvent>.Continuation.YieldResult) {
            switch result {
            case .enqueued: break
            case .dropped: owesLoss = true
            case .terminated: isTerminated = true
            @unknown default: owesLoss = true
            }
        }
    }
}
