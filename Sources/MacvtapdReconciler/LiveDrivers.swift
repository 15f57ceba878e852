/// The drivers that talk to the real kernel and QEMU.
public struct LiveDrivers: Sendable {
    public var host: any HostDriver
    public var connector: any VMConnector

    public init(runtimeDirectory: String, qmpTimeout: Duration) throws {
        throw LiveDriversUnavailable()
    }
}

/// Until the rtnetlink and QMP clients are joined in, the CLI says so instead of pretending.
struct LiveDriversUnavailable: Error, CustomStringConvertible {
    var description: String { "the rtnetlink and QMP drivers are not built into this version yet" }
}
