import CMacvtapd
import MacvtapdConfig
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A failure of a QEMU or probe fixture, with the object and the operation in the message.
public struct QEMUFixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A guest NIC on its own hub, the way macvtapd expects VMs to be configured:
/// `-device <model>,id=<id>,netdev=<id>.port,mac=<mac> -netdev hubport,id=<id>.port,hubid=<hubID>`.
public struct QEMUNIC: Sendable {
    public var id: String
    public var mac: String
    public var hubID: Int
    public var model: String

    public init(id: String, mac: String, hubID: Int, model: String = "virtio-net-pci") {
        self.id = id
        self.mac = mac
        self.hubID = hubID
        self.model = model
    }

    public var portID: String { "\(id).port" }

    public var arguments: [String] {
        ["-device", "\(model),id=\(id),netdev=\(portID),mac=\(mac)", "-netdev", "hubport,id=\(portID),hubid=\(hubID)"]
    }
}

public struct QEMUOptions: Sendable {
    public var nics: [QEMUNIC]
    /// UDP probes to put on hubs (see `Probe.qemuArguments`).
    public var probes: [(probe: Probe, hubID: Int)]
    /// `-S`: the VM stays in `prelaunch` and passes no frames until `cont`.
    public var paused: Bool
    public var memoryMiB: Int
    /// File names of further QMP monitors in the QEMU directory (a monitor serves one client at a
    /// time); their paths are `QEMUProcess.socketPath(name)`.
    public var additionalMonitors: [String]
    public var extraArguments: [String]
    /// Where macvtapd's monitor listens; nil puts it in the QEMU directory. A fixed path outlives
    /// one QEMU, as a VM manager's per-VM socket does: the next QEMU of the VM on this "host"
    /// listens where the config already points.
    public var qmpSocketPath: String?

    public init(
        nics: [QEMUNIC] = [QEMUNIC(id: "nic0", mac: "52:54:00:12:34:56", hubID: 10)],
        probes: [(probe: Probe, hubID: Int)] = [], paused: Bool = false, memoryMiB: Int = 64,
        additionalMonitors: [String] = [], extraArguments: [String] = [], qmpSocketPath: String? = nil
    ) {
        self.qmpSocketPath = qmpSocketPath
        self.nics = nics
        self.probes = probes
        self.paused = paused
        self.memoryMiB = memoryMiB
        self.additionalMonitors = additionalMonitors
        self.extraArguments = extraArguments
    }
}

/// A `qemu-system-x86_64` started for a test or benchmark, with its own temp directory holding
/// the QMP socket and QEMU's stdout/stderr. Always `await terminate()` it (in a `defer` task or at
/// the end of the test): that stops QEMU, reaps it and removes the directory.
public final class QEMUProcess: Sendable {
    public let pid: pid_t
    public let directory: String
    public let qmpSocketPath: String
    public let logPath: String
    public let arguments: [String]
    public let additionalMonitorPaths: [String]
    private let reaped = Mutex(false)

    public static let executable = "qemu-system-x86_64"

    private init(
        pid: pid_t, directory: String, qmpSocketPath: String, arguments: [String], additionalMonitors: [String]
    ) {
        self.additionalMonitorPaths = additionalMonitors.map { directory + "/" + $0 }
        self.pid = pid
        self.directory = directory
        self.qmpSocketPath = qmpSocketPath
        self.logPath = directory + "/qemu.log"
        self.arguments = arguments
    }

