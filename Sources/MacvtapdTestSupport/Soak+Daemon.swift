import Foundation
import MacvtapdCore
import MacvtapdQMP
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The soak's desired-state files and the daemon under test.
extension Soak {
    func yaml(_ config: SoakConfig) -> String {
        config.yaml(qmp: { self.vm($0).qmpPath }, nics: nics)
    }

    func describe(_ config: SoakConfig) -> String {
        config.bindings.map {
            "\($0.key)→\($0.spec.lower)/\($0.spec.mode.rawValue)/\($0.spec.link.rawValue)/\($0.spec.mac.rawValue)"
        }
        .joined(separator: " ")
    }

    func writeConfig(_ config: SoakConfig, atomic: Bool) throws {
        try writeText(yaml(config), atomic: atomic)
        model.config = config
        model.diskInvalid = false
    }

    /// Atomically (a new file renamed over the old, as config management does) or in place (an
    /// editor's truncate and write: the daemon may read it half written, and must read it again).
    func writeText(_ text: String, atomic: Bool) throws {
        if atomic {
            try sandbox.directory.write(".macvtapd.yaml.new", text)
            guard rename(sandbox.directory.path + "/.macvtapd.yaml.new", sandbox.configPath) == 0 else {
                throw ChildError("rename over \(sandbox.configPath): \(String(cString: strerror(errno)))")
            }
        } else {
            try sandbox.writeConfig(text)
        }
    }

    // MARK: - Daemon

    /// Starts the daemon, its notify socket read as `notifyMode` (by default a random mode).
    func startDaemon(notifyMode: SoakNotifyMode? = nil) throws {
        let mode = notifyMode ?? random.pick(SoakNotifyMode.allCases)
        daemonNotifyMode = mode
        try notify.prepare(mode)
        let environment =
            mode == .none ? [:] : ["NOTIFY_SOCKET": notify.socket.path, "WATCHDOG_USEC": "1000000"]
        var info = stat()
        logOffsetAtStart = stat(sandbox.directory.path + "/daemon.log", &info) == 0 ? Int(info.st_size) : 0
        daemonReady = false
        daemonStartedAt = Date().timeIntervalSince1970
        daemon = try sandbox.startDaemon(environment: environment)
        model.daemonRunning = true
        report.notifyModes[mode, default: 0] += 1
        record(.daemonStart, "notify \(mode.rawValue)")
    }

    /// Stops the daemon with `signal`; a daemon that had already ended is a failure: it never
    /// exits on its own.
    func stopDaemon(signal: Int32) async throws {
        guard let daemon else { return }
        checkDaemonAlive()
        let status = await daemon.stop(signal: signal)
        // Before it listens for SIGTERM, the default action ends it: systemd counts that as clean too.
        if signal == SIGTERM && status != 0 && status != 128 + SIGTERM {
            fail("the daemon exited with status \(status) on SIGTERM")
        }
        self.daemon = nil
        model.daemonRunning = false
    }

    /// The running daemon's log lines so far.
    func daemonLog() -> String {
        guard let daemon, let file = fopen(daemon.logPath, "r") else { return "" }
        defer { fclose(file) }
        fseek(file, logOffsetAtStart, SEEK_SET)
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The daemon handles signals: it logs that it serves the control socket only after that.
    func daemonListens() -> Bool {
        if daemonReady { return true }
        guard let daemon, let file = fopen(daemon.logPath, "r") else { return false }
        defer { fclose(file) }
        fseek(file, logOffsetAtStart, SEEK_SET)
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            if let line, strstr(line, "serving the control socket") != nil {
                daemonReady = true
                return true
            }
        }
        return false
    }

    func checkDaemonAlive() {
        if let status = daemon?.endedStatus {
            fail("the daemon exited on its own with status \(status)")
            daemon = nil
            model.daemonRunning = false
        }
    }
}
