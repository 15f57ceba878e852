import ArgumentParser
import MacvtapdConfig
import MacvtapdControl
import MacvtapdCore

/// `--control-socket`: where plan, apply and status find the running daemon, and where `run` serves.
struct ControlOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The daemon's control socket. plan, apply and status ask the daemon there when one answers, "
                + "and work on their own when none does. Its directory is the run directory: one daemon per "
                + "directory (macvtapd.lock).",
            valueName: "path"))
    var controlSocket: String = ControlProtocol.defaultSocketPath
}

/// The CLI's calls to a running daemon. Every call returns nil when no daemon answers (the command
/// then works on its own, as without a daemon); any other failure is printed and exits 1: a daemon
/// that runs but cannot be asked must not be replaced by a local answer it would contradict.
struct DaemonLink {
    let socket: String

    func plan(_ files: [ConfigSource]) async throws -> PlanReply? {
        let parameters = PlanParameters(
            files: files.map { ConfigFile(path: $0.path, content: String(decoding: $0.bytes, as: UTF8.self)) })
        return try await call(.plan, parameters, returning: PlanReply.self, timeout: .seconds(60))
    }

    func apply(config: String, timeout: Duration) async throws -> ApplyReply? {
        let milliseconds = Int(
            timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let parameters = ApplyParameters(config: canonicalPath(config), timeoutMs: milliseconds)
        // The daemon stops waiting at the timeout; the reply itself gets a little more.
        return try await call(.apply, parameters, returning: ApplyReply.self, timeout: timeout + .seconds(15))
    }

    func status() async throws -> StatusReply? {
        try await call(.status, NoParameters(), returning: StatusReply.self, timeout: .seconds(30))
    }

    private func call<P: Codable & Sendable, R: Codable & Sendable>(
        _ method: ControlProtocol.Method, _ parameters: P, returning: R.Type, timeout: Duration
    ) async throws -> R? {
        do {
            return try await ControlClient.call(
                socket: socket, method, parameters, returning: R.self, timeout: timeout)
        } catch ControlClient.Failure.noDaemon {
            return nil
        } catch let error as ControlError {
            throw error
        } catch {
            printError("macvtapd: \(error)")
            throw ExitCode(1)
        }
    }

    /// "… from the running daemon (pid 42, config /etc/macvtapd)".
    static func describe(_ daemon: DaemonInfo) -> String {
        "the running macvtapd daemon (pid \(daemon.pid), config \(daemon.config))"
    }
}
