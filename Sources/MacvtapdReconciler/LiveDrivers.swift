/// The drivers that talk to the real kernel and QEMU.
public struct LiveDrivers: Sendable {
    public static let defaultDeviceDirectory = "/dev/macvtapd"

    public var host: any HostDriver
    public var connector: any VMConnector

    public init(deviceDirectory: String = LiveDrivers.defaultDeviceDirectory, qmpTimeout: Duration) throws {
        host = try NetlinkHostDriver(deviceDirectory: deviceDirectory)
        connector = QMPConnector(timeout: qmpTimeout)
    }
}
