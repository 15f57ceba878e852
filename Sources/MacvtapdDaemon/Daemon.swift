import CMacvtapd
import Dispatch
import Logging
import MacvtapdConfig
import MacvtapdControl
import MacvtapdCore
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `macvtapd run`: the controller plus what a long-running service needs around it — config
/// reloads on change and on SIGHUP, a graceful stop on SIGTERM/SIGINT, systemd readiness, status
/// text and watchdog keep-alives.
public final class Daemon: Sendable {
    public struct Settings: Sendable {
        public var configPath: String
        public var store: StatusStore
        public var controller: Controller.Options
        public var watchConfig: Bool
        /// The control socket, already locked and listening; nil serves none.
        public var control: Control?
        /// Reject, like an invalid one, a configuration that someone other than root or this user can
        /// change (`ConfigPermissions`); `macvtapd run` sets it unless given --allow-insecure-config.
        public var requireSecureConfig: Bool
        /// Give malloc's free memory back after each burst of work (`MemoryTrimmer`); `macvtapd run`
        /// sets it. Off for a daemon inside a larger process (the tests): malloc_trim walks the whole
        /// process's heaps, and a test runner's are hundreds of MiB that every thread waits on.
        public var trimMemoryAfterBursts: Bool

        public init(
            configPath: String, store: StatusStore, controller: Controller.Options, watchConfig: Bool = true,
            control: Control? = nil, requireSecureConfig: Bool = false, trimMemoryAfterBursts: Bool = false
        ) {
            self.configPath = configPath
            self.store = store
            self.controller = controller
            self.watchConfig = watchConfig
            self.control = control
            self.requireSecureConfig = requireSecureConfig
            self.trimMemoryAfterBursts = trimMemoryAfterBursts
        }
    }

    public struct Control: Sendable {
        public var endpoint: ControlEndpoint
        public var limits: ControlProtocol.Limits
        /// What `GetInfo` and every reply say the daemon is.
        public var version: String

        public init(endpoint: ControlEndpoint, limits: ControlProtocol.Limits = .init(), version: String) {
            self.endpoint = endpoint
            self.limits = limits
            self.version = version
        }
    }

    public let controller: Controller
    let settings: Settings
    let logger: Logger
    let notifier: SystemdNotifier

    public init(
        settings: Settings, host: any HostDriver, connector: any VMConnector, logger: Logger,
        notifier: SystemdNotifier = SystemdNotifier()
    ) {
        self.settings = settings
        self.logger = logger
        self.notifier = notifier
        controller = Controller(
            host: host, connector: connector, store: settings.store, logger: logger, options: settings.controller)
    }

