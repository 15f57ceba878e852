import ArgumentParser
import CMacvtapd
import Logging
import MacvtapdControl
import MacvtapdDaemon
import MacvtapdReconciler

#if canImport(Glibc)
    import Glibc
#endif

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the daemon: reconcile on link and QMP events, config changes and periodically.",
        usage: "macvtapd run [-c <path>] [--resync <duration>] [<options>]",
        discussion: """
            Reconciles every binding on start, then whenever rtnetlink reports a link change, a VM's QMP \
            session says something (SHUTDOWN, a reconnect), the configuration changes on disk or SIGHUP \
            arrives, and every --resync interval. A failing binding is retried with exponential backoff \
            (0.5 s doubling to 30 s, reset on success) without delaying the others.

            An invalid configuration is logged and shown in status; the last good desired state stays in \
            force. So is a configuration that a group or other users can write (see \
            --allow-insecure-config), at start and on every reload. SIGTERM and SIGINT stop the daemon gracefully and leave every backend in place. Under \
            systemd (Type=notify) it reports readiness and a STATUS= line, and feeds the watchdog when \
            WatchdogSec= is set.

            Serves plan, apply and status on the control socket (--control-socket, mode 0600, or 0660 with \
            --control-group; docs/control-protocol.md). One daemon per run directory (the socket's): a second \
            one refuses to start and names the first.
            """
    )

    @OptionGroup var config: ConfigOptions
    @OptionGroup var security: InsecureConfigOptions

    @Option(help: ArgumentHelp("Where the JSON status document is written.", valueName: "path"))
    var statusFile: String = StatusStore.defaultPath

    @OptionGroup var device: DeviceOptions
    @OptionGroup var options: ObserveOptions
    @OptionGroup var control: ControlOptions

    @Option(
        help: ArgumentHelp(
            "A group whose members may use the control socket too (mode 0660); default: root only (0600).",
            valueName: "group"))
    var controlGroup: String?

    @Option(
        help: DurationOption.help(
            "Time between full resyncs that repair anything an event missed.", default: .seconds(30)),
        transform: DurationOption.parser(within: DurationOption.resync))
    var resync: Duration = .seconds(30)

    @Flag(help: "Ignore rtnetlink events and rely on the periodic resync alone (a baseline for benchmarks).")
    var noEvents = false

    @Flag(help: "Do not watch the configuration with inotify; reload only on SIGHUP.")
    var noWatchConfig = false

    @Option(
        help: ArgumentHelp(
            "Prometheus textfile to write (for node_exporter's textfile collector); '' disables it.",
            valueName: "path"))
    var metricsFile: String = "/run/macvtapd/macvtapd.prom"

    func run() async throws {
        // glibc gives each thread that allocates an arena of its own, up to 8 per core; the daemon
        // runs a reader thread per VM, and every arena keeps its own free memory. With two, a
        // 1,000-binding converge left 14.8 MiB of RssAnon instead of 20.5 (converge CPU the same
        // within the machine's noise).
        mallopt(M_ARENA_MAX, 2)
        // Blocks of 64 KiB and more (a link dump's buffer, the status document, a long QMP reply)
        // are mapped on their own and unmapped when freed, instead of going into an arena where
        // the daemon's long-lived data then grows around their holes. A fixed threshold also stops
        // glibc raising it (up to 32 MiB) after the first such block is freed. At 1,000 bindings,
        // RssAnon after the plans, applies and idle window 8.9 → 7.6 MiB (README, "Benchmarks").
        mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        try security.check(config)
        // Before anything else: a second daemon must not touch the first one's status or metrics.
        let endpoint: ControlEndpoint
        do {
            endpoint = try ControlEndpoint.open(
                socketPath: control.controlSocket, group: controlGroup, configPath: canonicalPath(config.path))
        } catch {
            printError("macvtapd run: \(error)")
            throw ExitCode(1)
        }
        let level = options.logLevel ?? .info
        // Logging must never stall the control loop: lines go through a queue to standard error,
        // and a reader that went away (EPIPE) costs log lines, not the daemon.
        signal(SIGPIPE, SIG_IGN)
        let output = QueuedOutput.standardError
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler(label: label, stream: output.stream)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "macvtapd")
        // Each attached backend keeps its tap fd open here (TapKeeper: QEMU's close of it is then
        // never the last, the one that waits out an RCU grace period), on top of a QMP socket per
        // VM: 1,000 bindings need more than the usual soft limit of 1,024. Up to half of the limit
        // is kept; past that, taps are closed after the attach as before (a slower detach, no
        // failed attach).
        if let raised = raiseOpenFileLimit() { logger.info("open file limit: \(raised)") }
        let drivers = try options.liveDrivers(deviceDirectory: device.deviceDir)
        logger.info("\(drivers.udev.why)")
        let settings = Daemon.Settings(
            configPath: config.path, store: StatusStore(path: statusFile),
            controller: Controller.Options(
                resyncInterval: resync, useLinkEvents: !noEvents,
                metricsPath: metricsFile.isEmpty ? nil : metricsFile),
            watchConfig: !noWatchConfig,
            control: Daemon.Control(endpoint: endpoint, version: BuildInfo.version),
            requireSecureConfig: !security.allowInsecureConfig, trimMemoryAfterBursts: true)
        let daemon = Daemon(settings: settings, host: drivers.host, connector: drivers.connector, logger: logger)
        await daemon.run()
        // The last lines (the stop) are still queued; a reader that never comes back costs a second.
        await output.flush(timeout: .seconds(1))
    }
}