    /// Starts QEMU and returns once its QMP socket exists. Throws with QEMU's log if it exits first.
    public static func launch(_ options: QEMUOptions = QEMUOptions(), startupTimeout: Duration = .seconds(10))
        async throws -> QEMUProcess
    {
        var template = Array("/tmp/macvtapd-qemu-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw QEMUFixtureError("mkdtemp for QEMU failed: errno \(errno)") }
        let directory = String(cString: made)
        let qmpSocketPath = options.qmpSocketPath ?? directory + "/qmp.sock"
        var arguments = [
            executable, "-M", "q35", "-nodefaults", "-display", "none", "-m", "\(options.memoryMiB)",
            "-qmp", "unix:\(qmpSocketPath),server=on,wait=off",
        ]
        for name in options.additionalMonitors {
            arguments += ["-qmp", "unix:\(directory)/\(name),server=on,wait=off"]
        }
        if options.paused { arguments.append("-S") }
        for nic in options.nics { arguments += nic.arguments }
        for (index, entry) in options.probes.enumerated() {
            arguments += entry.probe.qemuArguments(hubID: entry.hubID, id: index == 0 ? "probe" : "probe\(index)")
        }
        arguments += options.extraArguments

        let pid: pid_t
        do {
            // posix_spawn waits for the child's exec: on a thread of its own.
            let arguments = arguments
            pid = try await offPool { try spawn(arguments, logPath: directory + "/qemu.log") }
        } catch {
            removeDirectory(directory)
            throw error
        }
        let process = QEMUProcess(
            pid: pid, directory: directory, qmpSocketPath: qmpSocketPath, arguments: arguments,
            additionalMonitors: options.additionalMonitors)
        let clock = ContinuousClock()
        let deadline = clock.now + startupTimeout
        while true {
            let listening = isListening(Set([process.qmpSocketPath] + process.additionalMonitorPaths))
            if listening { return process }
            if !process.isRunning {
                let log = process.log()
                await process.terminate()
                throw QEMUFixtureError("QEMU exited before creating \(process.qmpSocketPath): \(log)")
            }
            if clock.now >= deadline {
                let log = process.log()
                await process.terminate()
                throw QEMUFixtureError("QEMU did not create \(process.qmpSocketPath) within \(startupTimeout): \(log)")
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// QEMU's stdout and stderr so far.
    public func log() -> String {
        guard let file = fopen(logPath, "r") else { return "" }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// False once QEMU has exited (and was reaped here).
    public var isRunning: Bool {
        reaped.withLock { reaped in
            if reaped { return false }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { reaped = true }
            return !reaped
        }
    }

    /// `kill -9`: QEMU vanishes without a QMP goodbye, as on a crash or OOM kill. Waits for the
    /// reap: async code calls it through `offPool`.
    @available(*, noasync, message: "waits for QEMU's teardown: call it through offPool")
    public func kill() {
        let signalled = reaped.withLock { reaped in
            if !reaped { _ = Glibc.kill(pid, SIGKILL) }
            return !reaped
        }
        guard signalled else { return }
        // Polled outside the lock: a blocking waitpid under it would make every `isRunning` (the
        // pool's tasks poll it) wait for the kernel's teardown of QEMU too.
        while true {
            let gone = reaped.withLock { reaped in
                guard !reaped else { return true }
                var status: Int32 = 0
                let result = waitpid(pid, &status, WNOHANG)
                if result == pid || (result < 0 && errno == ECHILD) { reaped = true }
                return reaped
            }
            if gone { return }
            usleep(1000)
        }
    }

    /// Waits up to `timeout` for QEMU to exit by itself (after `quit` or a guest shutdown).
    public func waitForExit(timeout: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while isRunning {
            if clock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return true
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps QEMU and removes its directory. Idempotent.
    public func terminate(grace: Duration = .seconds(3)) async {
        if isRunning {
            _ = Glibc.kill(pid, SIGTERM)
            // The reap after SIGKILL waits for the kernel to tear QEMU down (its memory, its taps).
            if await !waitForExit(timeout: grace) { await offPool { self.kill() } }
        }
        Self.removeDirectory(directory)
    }

    /// QEMU binds the socket before it listens; a connect in between is refused. The kernel's
    /// unix socket table shows the listening state (`__SO_ACCEPTCON`, flags 00010000) per path.
    static func isListening(_ paths: Set<String>) -> Bool {
        var waiting = paths
        guard let file = fopen("/proc/net/unix", "r") else { return false }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            let fields = String(cString: line!).split(whereSeparator: { $0 == " " || $0 == "\n" })
            if fields.count >= 8, fields[3] == "00010000" { waiting.remove(String(fields[7])) }
        }
        return waiting.isEmpty
    }

    private static func spawn(_ arguments: [String], logPath: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Tests run in parallel: without this, QEMU would inherit (and keep open) any descriptor
        // another test opened without O_CLOEXEC, hiding that test's closes from its peer.
        cmacvtapd_spawn_closefrom(&actions, 3)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let attributes = CleanSignalSpawnAttributes()
        let result = posix_spawnp(&pid, arguments[0], &actions, attributes.pointer, argv, environ)
        guard result == 0 else {
            throw QEMUFixtureError("posix_spawnp \(arguments[0]) failed: \(String(cString: strerror(result)))")
        }
        return pid
    }

    private static func removeDirectory(_ path: String) {
        if let directory = opendir(path) {
            while let entry = readdir(directory) {
                let name = direntName(entry)
                if name != "." && name != ".." { unlink(path + "/" + name) }
            }
            closedir(directory)
        }
        rmdir(path)
    }
}
