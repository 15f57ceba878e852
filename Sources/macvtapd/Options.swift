import ArgumentParser
import Logging
import MacvtapdCore
import MacvtapdReconciler
import MacvtapdUdev

/// Options of the commands that observe the host and the VMs: plan, apply and run.
struct ObserveOptions: ParsableArguments {
    @Option(
        help: DurationOption.help(
            "How long to wait for a VM's QMP monitor before calling it unresponsive.", default: .seconds(5)),
        transform: DurationOption.parser(within: DurationOption.qmpTimeout))
    var qmpTimeout: Duration = .seconds(5)

    @Option(
        help: ArgumentHelp(
            "Whether to wait for udev and match host interfaces by udev identity (path, property); auto "
                + "uses udev when udevd runs and macvtapd is in its network namespace.",
            valueName: "mode"))
    var udev: UdevEnvironment.Mode = .auto

    @Option(help: ArgumentHelp("Log level (default: warning; run: info).", valueName: "level"))
    var logLevel: Logger.Level?

    func reconciler(statusFile: String, deviceDirectory: String = LiveDrivers.defaultDeviceDirectory) throws
        -> Reconciler
    {
        var logger = Logger(label: "macvtapd")
        logger.logLevel = logLevel ?? .warning
        let drivers = try liveDrivers(deviceDirectory: deviceDirectory)
        logger.debug("\(drivers.udev.why)")
        return Reconciler(
            host: drivers.host, connector: drivers.connector, store: StatusStore(path: statusFile), logger: logger)
    }

    func liveDrivers(deviceDirectory: String) throws -> LiveDrivers {
        try LiveDrivers(deviceDirectory: deviceDirectory, qmpTimeout: qmpTimeout, udev: UdevEnvironment(mode: udev))
    }
}

/// `--device-dir`: only the commands that open tap devices (apply and run) take it.
struct DeviceOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Directory for the private tap device nodes macvtapd makes and unlinks right after opening; it must "
                + "allow device nodes (/run is often mounted nodev).",
            valueName: "path"))
    var deviceDir: String = LiveDrivers.defaultDeviceDirectory
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
extension UdevEnvironment.Mode: ExpressibleByArgument {}