    /// Runs until SIGTERM or SIGINT. Backends stay in place when it returns: VMs keep their network
    /// while the daemon is stopped or upgraded.
    public func run() async {
        let signals = SignalEvents([SIGHUP, SIGTERM, SIGINT])
        defer { signals.cancel() }
        if let previous = try? settings.store.read() {
            await controller.restore(previous)
        }
        await reload()
        let notifier = self.notifier
        // Never waits for systemd (SystemdNotifier): this runs on the control loop.
        await controller.setStatusObserver { bindings in
            notifier.status(Self.summary(bindings))
        }
        if settings.trimMemoryAfterBursts {
            let trimmer = MemoryTrimmer()
            await controller.setDrainObserver { trimmer.trim() }
        }

        var watcher: ConfigWatcher?
        if settings.watchConfig {
            do {
                watcher = try ConfigWatcher(path: settings.configPath)
            } catch {
                logger.error("not watching the configuration (SIGHUP still reloads): \(error)")
            }
        }
        defer { watcher?.close() }
        let server = serveControlSocket()
        // Clients waiting for a reply see the connection end before the socket and the lock go.
        defer {
            server?.close()
            settings.control?.endpoint.close()
        }

        // Said before the controller runs: its first status (and any after it) must come later,
        // or systemd would show "started" for as long as nothing changes.
        notifier.status("started")
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.controller.run() }
            if let changes = watcher?.changes {
                group.addTask {
                    for await _ in changes {
                        self.logger.info("configuration changed on disk; reloading")
                        await self.reload()
                    }
                }
            }
            group.addTask {
                for await signal in signals.stream {
                    if signal == SIGHUP {
                        self.logger.info("SIGHUP: reloading the configuration")
                        notifier.reloading()
                        await self.reload()
                        notifier.ready()
                    } else {
                        self.logger.notice("signal \(signal): stopping; backends stay in place")
                        notifier.stopping()
                        await self.controller.stop()
                        return
                    }
                }
            }
            if let interval = notifier.watchdogInterval {
                group.addTask { await self.keepWatchdogFed(every: interval) }
            }
            notifier.ready()
            // The controller returning means stop() was called: end the helpers with it.
            _ = await group.next()
            watcher?.close()
            signals.cancel()
            group.cancelAll()
        }
    }

    /// Loads the configuration; an invalid one is reported and the last good desired state stays.
    public func reload() async {
        if let desired = await load() {
            await controller.setDesired(desired, config: .init(path: settings.configPath, valid: true))
        }
    }

    enum ApplyStart {
        /// The new desired state is in force; `Controller.settle` with this watch waits for it.
        case watching(Int)
        case rejected([String])
    }

    /// `macvtapd apply` through the control socket: a reload now, with its outcomes gathered.
    func reloadForApply() async -> ApplyStart {
        logger.info("apply requested on the control socket; reloading")
        let result = loadChecked()
        guard let desired = await accept(result) else { return .rejected(result.diagnostics.map(\.description)) }
        return .watching(await controller.apply(desired, config: .init(path: settings.configPath, valid: true)))
    }

    private func load() async -> DesiredState? {
        await accept(loadChecked())
    }

    /// The configuration as loaded, refused like an invalid one when others could change it.
    private func loadChecked() -> ConfigLoadResult {
        var result = ConfigLoader.load(path: settings.configPath)
        if settings.requireSecureConfig {
            let insecure = ConfigPermissions.insecurePaths(configuration: settings.configPath)
            if !insecure.isEmpty {
                result.desired = nil
                result.diagnostics += insecure.map {
                    Diagnostic(
                        "\($0.problem) \($0.details): others could change which VM reaches which network "
                            + "(--allow-insecure-config overrides)", path: $0.path)
                }
            }
        }
        return result
    }

    /// Logs a load's outcome; an invalid configuration is recorded as rejected.
    private func accept(_ result: ConfigLoadResult) async -> DesiredState? {
        if let desired = result.desired {
            logger.info(
                "configuration loaded: \(desired.vms.count) VM(s), \(desired.bindings.count) binding(s)",
                metadata: ["config": "\(settings.configPath)"])
            return desired
        }
        let errors = result.diagnostics.map(\.description)
        for error in errors { logger.error("\(error)", metadata: ["config": "\(settings.configPath)"]) }
        logger.error("configuration rejected; the last good desired state stays in force")
        await controller.configRejected(path: settings.configPath, errors: errors)
        return nil
    }

    /// Starts the control socket's thread; a failure costs the socket, never the daemon.
    private func serveControlSocket() -> ControlServer? {
        guard let control = settings.control else { return nil }
        let service = ControlService(daemon: self, version: control.version)
        do {
            let server = try ControlServer(endpoint: control.endpoint, limits: control.limits) { message, peer in
                await service.handle(message, from: peer)
            }
            logger.info("serving the control socket \(control.endpoint.socketPath)")
            return server
        } catch {
            logger.error("not serving the control socket \(control.endpoint.socketPath): \(error)")
            return nil
        }
    }

    /// Pings only while the controller's actor answers: a wedged loop lets systemd restart us.
    private func keepWatchdogFed(every interval: Duration) async {
        while !Task.isCancelled {
            _ = await controller.currentStatus()
            notifier.watchdog()
            try? await Task.sleep(for: interval)
        }
    }

    /// `3 bindings: 2 Attached, 1 HostMissing`
    static func summary(_ bindings: [BindingStatus]) -> String {
        let counts = Dictionary(grouping: bindings, by: \.phase).mapValues(\.count)
        let parts = Phase.allCases.compactMap { phase in counts[phase].map { "\($0) \(phase.rawValue)" } }
        return "\(bindings.count) binding(s)" + (parts.isEmpty ? "" : ": " + parts.joined(separator: ", "))
    }
}

/// Gives malloc's free memory back to the kernel once a burst of work is over. A burst (a converge,
/// a flap, an apply of a 1,000-binding file) leaves free memory inside malloc's arenas, which glibc
/// hands back only from the top of a heap; malloc_trim returns every free page (1.7 MiB of RSS
/// right after converging 1,000 bindings, README "Benchmarks") in 0.2–0.7 ms. It runs when the
/// controller's work queue has drained (so at least once per resync), on a queue of its own, never
/// on the cooperative pool the reconciles run on; requests while one is pending coalesce.
final class MemoryTrimmer: Sendable {
    private let pending = Atomic<Bool>(false)
    private let queue = DispatchQueue(label: "macvtapd.malloc-trim", qos: .utility)

    func trim() {
        guard !pending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        queue.async {
            // Cleared first: a burst that ends while this trim runs asks for one more.
            self.pending.store(false, ordering: .releasing)
            malloc_trim(0)
        }
    }
}

/// Delivers signals as an async stream instead of running handlers in signal context.
final class SignalEvents: Sendable {
    let stream: AsyncStream<Int32>
    /// Dispatch sources are not Sendable; the mutex makes cancel() safe from any task.
    private let sources: Mutex<[any DispatchSourceSignal]>
    private let numbers: [Int32]
    private let continuation: AsyncStream<Int32>.Continuation

    init(_ signals: [Int32]) {
        let (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        self.stream = stream
        self.continuation = continuation
        let made = signals.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(number) }
            source.resume()
            return source
        }
        sources = Mutex(made)
        numbers = signals
    }

    func cancel() {
        sources.withLock { sources in
            guard !sources.isEmpty else { return }
            for source in sources { source.cancel() }
            sources = []
            for number in numbers { signal(number, SIG_DFL) }
        }
        continuation.finish()
    }
}
