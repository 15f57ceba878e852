import ArgumentParser
import Logging
import MacvtapdConfig
import MacvtapdCore
import MacvtapdReconciler
import MacvtapdUdev

/// Options shared by the commands that observe and change the world.
struct WorldOptions: ParsableArguments {
    @OptionGroup var config: ConfigOptions

    @Option(help: "Where the JSON status document is written and read.")
    var statusFile: String = StatusStore.defaultPath

    @Option(
        help: """
            Directory for the private tap device nodes macvtapd makes and unlinks right after opening; \
            it must allow device nodes (/run is often mounted nodev).
            """)
    var deviceDir: String = LiveDrivers.defaultDeviceDirectory

    @Option(help: "Seconds to wait for a VM's QMP monitor before calling it unresponsive.")
    var qmpTimeout: Double = 5

    @Option(
        help: """
            Whether to wait for udev and match hosts by udev identity (path, property): auto (when udevd \
            runs and macvtapd is in its network namespace), on, off.
            """)
    var udev: UdevEnvironment.Mode = .auto

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: warning; run: info).")
    var logLevel: Logger.Level?

    func loadDesired() throws -> DesiredState {
        let result = ConfigLoader.load(path: config.config)
        for diagnostic in result.diagnostics { printError(diagnostic.description) }
        guard let desired = result.desired else {
            printError("\(config.config): invalid configuration; nothing was changed")
            throw ExitCode(1)
        }
        return desired
    }

    func reconciler() throws -> Reconciler {
        var logger = Logger(label: "macvtapd")
        logger.logLevel = logLevel ?? .warning
        let drivers = try liveDrivers()
        logger.debug("\(drivers.udev.why)")
        return Reconciler(
            host: drivers.host, connector: drivers.connector, store: StatusStore(path: statusFile), logger: logger)
    }

    func liveDrivers() throws -> LiveDrivers {
        try LiveDrivers(
            deviceDirectory: deviceDir, qmpTimeout: .milliseconds(Int(qmpTimeout * 1000)),
            udev: UdevEnvironment(mode: udev))
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
extension UdevEnvironment.Mode: ExpressibleByArgument {}
