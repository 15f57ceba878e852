import CUdev
import Glibc
import Synchronization

/// Looks up network interfaces in udev: sysfs plus the udev database, read by libudev.
///
/// libudev objects are not thread-safe, so the context lives behind a lock and every device
/// object is made, read and released while holding it. Lookups read sysfs and the database as the
/// calling thread sees them: sysfs must be the one of the network namespace being observed (as in
/// the daemon's own namespace, or under `ip netns exec`), and libudev reads its database from its
/// compiled-in `/run/udev`.
public final class UdevClient: Sendable {
    private let context: Mutex<Context>

    private struct Context: ~Copyable {
        let udev: OpaquePointer
        deinit { udev_unref(udev) }
    }

    public init() throws {
        guard let udev = udev_new() else { throw UdevError(operation: "create a udev context", errno: errno) }
        context = Mutex(Context(udev: udev))
    }

    /// The interface with this ifindex in the calling thread's network namespace; nil when there
    /// is none (it may have gone, or been renamed between the name lookup and the sysfs read).
    public func device(ifindex: Int32) -> UdevNetDevice? {
        context.withLock { context in
            guard let device = udev_device_new_from_device_id(context.udev, "n\(ifindex)") else { return nil }
            defer { udev_device_unref(device) }
            return UdevNetDevice(reading: device).flatMap { $0.ifindex == ifindex ? $0 : nil }
        }
    }

    /// The interface with this name; nil when there is none.
    public func device(named name: String) -> UdevNetDevice? {
        context.withLock { context in
            guard let device = udev_device_new_from_subsystem_sysname(context.udev, "net", name) else { return nil }
            defer { udev_device_unref(device) }
            return UdevNetDevice(reading: device)
        }
    }
}
