import MacvtapdUdev

/// The drivers that talk to the real kernel, udev and QEMU.
public struct LiveDrivers: Sendable {
    public static let defaultDeviceDirectory = "/dev/macvtapd"

    public var host: any HostDriver
    public var connector: any VMConnector

    /// Whether links carry udev information and wait for udev, and why (for the log).
    public var udev: (active: Bool, why: String)

    public init(
        deviceDirectory: String = LiveDrivers.defaultDeviceDirectory, qmpTimeout: Duration,
        udev environment: UdevEnvironment = UdevEnvironment()
    ) throws {
        udev = environment.resolve()
        host = try UdevHostDriver(wrapping: NetlinkHostDriver(deviceDirectory: deviceDirectory), active: udev.active)
        connector = QMPConnector(timeout: qmpTimeout)
    }
}
