import CUdev
import Glibc

/// What udev knows about one network interface at one instant.
public struct UdevNetDevice: Hashable, Sendable {
    /// The interface name (the device's sysfs name).
    public var name: String
    public var ifindex: Int32
    /// True once udevd has processed the device and written its database entry
    /// (`/run/udev/data/n<ifindex>`); until then its name and properties may still change.
    public var isInitialized: Bool
    /// The kernel's uevent properties plus, once initialised, what udev rules added (`ID_PATH`,
    /// `ID_NET_NAME_PATH`, ...).
    public var properties: [String: String]

    public init(name: String, ifindex: Int32, isInitialized: Bool, properties: [String: String]) {
        self.name = name
        self.ifindex = ifindex
        self.isInitialized = isInitialized
        self.properties = properties
    }

    /// Reads a libudev device; nil when it is not a network interface with an ifindex.
    init?(reading device: OpaquePointer) {
        guard let sysname = udev_device_get_sysname(device) else { return nil }
        var properties: [String: String] = [:]
        var entry = udev_device_get_properties_list_entry(device)
        while let current = entry {
            if let key = udev_list_entry_get_name(current) {
                properties[String(cString: key)] = udev_list_entry_get_value(current).map { String(cString: $0) } ?? ""
            }
            entry = udev_list_entry_get_next(current)
        }
        guard let index = properties["IFINDEX"].flatMap({ Int32($0) }) else { return nil }
        self.init(
            name: String(cString: sysname), ifindex: index, isInitialized: udev_device_get_is_initialized(device) > 0,
            properties: properties)
    }
}

/// A libudev call that failed, naming what was attempted.
public struct UdevError: Error, Hashable, Sendable, CustomStringConvertible {
    public var operation: String
    public var errno: Int32

    public init(operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "udev: cannot \(operation): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}
